using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace FlmCluster.Grains.Abstractions;

/// <summary>
/// Certificates from files (PEM certificate and key, or a PKCS#12 file holding both) or a certificate store, and the cluster's own
/// authority: a certificate is trusted when it chains to that authority, and its organizational unit names what it
/// is (silo, operator, viewer). Clients sign a statement with their certificate's key to show they hold it.
/// Problems loading files are <see cref="ArgumentException"/>s naming the file.
/// </summary>
public static class ClusterCertificates
{
    public const string SiloUnit = "silo";

    /// <summary>How a setting names a certificate in a certificate store rather than a file: store:LOCATION/STORE/THUMBPRINT.</summary>
    public const string StorePrefix = "store:";

    public static bool IsStoreReference(string certificate) => certificate.StartsWith(StorePrefix, StringComparison.Ordinal);

    /// <summary>
    /// A certificate with its private key: PEM <paramref name="certificate"/> and <paramref name="key"/>, a .pfx/.p12
    /// file (no key file), or one in a certificate store by thumbprint (store:CurrentUser/My/THUMBPRINT, no key file).
    /// </summary>
    public static X509Certificate2 LoadWithKey(string certificate, string key, string setting)
    {
        if (IsStoreReference(certificate))
            return key.Length == 0 ? FromStore(certificate, setting) : throw new ArgumentException($"{setting}: {certificate} is in a certificate store with its key; give no key file");
        try
        {
            var loaded = key.Length == 0 && IsPkcs12(certificate)
                ? X509CertificateLoader.LoadPkcs12FromFile(certificate, password: null)
                : X509Certificate2.CreateFromPemFile(certificate, key.Length == 0 ? null : key);
            if (!loaded.HasPrivateKey)
                throw new ArgumentException($"{setting}: {certificate} has no private key; give the key file too, or a .pfx holding both");
            return loaded;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or CryptographicException)
        {
            throw new ArgumentException($"{setting}: the certificate {certificate}{(key.Length > 0 ? $" with key {key}" : "")} cannot be loaded: {ex.Message}");
        }
    }

    /// <summary>
    /// The parts of store:LOCATION/STORE/THUMBPRINT (LOCATION CurrentUser or LocalMachine; STORE a store name such as
    /// My), or an <see cref="ArgumentException"/> saying what is wrong with it.
    /// </summary>
    public static (StoreLocation Location, string Store, string Thumbprint) ParseStoreReference(string reference, string setting)
    {
        var parts = reference[StorePrefix.Length..].Split('/');
        if (parts.Length != 3 || !Enum.TryParse<StoreLocation>(parts[0], ignoreCase: true, out var location) || !Enum.IsDefined(location)
            || parts[0].All(char.IsDigit) || parts[1].Length == 0 || parts[2].Length != 40 || !parts[2].All(char.IsAsciiHexDigit))
            throw new ArgumentException($"{setting}: '{reference}' is not store:LOCATION/STORE/THUMBPRINT, e.g. store:CurrentUser/My/ followed by the certificate's 40-hex-digit SHA-1 thumbprint");
        return (location, parts[1], parts[2]);
    }

    private static X509Certificate2 FromStore(string reference, string setting)
    {
        var (location, name, thumbprint) = ParseStoreReference(reference, setting);
        try
        {
            using var store = new X509Store(name, location);
            store.Open(OpenFlags.ReadOnly | OpenFlags.OpenExistingOnly);
            var all = store.Certificates;
            var found = all.Find(X509FindType.FindByThumbprint, thumbprint, validOnly: false);
            X509Certificate2? chosen = found.Count > 0 ? found[0] : null;
            foreach (var other in all.Where(c => !ReferenceEquals(c, chosen)))
                other.Dispose();
            if (chosen is null)
                throw new ArgumentException($"{setting}: the store {location}/{name} holds no certificate with thumbprint {thumbprint}");
            if (!chosen.HasPrivateKey)
            {
                chosen.Dispose();
                throw new ArgumentException($"{setting}: the certificate {thumbprint} in {location}/{name} has no private key there; import it with its key");
            }
            return chosen;
        }
        catch (CryptographicException ex)
        {
            throw new ArgumentException($"{setting}: the certificate store {location}/{name} cannot be opened: {ex.Message}");
        }
    }

    public static bool IsPkcs12(string path) =>
        path.EndsWith(".pfx", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".p12", StringComparison.OrdinalIgnoreCase);

    /// <summary>An authority's certificate (PEM or DER).</summary>
    public static X509Certificate2 LoadAuthority(string path, string setting)
    {
        try
        {
            return X509CertificateLoader.LoadCertificateFromFile(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or CryptographicException)
        {
            throw new ArgumentException($"{setting}: the certificate authority {path} cannot be loaded: {ex.Message}");
        }
    }

    /// <summary>Whether <paramref name="certificate"/> was issued by <paramref name="authority"/> and is valid now (no revocation lists: the authority is the cluster's own).</summary>
    public static bool ChainsTo(X509Certificate2 certificate, X509Certificate2 authority)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(authority);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(certificate);
    }

    /// <summary>The certificate's organizational unit (OU), lower case; "" when it has none.</summary>
    public static string UnitOf(X509Certificate2 certificate)
    {
        foreach (var name in certificate.SubjectName.EnumerateRelativeDistinguishedNames())
            if (name.GetSingleElementType().Value == "2.5.4.11")
                return (name.GetSingleElementValue() ?? "").ToLowerInvariant();
        return "";
    }

    /// <summary>The signature of <paramref name="statement"/> with <paramref name="certificate"/>'s private key (ECDSA or RSA, SHA-256).</summary>
    public static byte[] Sign(X509Certificate2 certificate, string statement)
    {
        var data = Encoding.UTF8.GetBytes(statement);
        using var ecdsa = certificate.GetECDsaPrivateKey();
        if (ecdsa is not null)
            return ecdsa.SignData(data, HashAlgorithmName.SHA256);
        using var rsa = certificate.GetRSAPrivateKey()
            ?? throw new ArgumentException($"the client certificate {certificate.Subject} has no ECDSA or RSA private key");
        return rsa.SignData(data, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
    }

    /// <summary>Whether <paramref name="signature"/> is <paramref name="certificate"/>'s over <paramref name="statement"/>.</summary>
    public static bool Verify(X509Certificate2 certificate, string statement, byte[] signature)
    {
        var data = Encoding.UTF8.GetBytes(statement);
        using var ecdsa = certificate.GetECDsaPublicKey();
        if (ecdsa is not null)
            return ecdsa.VerifyData(data, signature, HashAlgorithmName.SHA256);
        using var rsa = certificate.GetRSAPublicKey();
        return rsa is not null && rsa.VerifyData(data, signature, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
    }
}
