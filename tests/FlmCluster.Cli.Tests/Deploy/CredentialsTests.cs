using System.Security.Cryptography.X509Certificates;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Silo;
using FlmCluster.Tests.Process;

namespace FlmCluster.Cli.Tests.Deploy;

/// <summary>
/// `flm cluster credentials`: an authority, a silo certificate silos accept from each other, client certificates
/// they do not, tokens and a cluster key; secrets readable by their owner only.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class CredentialsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-credentials-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void The_command_makes_a_clusters_credentials_with_roles_names_and_owner_only_secrets()
    {
        var r = FlmProcess.Run(_dir, "cluster", "credentials", "--dir", "creds", "--host", "gpu-a.example", "--host", "10.0.0.5", "--days", "30");
        Assert.True(r.ExitCode == 0, r.Output + r.Error);
        var files = new FlmCluster.Client.CredentialFiles(Path.Combine(_dir, "creds"));
        Assert.Contains($"silo switches: --tls-cert {files.SiloCertificate}", r.Output);

        foreach (var secret in new[] { files.AuthorityKey, files.SiloKey, files.OperatorKey, files.ViewerKey, files.OperatorToken, files.ViewerToken, files.ClusterKey })
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(secret));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead, File.GetUnixFileMode(files.Authority));

        using var authority = ClusterCertificates.LoadAuthority(files.Authority, "test");
        using var silo = ClusterCertificates.LoadWithKey(files.SiloCertificate, files.SiloKey, "test");
        using var op = ClusterCertificates.LoadWithKey(files.OperatorCertificate, files.OperatorKey, "test");
        using var viewer = ClusterCertificates.LoadWithKey(files.ViewerCertificate, files.ViewerKey, "test");
        Assert.Equal(("silo", "operator", "viewer"), (ClusterCertificates.UnitOf(silo), ClusterCertificates.UnitOf(op), ClusterCertificates.UnitOf(viewer)));
        Assert.True(ClusterTls.IsSilo(silo, authority));
        Assert.False(ClusterTls.IsSilo(op, authority)); // a client certificate does not join as a silo
        Assert.InRange((silo.NotAfter.ToUniversalTime() - DateTime.UtcNow).TotalDays, 29.9, 30.1);
        var names = silo.Extensions.OfType<X509SubjectAlternativeNameExtension>().Single();
        Assert.Equal(["gpu-a.example", "localhost"], names.EnumerateDnsNames().Order());
        Assert.Equal(["10.0.0.5", "127.0.0.1"], names.EnumerateIPAddresses().Select(a => a.ToString()).Order());

        // A certificate of another authority is no silo of this one; tokens and the key are distinct random secrets.
        var other = FlmCluster.Client.CredentialFiles.Create(Path.Combine(_dir, "other"), [], TimeSpan.FromDays(1));
        using var foreign = ClusterCertificates.LoadWithKey(other.SiloCertificate, other.SiloKey, "test");
        Assert.False(ClusterTls.IsSilo(foreign, authority));
        var secrets = new[] { files.OperatorToken, files.ViewerToken, files.ClusterKey, other.OperatorToken }.Select(f => File.ReadAllText(f).Trim()).ToList();
        Assert.Equal(4, secrets.Distinct().Count());
        Assert.All(secrets, t => Assert.Equal(43, t.Length)); // 32 random bytes, base64url

        // The statement a client signs verifies with its certificate, and not with another's.
        var statement = CallCredentials.ProofStatement("flmcluster", "nonce");
        var signature = ClusterCertificates.Sign(op, statement);
        Assert.True(ClusterCertificates.Verify(op, statement, signature));
        Assert.False(ClusterCertificates.Verify(viewer, statement, signature));
    }

    [Fact]
    public void A_silo_certificate_loads_from_a_certificate_store_by_thumbprint_with_its_key()
    {
        var files = FlmCluster.Client.CredentialFiles.Create(Path.Combine(_dir, "store"), [], TimeSpan.FromDays(1));
        using var fromFiles = ClusterCertificates.LoadWithKey(files.SiloCertificate, files.SiloKey, "test");
        using var imported = X509CertificateLoader.LoadPkcs12(fromFiles.Export(X509ContentType.Pkcs12), null, X509KeyStorageFlags.Exportable | X509KeyStorageFlags.PersistKeySet);
        using var store = new X509Store(StoreName.My, StoreLocation.CurrentUser);
        store.Open(OpenFlags.ReadWrite);
        store.Add(imported);
        try
        {
            using var loaded = ClusterCertificates.LoadWithKey($"store:CurrentUser/My/{imported.Thumbprint}", "", "Flm:TlsCertificate");
            Assert.Equal(fromFiles.Thumbprint, loaded.Thumbprint);
            // The store's copy holds the key: what it signs verifies with the certificate from the files.
            var statement = CallCredentials.ProofStatement("flmcluster", "store");
            Assert.True(ClusterCertificates.Verify(fromFiles, statement, ClusterCertificates.Sign(loaded, statement)));
            using var authority = ClusterCertificates.LoadAuthority(files.Authority, "test");
            Assert.True(ClusterTls.IsSilo(loaded, authority));

            var absent = Assert.Throws<ArgumentException>(() => ClusterCertificates.LoadWithKey($"store:CurrentUser/My/{new string('0', 40)}", "", "Flm:TlsCertificate"));
            Assert.Equal($"Flm:TlsCertificate: the store CurrentUser/My holds no certificate with thumbprint {new string('0', 40)}", absent.Message);
        }
        finally
        {
            store.Remove(imported);
        }
    }
}
