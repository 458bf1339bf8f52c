namespace FlmCluster.Grains.Abstractions;

/// <summary>What a client may do: a viewer reads (jobs, status, nodes, history); an operator also submits, cancels, pauses, resumes and administers.</summary>
public enum ClientRole
{
    Viewer = 0,
    Operator = 1,
}

/// <summary>
/// Marks a grain interface method clients may call, with the least role that may. Methods of FlmCluster's grain
/// interfaces without it are internal to the cluster: only silos call them (worker commands, replica transfer,
/// data-plane delivery, the scheduler's calls from coordinators).
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class ClientAccessAttribute(ClientRole role) : Attribute
{
    public ClientRole Role { get; } = role;
}

/// <summary>Why the cluster refused a call.</summary>
public enum AccessRefusal
{
    /// <summary>The method is internal to the cluster.</summary>
    Internal = 0,
    /// <summary>The client sent neither a token nor a certificate proof.</summary>
    NoCredentials = 1,
    /// <summary>The token is not one of the cluster's, or the certificate was not issued by its authority.</summary>
    BadCredentials = 2,
    /// <summary>A viewer called an operator method.</summary>
    NeedsOperator = 3,
}

/// <summary>The cluster refused a client's call (the CLI's exit code 77, EX_NOPERM).</summary>
[GenerateSerializer, Alias("flm.AccessDeniedException")]
public sealed class AccessDeniedException : Exception
{
    public AccessDeniedException() { }
    public AccessDeniedException(string message) : base(message) { }
    public AccessDeniedException(string message, Exception inner) : base(message, inner) { }

    public AccessDeniedException(string method, AccessRefusal reason, string message) : base(message) => (Method, Reason) = (method, reason);

    [Id(0)] public string Method { get; init; } = "";
    [Id(1)] public AccessRefusal Reason { get; init; }
}

/// <summary>Where a client's credentials travel: entries of the call's request context (inside TLS).</summary>
public static class CallCredentials
{
    /// <summary>A bearer token, compared with the cluster's token files.</summary>
    public const string Token = "flm.token";

    /// <summary>The client certificate (DER, base64) whose organizational unit names its role.</summary>
    public const string Certificate = "flm.cert";

    /// <summary>The statement the client signed with the certificate's key (<see cref="ProofStatement"/>).</summary>
    public const string Proof = "flm.proof";

    /// <summary>That signature (base64).</summary>
    public const string Signature = "flm.sig";

    /// <summary>The cluster key: marks calls silos make (internal calls).</summary>
    public const string ClusterKey = "flm.key";

    /// <summary>
    /// What a client signs to show it holds its certificate's key: the service it talks to and a random nonce
    /// (the statement is bound to one service; TLS keeps it from anyone else).
    /// </summary>
    public static string ProofStatement(string serviceId, string nonce) => $"flm-client-proof/v1/{serviceId}/{nonce}";
}
