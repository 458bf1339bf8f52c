using FlmCluster.Training.Engine;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// Converts between the state of all ranks of a layout and whole tensors by global name: parameters are
/// assembled from TP slices (pipeline stages own different names, DP replicas are identical), optimizer
/// moments from DP shards of each rank's flat buffer. The inverse slices whole tensors into any layout.
/// </summary>
public static class StateAssembler
{
    public const string ExpAvgPrefix = "exp_avg.";
    public const string ExpAvgSqPrefix = "exp_avg_sq.";
    public const string MasterPrefix = "master.";

    /// <summary>Whole parameters by name (CPU copies).</summary>
    public static Dictionary<string, Tensor> GatherParameters(IReadOnlyList<RankTrainer> ranks)
    {
        var slices = new Dictionary<string, SortedList<int, Tensor>>();
        var specs = new Dictionary<string, ParamSpec>();
        foreach (var rank in ranks.Where(r => r.Groups.Coords.Dp == 0))
        {
            foreach (var p in rank.Model.Parameters.Where(p => !p.IsTiedCopy))
            {
                specs[p.Name] = p.Spec;
                if (!slices.TryGetValue(p.Name, out var list))
                    slices[p.Name] = list = new SortedList<int, Tensor>();
                list[rank.Groups.Coords.Tp] = p.Tensor.detach().cpu();
            }
        }
        return slices.ToDictionary(kv => kv.Key, kv => specs[kv.Key].Assemble(kv.Value.Values.ToList()).clone());
    }

    /// <summary>Whole Adam moments (and separate master weights) by prefixed name.</summary>
    public static Dictionary<string, Tensor> GatherOptimizer(IReadOnlyList<RankTrainer> ranks)
    {
        var result = new Dictionary<string, Tensor>();
        var separateMaster = ranks[0].Flat.Params.dtype != ranks[0].Optimizer.Master.dtype;
        var states = new List<(string Prefix, Func<RankTrainer, Tensor> Shard)>
        {
            (ExpAvgPrefix, r => r.Optimizer.ExpAvg),
            (ExpAvgSqPrefix, r => r.Optimizer.ExpAvgSq),
        };
        if (separateMaster)
            states.Add((MasterPrefix, r => r.Optimizer.Master));
        foreach (var (prefix, shardOf) in states)
        {
            var slices = new Dictionary<string, SortedList<int, Tensor>>();
            var specs = new Dictionary<string, ParamSpec>();
            foreach (var replicaSet in ranks.GroupBy(r => (r.Groups.Coords.Tp, r.Groups.Coords.Pp)))
            {
                var ordered = replicaSet.OrderBy(r => r.Groups.Coords.Dp).ToList();
                using var flat = cat(ordered.Select(r => shardOf(r).cpu()).ToArray(), 0);
                foreach (var entry in ordered[0].Flat.Entries.Where(e => !e.Parameter.IsTiedCopy))
                {
                    var spec = entry.Parameter.Spec;
                    specs[spec.Name] = spec;
                    if (!slices.TryGetValue(spec.Name, out var list))
                        slices[spec.Name] = list = new SortedList<int, Tensor>();
                    list[replicaSet.Key.Tp] = flat.narrow(0, entry.Offset, entry.Count).view(entry.Parameter.Tensor.shape).clone();
                }
            }
            foreach (var (name, list) in slices)
                result[prefix + name] = specs[name].Assemble(list.Values.ToList()).clone();
        }
        return result;
    }

    /// <summary>Loads whole parameters into every rank (each takes its TP slice; tied copies take the embedding).</summary>
    public static void ScatterParameters(RankTrainer rank, IReadOnlyDictionary<string, Tensor> parameters)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var tp = rank.Model.Tp;
        foreach (var p in rank.Model.Parameters)
        {
            if (!parameters.TryGetValue(p.Name, out var full))
                throw new InvalidDataException($"the checkpoint has no tensor '{p.Name}'");
            if (!full.shape.SequenceEqual(p.Spec.Shape))
                throw new InvalidDataException($"tensor '{p.Name}' has shape [{string.Join(",", full.shape)}] in the checkpoint but [{string.Join(",", p.Spec.Shape)}] in the model");
            p.Tensor.copy_(p.Spec.Slice(full, tp.Rank, tp.Size));
        }
    }

    /// <summary>Loads whole optimizer state into one rank's shard; missing master weights are taken from the parameters.</summary>
    public static void ScatterOptimizer(RankTrainer rank, IReadOnlyDictionary<string, Tensor> state, long adamStep)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var opt = rank.Optimizer;
        var tp = rank.Model.Tp;
        var flat = rank.Flat;
        void Fill(string prefix, Tensor shard)
        {
            var vector = zeros(flat.PaddedTotal, dtype: shard.dtype);
            foreach (var entry in flat.Entries)
            {
                var name = prefix + entry.Parameter.Name;
                if (!state.TryGetValue(name, out var full))
                    throw new InvalidDataException($"the checkpoint has no optimizer tensor '{name}'");
                vector.narrow(0, entry.Offset, entry.Count).copy_(entry.Parameter.Spec.Slice(full, tp.Rank, tp.Size).reshape(-1));
            }
            shard.copy_(vector.narrow(0, opt.ShardStart, opt.ShardLength));
        }
        Fill(ExpAvgPrefix, opt.ExpAvg);
        Fill(ExpAvgSqPrefix, opt.ExpAvgSq);
        var separateMaster = flat.Params.dtype != opt.Master.dtype;
        if (separateMaster)
        {
            if (state.Keys.Any(k => k.StartsWith(MasterPrefix, StringComparison.Ordinal)))
                Fill(MasterPrefix, opt.Master);
            else
                opt.Master.copy_(flat.Params.narrow(0, opt.ShardStart, opt.ShardLength));
        }
        opt.Step = adamStep;
    }
}
