using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Client;

/// <summary>
/// The files of a secure cluster, in one folder: its certificate authority, a silo certificate (OU=silo) every
/// silo may share, operator and viewer client certificates, operator and viewer tokens, and the cluster key.
/// Private keys, tokens and the key are readable by their owner only. 'flm cluster up --secure', 'flm cluster
/// credentials', the compose file, the Kubernetes Secret and the Slurm script all use this layout.
/// </summary>
public sealed record CredentialFiles(string Folder)
{
    public string Authority => Path.Combine(Folder, "ca.pem");
    public string AuthorityKey => Path.Combine(Folder, "ca.key");
    public string SiloCertificate => Path.Combine(Folder, "silo.pem");
    public string SiloKey => Path.Combine(Folder, "silo.key");
    public string OperatorCertificate => Path.Combine(Folder, "operator.pem");
    public string OperatorKey => Path.Combine(Folder, "operator.key");
    public string ViewerCertificate => Path.Combine(Folder, "viewer.pem");
    public string ViewerKey => Path.Combine(Folder, "viewer.key");
    public string OperatorToken => Path.Combine(Folder, "operator.token");
    public string ViewerToken => Path.Combine(Folder, "viewer.token");
    public string ClusterKey => Path.Combine(Folder, "cluster.key");

    /// <summary>The silo switches that make a silo secure with these files.</summary>
    public IReadOnlyList<string> SiloArguments =>
    [
        "--tls-cert", SiloCertificate, "--tls-key", SiloKey, "--tls-ca", Authority, "--cluster-key", ClusterKey,
        "--operator-tokens", OperatorToken, "--viewer-tokens", ViewerToken,
    ];

    private static readonly UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>
    /// Creates every file in <paramref name="folder"/> (which must not hold an authority yet). The silo certificate
    /// names localhost, 127.0.0.1 and <paramref name="hosts"/> (names or addresses) and is valid for <paramref name="validity"/>.
    /// </summary>
    public static CredentialFiles Create(string folder, IReadOnlyList<string> hosts, TimeSpan validity)
    {
        var files = new CredentialFiles(Path.GetFullPath(folder));
        Directory.CreateDirectory(files.Folder);
        if (File.Exists(files.Authority))
            throw new IOException($"{files.Authority} exists: this folder holds a cluster's credentials already");
        var now = DateTimeOffset.UtcNow.AddMinutes(-5);
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=FlmCluster authority, O=FlmCluster", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        caRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(caRequest.PublicKey, false));
        using var authority = caRequest.CreateSelfSigned(now, now.AddYears(10));
        Write(files.Authority, authority.ExportCertificatePem(), secret: false);
        Write(files.AuthorityKey, caKey.ExportPkcs8PrivateKeyPem(), secret: true);

        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName("localhost");
        names.AddIpAddress(IPAddress.Loopback);
        foreach (var host in hosts)
        {
            if (IPAddress.TryParse(host, out var address))
                names.AddIpAddress(address);
            else
                names.AddDnsName(host);
        }
        Issue(authority, files.SiloCertificate, files.SiloKey, "flm-silo", ClusterCertificates.SiloUnit, now, validity, names.Build(),
            ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
        Issue(authority, files.OperatorCertificate, files.OperatorKey, "flm-operator", "operator", now, validity, null, ["1.3.6.1.5.5.7.3.2"]);
        Issue(authority, files.ViewerCertificate, files.ViewerKey, "flm-viewer", "viewer", now, validity, null, ["1.3.6.1.5.5.7.3.2"]);
        Write(files.OperatorToken, Secret() + "\n", secret: true);
        Write(files.ViewerToken, Secret() + "\n", secret: true);
        Write(files.ClusterKey, Secret() + "\n", secret: true);
        return files;
    }

    /// <summary>A certificate of the authority for <paramref name="unit"/> (its role), with its private key in a file of its own.</summary>
    private static void Issue(X509Certificate2 authority, string certificateFile, string keyFile, string name, string unit, DateTimeOffset now, TimeSpan validity,
        X509Extension? alternativeNames, string[] usages)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}, OU={unit}, O=FlmCluster", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        var oids = new OidCollection();
        foreach (var usage in usages)
            oids.Add(new Oid(usage));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(oids, false));
        if (alternativeNames is not null)
            request.CertificateExtensions.Add(alternativeNames);
        using var certificate = request.Create(authority, now, now + validity, RandomNumberGenerator.GetBytes(16));
        Write(certificateFile, certificate.ExportCertificatePem() + "\n", secret: false);
        Write(keyFile, key.ExportPkcs8PrivateKeyPem() + "\n", secret: true);
    }

    /// <summary>32 random bytes, base64url: tokens and the cluster key.</summary>
    private static string Secret() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    private static void Write(string path, string text, bool secret)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
            options.UnixCreateMode = secret ? OwnerOnly : OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        using (var file = new FileStream(path, options))
        {
            file.Write(Encoding.ASCII.GetBytes(text));
            file.Flush(flushToDisk: true);
        }
    }
}
