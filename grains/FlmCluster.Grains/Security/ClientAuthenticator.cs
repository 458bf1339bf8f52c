using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Grains.Security;

/// <summary>
/// The role of a client call's credentials (entries of its request context): a token found in the operator or
/// viewer token file, or a certificate issued by the client authority whose OU is operator or viewer, with the
/// client's signature over a statement naming this service to show it holds the key.
/// </summary>
public sealed class ClientAuthenticator(AccessOptions access)
{
    private const int MaxCachedProofs = 4096;
    private readonly ConcurrentDictionary<string, ClientRole?> _proofs = new();

    /// <summary>The role, or the refusal when the credentials are missing or not the cluster's.</summary>
    public (ClientRole? Role, AccessRefusal? Refusal) Authenticate(string? token, string? certificate, string? proof, string? signature)
    {
        if (token is not null)
            return RoleOfToken(token) is { } role ? (role, null) : (null, AccessRefusal.BadCredentials);
        if (certificate is null || proof is null || signature is null)
            return (null, AccessRefusal.NoCredentials);
        // Checking a chain and a signature costs a fraction of a millisecond: a client's proof is checked once.
        var key = $"{certificate}|{proof}|{signature}";
        if (!_proofs.TryGetValue(key, out var cached))
        {
            if (_proofs.Count >= MaxCachedProofs)
                _proofs.Clear();
            cached = _proofs[key] = RoleOfCertificate(certificate, proof, signature);
        }
        return cached is { } r ? (r, null) : (null, AccessRefusal.BadCredentials);
    }

    private ClientRole? RoleOfToken(string token)
    {
        var hash = AccessOptions.Hash(token);
        // Every hash is compared, in constant time each, so the time says nothing about which one matched.
        var op = access.OperatorTokenHashes.Aggregate(false, (found, h) => CryptographicOperations.FixedTimeEquals(h, hash) | found);
        var viewer = access.ViewerTokenHashes.Aggregate(false, (found, h) => CryptographicOperations.FixedTimeEquals(h, hash) | found);
        return op ? ClientRole.Operator : viewer ? ClientRole.Viewer : null;
    }

    private ClientRole? RoleOfCertificate(string certificate, string proof, string signature)
    {
        if (access.ClientAuthority is null || !proof.StartsWith(CallCredentials.ProofStatement(access.ServiceId, ""), StringComparison.Ordinal))
            return null;
        try
        {
            using var presented = X509CertificateLoader.LoadCertificate(Convert.FromBase64String(certificate));
            if (!ClusterCertificates.ChainsTo(presented, access.ClientAuthority))
                return null;
            var role = ClusterCertificates.UnitOf(presented) switch
            {
                "operator" => ClientRole.Operator,
                "viewer" => ClientRole.Viewer,
                _ => (ClientRole?)null,
            };
            return role is not null && ClusterCertificates.Verify(presented, proof, Convert.FromBase64String(signature)) ? role : null;
        }
        catch (Exception ex) when (ex is FormatException or CryptographicException)
        {
            return null;
        }
    }
}
