namespace FlmCluster.Grains.Scheduling;

/// <summary>
/// Gang allocation of a job's ranks onto free GPUs. Ranks are ordered as in Megatron (TP fastest), so a job is
/// dp·pp tensor-parallel groups of tp consecutive ranks; each group must sit on one server (NVLink).
/// Servers with the most free GPUs are filled first, keeping a job on as few servers as possible.
/// </summary>
public static class GangAllocator
{
    /// <param name="free">Free GPU worker keys per node ("node/gpuK"), in GPU order.</param>
    /// <returns>The worker of every rank, or null when the free GPUs cannot hold the job now.</returns>
    public static IReadOnlyList<string>? Allocate(IReadOnlyDictionary<string, IReadOnlyList<string>> free, int dp, int tp, int pp)
    {
        var groups = dp * pp;
        var ranks = new List<string>(groups * tp);
        foreach (var (_, gpus) in free.OrderByDescending(kv => kv.Value.Count).ThenBy(kv => kv.Key, StringComparer.Ordinal))
        {
            for (var start = 0; start + tp <= gpus.Count && ranks.Count < groups * tp; start += tp)
                ranks.AddRange(gpus.Skip(start).Take(tp));
            if (ranks.Count == groups * tp)
                return ranks;
        }
        return null;
    }

    /// <summary>Whether the whole cluster (every GPU free) could ever host the layout.</summary>
    public static bool CanEverHost(IEnumerable<int> gpusPerNode, int dp, int tp, int pp) =>
        gpusPerNode.Sum(n => n / tp) >= dp * pp;
}
