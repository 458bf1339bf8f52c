using FlmCluster.Grains.Abstractions;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace FlmCluster.Grains.Placement;

/// <summary>Silo metadata keys every FlmCluster silo publishes.</summary>
public static class NodeMetadata
{
    /// <summary>The server's node name; GPU workers "node/gpuK" live only on the silo with this name.</summary>
    public const string Node = "flm.node";

    /// <summary>The server's devices, e.g. "cpu:2" or "cuda:8" ("cpu:0" for a control-plane-only silo).</summary>
    public const string Devices = "flm.devices";

    /// <summary>Where the silo's socket data plane listens, "address:port" (only silos that run it).</summary>
    public const string DataEndpoint = "flm.data";

    /// <summary>Node name of a worker key "node/gpuK".</summary>
    public static string NodeOfWorker(string workerKey) =>
        NodeOfWorkerOrNull(workerKey) ?? throw new ArgumentException($"worker key '{workerKey}' is not node/gpuK");

    /// <summary>Node name of a worker key "node/gpuK", or null when the key has no node.</summary>
    public static string? NodeOfWorkerOrNull(string workerKey)
    {
        var slash = workerKey.IndexOf('/');
        return slash > 0 ? workerKey[..slash] : null;
    }
}

/// <summary>Pins a grain whose key starts with "node/" to the silo of that node.</summary>
[GenerateSerializer, Immutable, SuppressReferenceTracking, Alias("flm.NodePinnedPlacement")]
public sealed class NodePinnedPlacementStrategy : PlacementStrategy;

[AttributeUsage(AttributeTargets.Class)]
public sealed class NodePinnedPlacementAttribute() : PlacementAttribute(new NodePinnedPlacementStrategy());

/// <summary>
/// Places "node/gpuK" only on the active silo whose metadata names that node, and refuses (throws) when no
/// such silo is active (<see cref="WorkerLostException"/>): a GPU's worker never lands on another server.
/// </summary>
public sealed class NodePinnedPlacementDirector(NodeDirectory nodes) : IPlacementDirector
{
    public async Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var key = target.GrainIdentity.Key.ToString()!;
        var node = NodeMetadata.NodeOfWorker(key);
        var silos = context.GetCompatibleSilos(target);
        // Known silos first: asking one that is not in the metadata cache costs a call.
        foreach (var silo in silos)
            if (nodes.Known(silo)?.Node == node)
                return silo;
        foreach (var silo in silos.Where(s => nodes.Known(s) is null))
            if ((await nodes.Resolve(silo))?.Node == node)
                return silo;
        throw new WorkerLostException(key, $"no active silo for node '{node}': worker '{key}' can only run on that server");
    }
}

/// <summary>Prefers silos without devices (control-plane nodes) for coordinators and the scheduler.</summary>
[GenerateSerializer, Immutable, SuppressReferenceTracking, Alias("flm.ControlPlanePlacement")]
public sealed class ControlPlanePlacementStrategy : PlacementStrategy;

[AttributeUsage(AttributeTargets.Class)]
public sealed class ControlPlanePlacementAttribute() : PlacementAttribute(new ControlPlanePlacementStrategy());

/// <summary>
/// Control-plane grains go to a silo that hosts no GPUs when one exists (so losing a GPU server never takes
/// a coordinator with it), otherwise to any compatible silo; the choice is spread by the grain's key.
/// </summary>
public sealed class ControlPlanePlacementDirector(NodeDirectory nodes) : IPlacementDirector
{
    public async Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target).OrderBy(s => s.ToString(), StringComparer.Ordinal).ToArray();
        if (silos.Length == 0)
            throw new OrleansException("No compatible silo for a control-plane grain");
        var identities = await Task.WhenAll(silos.Select(nodes.Resolve));
        var controlOnly = silos.Where((_, i) => identities[i]?.Devices.Count == 0).ToArray();
        var pool = controlOnly.Length > 0 ? controlOnly : silos;
        var index = (int)((uint)StableHash(target.GrainIdentity.Key.ToString()!) % (uint)pool.Length);
        return pool[index];
    }

    private static int StableHash(string s)
    {
        var h = 17;
        foreach (var c in s)
            h = h * 31 + c;
        return h;
    }
}
