using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Placement;
using Orleans.Concurrency;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// One server's relay of steps to its GPUs' workers, on that server's silo: the coordinator's fan-out and fan-in
/// cross the network once per server. Holds nothing; calls of different jobs interleave.
/// </summary>
[NodePinnedPlacement, Reentrant]
public sealed class ServerGrain(FlmNodeOptions node, IGrainFactory grains) : Grain, IServerGrain
{
    /// <summary>The key of a server's grain.</summary>
    public static string KeyOf(string node) => $"{node}/server";

    public async Task<WorkerStepReport[]> RunStep(WorkerStep step, IReadOnlyList<string> workers)
    {
        ArgumentNullException.ThrowIfNull(step);
        if (workers is null || workers.Count == 0 || workers.Count > node.Devices.Count || workers.Any(w => w is null || NodeMetadata.NodeOfWorkerOrNull(w) != node.Node))
            throw new ClusterRequestException($"a step for server {node.Node} must name 1 to {node.Devices.Count} of its workers");
        var calls = workers.Select(w => grains.GetGrain<IGpuWorkerGrain>(w).RunStep(step)).ToList();
        var pending = new List<Task<WorkerStepReport>>(calls);
        while (pending.Count > 0)
        {
            var done = await Task.WhenAny(pending);
            pending.Remove(done);
            // A worker that fails may leave its peers waiting in collectives until the coordinator stops them:
            // report it now rather than after them.
            if (!done.IsCompletedSuccessfully)
                await done;
        }
        return calls.Select(c => c.Result).ToArray();
    }
}
