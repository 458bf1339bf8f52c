using System.Security.Cryptography.X509Certificates;
using FlmCluster.Grains.Abstractions;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using Orleans.Connections.Security;

namespace FlmCluster.Silo;

/// <summary>
/// TLS on a secure silo's Orleans connections: mutual between silos (each presents a certificate of the cluster's
/// authority with OU=silo, so a client certificate cannot join as a silo), server-authenticated for clients at the
/// gateway (clients prove who they are per call: the access filter).
/// </summary>
public static class ClusterTls
{
    public static ISiloBuilder UseClusterTls(this ISiloBuilder silo, X509Certificate2 certificate, X509Certificate2 authority)
    {
        var betweenSilos = new TlsOptions
        {
            LocalCertificate = certificate,
            RemoteCertificateMode = RemoteCertificateMode.RequireCertificate,
            ClientCertificateMode = RemoteCertificateMode.RequireCertificate,
            RemoteCertificateValidation = (presented, _, _) => IsSilo(presented, authority),
        };
        var forClients = new TlsOptions { LocalCertificate = certificate, RemoteCertificateMode = RemoteCertificateMode.NoCertificate };
        return silo.Configure<SiloConnectionOptions>(o =>
        {
            o.ConfigureSiloInboundConnection(b => b.UseServerTls(betweenSilos));
            o.ConfigureSiloOutboundConnection(b => b.UseClientTls(betweenSilos));
            o.ConfigureGatewayInboundConnection(b => b.UseServerTls(forClients));
        });
    }

    /// <summary>A silo's certificate: issued by the cluster's authority, OU=silo (host names are not checked: the authority is the cluster's own).</summary>
    public static bool IsSilo(X509Certificate2 presented, X509Certificate2 authority) =>
        ClusterCertificates.ChainsTo(presented, authority) && ClusterCertificates.UnitOf(presented) == ClusterCertificates.SiloUnit;
}

/// <summary>Says at start which mode the silo runs in and where it listens.</summary>
internal sealed class SecurityModeLog(SiloSettings s, ILogger log) : ILifecycleParticipant<ISiloLifecycle>
{
    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(SecurityModeLog), ServiceLifecycleStage.Active, _ =>
        {
            var where = s.LoopbackOnly ? "loopback only (127.0.0.1)" : "all interfaces";
            if (s.Secure)
                log.LogInformation("Secure mode: mutual TLS between silos, TLS and client authentication at the gateway; listening on {Where}", where);
            else if (s.LoopbackOnly)
                log.LogInformation("Open mode (development): no TLS, no client authentication; listening on {Where}. For a cluster on a network give Flm:TlsCertificate, Flm:TlsKey, Flm:TlsCa and Flm:ClusterKeyFile (docs/operations.md)", where);
            else
                log.LogWarning("Open mode on {Where}: no TLS and no client authentication, anyone who reaches this silo can submit and cancel jobs. Use secure mode (Flm:TlsCertificate) on shared networks", where);
            return Task.CompletedTask;
        });
}
