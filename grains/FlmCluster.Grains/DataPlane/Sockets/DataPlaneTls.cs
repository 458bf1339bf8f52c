using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// TLS for data connections (mutual: both ends present a certificate). A peer is trusted when its certificate
/// chains to the configured authority, or, without one, when it is this silo's own certificate (one certificate
/// shared by the cluster).
/// </summary>
internal sealed class DataPlaneTls
{
    private const string TargetHost = "flm-data-plane";
    private readonly X509Certificate2 _certificate;
    private readonly X509Certificate2? _authority;

    private DataPlaneTls(X509Certificate2 certificate, X509Certificate2? authority)
    {
        _certificate = certificate;
        _authority = authority;
    }

    /// <summary>Loads the certificate files; throws <see cref="ArgumentException"/> naming the file and the problem.</summary>
    public static DataPlaneTls? Load(SocketDataPlaneOptions options)
    {
        if (!options.UsesTls)
            return null;
        if (options.TlsKey.Length == 0)
            throw new ArgumentException("the data plane's TLS certificate needs its private key (Flm:DataTlsKey)");
        X509Certificate2 certificate;
        try
        {
            certificate = X509Certificate2.CreateFromPemFile(options.TlsCertificate, options.TlsKey);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException or ArgumentException)
        {
            throw new ArgumentException($"the data plane's TLS certificate {options.TlsCertificate} with key {options.TlsKey} cannot be loaded: {ex.Message}");
        }
        X509Certificate2? authority = null;
        if (options.TlsCa.Length > 0)
        {
            try
            {
                authority = X509CertificateLoader.LoadCertificateFromFile(options.TlsCa);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException)
            {
                throw new ArgumentException($"the data plane's certificate authority {options.TlsCa} cannot be loaded: {ex.Message}");
            }
        }
        return new DataPlaneTls(certificate, authority);
    }

    public SslStream Client(Stream inner, TimeSpan timeout)
    {
        var ssl = new SslStream(inner, leaveInnerStreamOpen: false);
        ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = TargetHost,
            ClientCertificates = [_certificate],
            RemoteCertificateValidationCallback = (_, peer, _, _) => Trusted(peer),
            EnabledSslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12,
        }).WaitAsync(timeout).GetAwaiter().GetResult();
        return ssl;
    }

    public async Task<SslStream> ServerAsync(Stream inner, CancellationToken cancel)
    {
        var ssl = new SslStream(inner, leaveInnerStreamOpen: false);
        await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
        {
            ServerCertificate = _certificate,
            ClientCertificateRequired = true,
            RemoteCertificateValidationCallback = (_, peer, _, _) => Trusted(peer),
            EnabledSslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12,
        }, cancel);
        return ssl;
    }

    private bool Trusted(X509Certificate? presented)
    {
        if (presented is null)
            return false;
        using var peer = X509CertificateLoader.LoadCertificate(presented.GetRawCertData());
        if (_authority is null)
            return peer.RawDataMemory.Span.SequenceEqual(_certificate.RawDataMemory.Span);
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(_authority);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(peer);
    }
}
