using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Growth;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>Loads a checkpoint saved under any layout into one rank of another (or the same) layout.</summary>
public static class CheckpointRestore
{
    /// <summary>Checks that the checkpoint holds the model the job trains; throws one line naming the difference.</summary>
    public static void CheckCompatible(CheckpointReader reader, ModelConfig model, string tokenizer)
    {
        var saved = reader.Manifest.Job();
        var stages = Growth.GrowthSchedule.Resolve(JobValidator.Validate(saved));
        var m = stages[Math.Clamp(reader.Manifest.Stage, 0, stages.Count - 1)].Job.Model;
        string? Differs(string key, object a, object b) => Equals(a, b) ? null : $"{key} {a} in the checkpoint vs {b} in the job";
        var difference = Differs("layers", m.Layers, model.Layers) ?? Differs("hidden", m.Hidden, model.Hidden)
            ?? Differs("heads", m.Heads, model.Heads) ?? Differs("head size", m.HeadDim, model.HeadDim) ?? Differs("ffn", m.FfnSize, model.FfnSize)
            ?? Differs("padded vocabulary", m.PaddedVocab, model.PaddedVocab) ?? Differs("tokenizer", saved.Tokenizer, tokenizer);
        if (difference is not null)
            throw new FlmUserException($"checkpoint '{reader.Directory}' holds another model ({difference}); resume it with the job it was saved from");
    }

    /// <summary>Loads parameters and this rank's optimizer shard (call on the rank's device thread).</summary>
    public static void Load(RankTrainer rank, CheckpointReader reader)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var tp = rank.Model.Tp;
        foreach (var p in rank.Model.Parameters)
        {
            using var whole = reader.ReadWhole("param", p.Name);
            if (!whole.shape.SequenceEqual(p.Spec.Shape))
                throw new FlmUserException($"checkpoint '{reader.Directory}': '{p.Name}' is [{string.Join(",", whole.shape)}], the model needs [{string.Join(",", p.Spec.Shape)}]");
            p.Tensor.copy_(p.Spec.Slice(whole, tp.Rank, tp.Size));
        }
        var opt = rank.Optimizer;
        var separateMaster = rank.Flat.Params.dtype != opt.Master.dtype;
        var kinds = new List<(string Kind, Tensor Shard)> { ("exp_avg", opt.ExpAvg), ("exp_avg_sq", opt.ExpAvgSq) };
        if (separateMaster)
            kinds.Add(("master", opt.Master));
        foreach (var entry in rank.Flat.Entries)
        {
            var lo = Math.Max(entry.Offset, opt.ShardStart);
            var hi = Math.Min(entry.Offset + entry.Count, opt.ShardStart + opt.ShardLength);
            if (hi <= lo)
                continue;
            foreach (var (kind, shard) in kinds)
            {
                // Master weights missing (an fp32 checkpoint loaded as bf16): from the parameters. Moments missing
                // (an import of weights only): a fresh optimizer, zero moments.
                var source = reader.Has(kind, entry.Parameter.Name) ? kind : kind == "master" ? "param" : null;
                if (source is null)
                {
                    shard.narrow(0, lo - opt.ShardStart, hi - lo).zero_();
                    continue;
                }
                using var whole = reader.ReadWhole(source, entry.Parameter.Name);
                var local = entry.Parameter.Spec.Slice(whole, tp.Rank, tp.Size).reshape(-1);
                shard.narrow(0, lo - opt.ShardStart, hi - lo).copy_(local.narrow(0, lo - entry.Offset, hi - lo));
            }
        }
        opt.Step = reader.Records("exp_avg").Any() ? reader.Manifest.AdamStep : 0;
    }
    /// <summary>
    /// Loads a checkpoint taken at the end of stage k−1 into one rank of stage k, grown: the whole state is
    /// read, grown by <see cref="ModelGrowth"/> with the stage's seed (so every rank grows the same new weights)
    /// and this rank's slice kept; Adam's step count carries over. Each rank holds the whole old and new state
    /// for a moment, which bounds the model size this path can grow to host memory.
    /// </summary>
    public static void LoadGrown(RankTrainer rank, CheckpointReader reader, JobConfig job, IReadOnlyList<ResolvedStage> stages, int stage)
    {
        var (from, to) = (stages[stage - 1], stages[stage]);
        if (reader.Manifest.Stage != from.Index)
            throw new InvalidCheckpointException($"checkpoint '{reader.Directory}' is of stage {reader.Manifest.Stage}; growing into stage {to.Index} needs one of stage {from.Index}");
        CheckCompatible(reader, from.Job.Model, job.Tokenizer);
        var parameters = reader.Records("param").ToDictionary(r => r.Name, r => reader.ReadWhole("param", r.Name));
        var optimizer = new Dictionary<string, Tensor>();
        foreach (var kind in new[] { "exp_avg", "exp_avg_sq", "master" })
            foreach (var record in reader.Records(kind))
                optimizer[$"{kind}.{record.Name}"] = reader.ReadWhole(kind, record.Name);
        GrownState? grown = null;
        try
        {
            grown = ModelGrowth.Grow(from.Job.Model, to.Job.Model, parameters, optimizer.Count > 0 ? optimizer : null, to.Options, GrowthSchedule.SeedFor(job, to));
            StateAssembler.ScatterParameters(rank, grown.Parameters);
            if (grown.Optimizer is { } state)
                StateAssembler.ScatterOptimizer(rank, state, reader.Manifest.AdamStep);
        }
        finally
        {
            IEnumerable<Tensor> all = parameters.Values.Concat(optimizer.Values);
            if (grown is not null)
                all = all.Concat(grown.Parameters.Values).Concat(grown.Optimizer?.Values ?? Enumerable.Empty<Tensor>());
            foreach (var t in all)
                t.Dispose();
        }
    }
}
