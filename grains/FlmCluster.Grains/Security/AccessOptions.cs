using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace FlmCluster.Grains.Security;

/// <summary>
/// Who may call what on this silo. Secure: the cluster key (a secret every silo holds) marks calls silos make;
/// clients show a token from the token files or a certificate of the client authority. Open (development): the key
/// is derived from the service id, which every client knows, and every client is an operator; clients still
/// cannot call internal methods by mistake, but nothing stops one that forges the key.
/// </summary>
public sealed class AccessOptions
{
    public bool Secure { get; private init; }

    /// <summary>The value silos put in every call they make (<see cref="Abstractions.CallCredentials.ClusterKey"/>).</summary>
    public required string ClusterKey { get; init; }

    public IReadOnlyList<byte[]> OperatorTokenHashes { get; private init; } = [];
    public IReadOnlyList<byte[]> ViewerTokenHashes { get; private init; } = [];
    public X509Certificate2? ClientAuthority { get; private init; }

    /// <summary>The service whose clients' certificate proofs this silo accepts.</summary>
    public string ServiceId { get; private init; } = "";

    /// <summary>Shortest token accepted in a token file: shorter ones are guessable.</summary>
    public const int MinTokenLength = 16;

    public static AccessOptions Open(string serviceId) =>
        new() { ClusterKey = Convert.ToBase64String(SHA256.HashData(Encoding.UTF8.GetBytes($"flm-open-cluster/{serviceId}"))), ServiceId = serviceId };

    /// <summary>Secure access from files; <see cref="ArgumentException"/> names the setting and the problem.</summary>
    public static AccessOptions FromFiles(string serviceId, string clusterKeyFile, string operatorTokens, string viewerTokens, X509Certificate2 clientAuthority) => new()
    {
        Secure = true,
        ServiceId = serviceId,
        ClusterKey = ReadClusterKey(clusterKeyFile),
        OperatorTokenHashes = ReadTokens(operatorTokens, "Flm:OperatorTokens"),
        ViewerTokenHashes = ReadTokens(viewerTokens, "Flm:ViewerTokens"),
        ClientAuthority = clientAuthority,
    };

    private static string ReadClusterKey(string file)
    {
        var key = Read(file, "Flm:ClusterKeyFile").Trim();
        if (key.Length < 32)
            throw new ArgumentException($"Flm:ClusterKeyFile {file} holds {key.Length} characters; the cluster key must be at least 32 random characters ('flm cluster credentials' makes one)");
        return key;
    }

    /// <summary>SHA-256 of every token in a file (one per line; '#' starts a comment); none for no file.</summary>
    private static List<byte[]> ReadTokens(string file, string setting)
    {
        if (file.Length == 0)
            return [];
        var tokens = Read(file, setting).Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        if (tokens.FirstOrDefault(t => t.Length < MinTokenLength) is { } shortToken)
            throw new ArgumentException($"{setting}: {file} holds a token of {shortToken.Length} characters; tokens must be at least {MinTokenLength} random characters");
        return tokens.Select(Hash).ToList();
    }

    public static byte[] Hash(string token) => SHA256.HashData(Encoding.UTF8.GetBytes(token));

    private static string Read(string file, string setting)
    {
        try
        {
            return File.ReadAllText(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{setting}: {file} cannot be read: {ex.Message}");
        }
    }
}
