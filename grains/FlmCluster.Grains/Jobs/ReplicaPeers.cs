using FlmCluster.Grains.Placement;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Who keeps each rank's in-memory replica: a worker of the same job on another server, the first one along a
/// ring of the job's servers that holds no rank of the same model replica (the rank's tensor×pipeline group),
/// falling back to the next server when every server holds one. So losing one server never loses a rank and
/// its copy, and, where the servers allow, never a whole model replica's ranks together with copies of that
/// replica. On the chosen server the copy goes to the worker keeping the fewest copies so far, so every worker
/// keeps about one replica besides its own.
/// </summary>
public static class ReplicaPeers
{
    /// <summary>The peer of every rank; null when the job's ranks are all on one server.</summary>
    public static string[]? For(IReadOnlyList<string> rankWorkers, ParallelLayout layout)
    {
        var nodes = rankWorkers.Select(NodeMetadata.NodeOfWorker).Distinct().Order(StringComparer.Ordinal).ToList();
        if (nodes.Count < 2)
            return null;
        var byNode = nodes.ToDictionary(n => n, n => rankWorkers.Where(w => NodeMetadata.NodeOfWorker(w) == n).ToList());
        var groupNodes = Enumerable.Range(0, rankWorkers.Count)
            .GroupBy(rank => layout.CoordsOf(rank).Dp)
            .ToDictionary(g => g.Key, g => g.Select(rank => NodeMetadata.NodeOfWorker(rankWorkers[rank])).ToHashSet());
        var kept = rankWorkers.ToDictionary(w => w, _ => 0);
        return rankWorkers.Select((worker, rank) =>
        {
            var home = nodes.IndexOf(NodeMetadata.NodeOfWorker(worker));
            var ring = Enumerable.Range(1, nodes.Count - 1).Select(k => nodes[(home + k) % nodes.Count]).ToList();
            var target = ring.FirstOrDefault(n => !groupNodes[layout.CoordsOf(rank).Dp].Contains(n)) ?? ring[0];
            var peer = byNode[target].MinBy(w => kept[w])!;
            kept[peer]++;
            return peer;
        }).ToArray();
    }
}
