using System.Collections.Concurrent;
using System.Diagnostics;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Grains.Security;

/// <summary>
/// The role a client needs for a grain method: its <see cref="ClientAccessAttribute"/>; none (internal) for
/// FlmCluster's other methods; operator for Orleans' own grains (management, dashboard: cluster administration).
/// </summary>
public static class CallRules
{
    private static readonly ConcurrentDictionary<MethodInfo, ClientRole?> Rules = new();

    public static ClientRole? RequiredRole(MethodInfo interfaceMethod) => Rules.GetOrAdd(interfaceMethod, m =>
        m.GetCustomAttribute<ClientAccessAttribute>() is { } access ? access.Role
        : m.DeclaringType?.Namespace?.StartsWith("FlmCluster", StringComparison.Ordinal) == true ? null
        : ClientRole.Operator);

    /// <summary>
    /// Orleans' own plumbing that reaches a grain as a call without passing the caller's outgoing filters: a grain's
    /// timer ticks (messages a grain sends itself, made on its silo only) and the cancellation of a caller's own request.
    /// </summary>
    private static readonly HashSet<string> Plumbing = ["Orleans.Runtime.IGrainTimerInvoker", "Orleans.Runtime.IGrainCallCancellationExtension"];

    public static bool IsRuntimePlumbing(MethodInfo interfaceMethod) => Plumbing.Contains(interfaceMethod.DeclaringType?.FullName ?? "");
}

/// <summary>Every call a silo makes carries the cluster key (calls to clients never do).</summary>
internal sealed class InternalCallMarker(AccessOptions access) : IOutgoingGrainCallFilter
{
    public async Task Invoke(IOutgoingGrainCallContext context)
    {
        if (context.TargetId.IsClient())
            RequestContext.Remove(CallCredentials.ClusterKey);
        else
            RequestContext.Set(CallCredentials.ClusterKey, access.ClusterKey);
        await context.Invoke();
    }
}

/// <summary>
/// Lets a call in when a silo made it (it carries the cluster key) or when the client's role allows the method;
/// refuses the rest with <see cref="AccessDeniedException"/>, logged and counted (flm.access.refused). Orleans'
/// system targets (membership, directory, silo control …) are the silos' own protocol: of them a client may call
/// only its gateway's manifest (the grain types it reads on connecting). Orleans' plumbing (timer ticks) passes.
/// </summary>
internal sealed partial class AccessFilter(AccessOptions access, ClientAuthenticator authenticator, FlmNodeOptions node, ILogger<AccessFilter> log) : IIncomingGrainCallFilter
{
    private readonly byte[] _clusterKey = Encoding.UTF8.GetBytes(access.ClusterKey);

    /// <summary>The system targets clients call: the manifest a client reads from its gateway.</summary>
    private readonly HashSet<GrainType> _clientSystemTargets = [.. node.ClientSystemTargets.Select(SystemTargetGrainId.CreateGrainType)];

    public async Task Invoke(IIncomingGrainCallContext context)
    {
        var method = $"{context.InterfaceMethod.DeclaringType?.Name}.{context.InterfaceMethod.Name}";
        if (context.TargetId.IsSystemTarget())
        {
            // Orleans' own calls between silos come from system targets and grains; a call from a client id is a
            // client's unless it carries the cluster key (a silo's hosted client: the dashboard, tools in the silo).
            if (context.SourceId is { } source && source.IsClient() && !_clientSystemTargets.Contains(context.TargetId.Type) && !FromSilo())
                Refuse(context, method, AccessRefusal.Internal);
            await context.Invoke();
            return;
        }
        if (CallRules.IsRuntimePlumbing(context.InterfaceMethod) || FromSilo())
        {
            await context.Invoke();
            return;
        }
        var required = CallRules.RequiredRole(context.InterfaceMethod);
        var (role, refusal) = required is null ? (null, AccessRefusal.Internal) : Authenticate();
        if (refusal is null && required == ClientRole.Operator && role == ClientRole.Viewer)
            refusal = AccessRefusal.NeedsOperator;
        if (refusal is { } refused)
            Refuse(context, method, refused);
        // A client's credentials stop here: the calls this one leads to are the cluster's own.
        foreach (var entry in (string[])[CallCredentials.Token, CallCredentials.Certificate, CallCredentials.Proof, CallCredentials.Signature])
            RequestContext.Remove(entry);
        await context.Invoke();
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private void Refuse(IIncomingGrainCallContext context, string method, AccessRefusal refused)
    {
        FlmTelemetry.AccessRefused.Add(1, new TagList { { FlmTelemetry.Tags.Method, method }, { FlmTelemetry.Tags.Refusal, refused.TagName() } });
        LogRefused(log, method, refused.TagName(), context.SourceId?.ToString() ?? "unknown");
        throw new AccessDeniedException(method, refused, Explain(method, refused));
    }

    private bool FromSilo()
    {
        if (RequestContext.Get(CallCredentials.ClusterKey) is not string key)
            return false;
        RequestContext.Remove(CallCredentials.ClusterKey);
        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(key), _clusterKey);
    }

    private (ClientRole?, AccessRefusal?) Authenticate() => !access.Secure
        ? (ClientRole.Operator, null)
        : authenticator.Authenticate(RequestContext.Get(CallCredentials.Token) as string, RequestContext.Get(CallCredentials.Certificate) as string,
            RequestContext.Get(CallCredentials.Proof) as string, RequestContext.Get(CallCredentials.Signature) as string);


    private static string Explain(string method, AccessRefusal refusal) => refusal switch
    {
        AccessRefusal.Internal => $"the cluster refused {method}: it is internal to the cluster, only silos call it",
        AccessRefusal.NoCredentials => $"the cluster refused {method}: this client sent no credentials; give a token file (FLM_TOKEN_FILE) or a client certificate (FLM_CLIENT_CERT and FLM_CLIENT_KEY)",
        AccessRefusal.BadCredentials => $"the cluster refused {method}: the token is not one of this cluster's, or the client certificate was not issued by its authority for an operator or viewer",
        _ => $"the cluster refused {method}: it needs the operator role and this client's credentials are a viewer's; use an operator token or certificate",
    };

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused a client call to {Method} ({Refusal}) from {Source}")]
    private static partial void LogRefused(ILogger logger, string method, string refusal, string source);
}

public static class AccessRefusalNames
{
    /// <summary>The refusal as metrics and logs tag it.</summary>
    public static string TagName(this AccessRefusal refusal) => refusal switch
    {
        AccessRefusal.Internal => "internal",
        AccessRefusal.NoCredentials => "no_credentials",
        AccessRefusal.BadCredentials => "bad_credentials",
        _ => "needs_operator",
    };
}
