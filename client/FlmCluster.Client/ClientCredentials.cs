using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Client;

/// <summary>
/// What a client puts in every call's request context to show its role: a token from a file, or its certificate
/// with a signature over a statement naming the service (made once per connection, with a fresh nonce).
/// </summary>
public sealed class ClientCredentials
{
    private readonly IReadOnlyList<(string Key, string Value)> _entries;

    private ClientCredentials(IReadOnlyList<(string, string)> entries) => _entries = entries;

    public bool Any => _entries.Count > 0;

    /// <summary>The credentials the profile names; unreadable files are an <see cref="InvalidClusterProfileException"/>.</summary>
    public static ClientCredentials From(ClusterProfile profile)
    {
        if (profile.TokenFile.Length > 0)
        {
            var token = Read(profile.TokenFile, "token file").Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0 && !l.StartsWith('#'))
                ?? throw new InvalidClusterProfileException($"the token file {profile.TokenFile} holds no token; give the file 'flm cluster credentials' wrote");
            return new ClientCredentials([(CallCredentials.Token, token)]);
        }
        if (profile.ClientCertificate.Length == 0)
            return new ClientCredentials([]);
        X509Certificate2 certificate;
        try
        {
            certificate = ClusterCertificates.LoadWithKey(profile.ClientCertificate, profile.ClientKey, "client certificate");
        }
        catch (ArgumentException ex)
        {
            throw new InvalidClusterProfileException($"{ex.Message} (FLM_CLIENT_CERT, FLM_CLIENT_KEY or the profile's client_certificate)");
        }
        using (certificate)
        {
            var statement = CallCredentials.ProofStatement(profile.ServiceId, Convert.ToBase64String(RandomNumberGenerator.GetBytes(16)));
            return new ClientCredentials(
            [
                (CallCredentials.Certificate, Convert.ToBase64String(certificate.RawData)),
                (CallCredentials.Proof, statement),
                (CallCredentials.Signature, Convert.ToBase64String(ClusterCertificates.Sign(certificate, statement))),
            ]);
        }
    }

    /// <summary>Puts the credentials in the request context of the call about to be made.</summary>
    public void Stamp()
    {
        foreach (var (key, value) in _entries)
            RequestContext.Set(key, value);
    }

    private static string Read(string file, string what)
    {
        try
        {
            return File.ReadAllText(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new InvalidClusterProfileException($"the {what} {file} cannot be read ({ex.Message}); fix FLM_TOKEN_FILE or the profile's token_file");
        }
    }
}
