using FlmCluster.Grains.Placement;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Who keeps each rank's in-memory replica: a worker of the same job on the next server in a ring of the
/// job's servers, so that losing one server never loses a rank and its replica together, and every worker
/// keeps about one replica besides its own.
/// </summary>
public static class ReplicaPeers
{
    /// <summary>The peer of every rank; null when the job's ranks are all on one server.</summary>
    public static string[]? For(IReadOnlyList<string> rankWorkers)
    {
        var nodes = rankWorkers.Select(NodeMetadata.NodeOfWorker).Distinct().Order(StringComparer.Ordinal).ToList();
        if (nodes.Count < 2)
            return null;
        var byNode = nodes.ToDictionary(n => n, n => rankWorkers.Where(w => NodeMetadata.NodeOfWorker(w) == n).ToList());
        return rankWorkers.Select(worker =>
        {
            var node = NodeMetadata.NodeOfWorker(worker);
            var next = byNode[nodes[(nodes.IndexOf(node) + 1) % nodes.Count]];
            return next[byNode[node].IndexOf(worker) % next.Count];
        }).ToArray();
    }
}
