using System.Net.Http.Headers;
using System.Security.Cryptography.X509Certificates;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Client;

/// <summary>
/// A silo's web port as a client of the cluster reaches it: HTTPS checked against the cluster's authority and the
/// profile's token as a bearer token when the cluster is secure, plain HTTP when it is open.
/// </summary>
public sealed class SiloWeb : IDisposable
{
    private readonly X509Certificate2? _authority;

    public HttpClient Http { get; }
    public bool Secure => _authority is not null;

    /// <param name="withToken">Send the profile's token (false: as a probe without credentials).</param>
    public SiloWeb(ClusterProfile profile, TimeSpan timeout, bool withToken = true)
    {
        var handler = new HttpClientHandler();
        if (profile.TlsCa.Length > 0)
        {
            var authority = _authority = ClusterCertificates.LoadAuthority(profile.TlsCa, "the profile's tls_ca");
            // The silos' certificates come from the cluster's own authority, not from the machine's trusted roots.
            handler.ServerCertificateCustomValidationCallback = (_, certificate, _, _) => certificate is not null && ClusterCertificates.ChainsTo(certificate, authority);
        }
        Http = new HttpClient(handler) { Timeout = timeout };
        if (withToken && profile.TokenFile.Length > 0)
            Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", File.ReadAllText(profile.TokenFile).Trim());
    }

    /// <summary>The base address of the web port <paramref name="port"/> on this machine.</summary>
    public string At(int port) => $"{(Secure ? "https" : "http")}://127.0.0.1:{port}";

    public void Dispose()
    {
        Http.Dispose();
        _authority?.Dispose();
    }
}
