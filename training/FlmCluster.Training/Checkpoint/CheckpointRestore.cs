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
        reader.RequireParameters(m);
    }

    /// <summary>
    /// Loads parameters and this rank's optimizer shard (call on the rank's device thread). Each slice is read from
    /// just the byte ranges of the shards that hold it, whatever layout saved them, so memory beyond the rank's
    /// own state stays within the budget (default: the job's checkpoint.reshard_budget_mib).
    /// </summary>
    public static void Load(RankTrainer rank, CheckpointReader reader, ReshardBudget? budget = null)
    {
        using var _ = no_grad();
        var files = reader.OpenShards();
        using var owned = files as IDisposable;
        var slices = new SliceReader(reader, files, budget ?? ReshardBudget.For(rank.Job.Checkpoint));
        var tp = rank.Model.Tp;
        foreach (var p in rank.Model.Parameters)
        {
            var record = reader.Record("param", p.Name);
            if (!record.Shape.SequenceEqual(p.Spec.Shape))
                throw new FlmUserException($"checkpoint '{reader.Directory}': '{p.Name}' is [{string.Join(",", record.Shape)}], the model needs [{string.Join(",", p.Spec.Shape)}]");
            slices.ReadSlice("param", p.Name, tp.Rank, tp.Size, 0, p.Tensor);
        }
        var shards = ShardsOf(rank);
        foreach (var entry in rank.Flat.Entries.Where(e => InShard(rank, e)))
        {
            var name = entry.Parameter.Name;
            foreach (var (kind, shard) in shards)
            {
                // Master weights missing (an fp32 checkpoint loaded as bf16): from the parameters. Moments missing
                // (an import of weights only): a fresh optimizer, zero moments.
                var source = reader.Has(kind, name) ? kind : kind == "master" ? "param" : null;
                var (target, from) = ShardPart(rank, entry, shard);
                using (target)
                {
                    if (source is null)
                        target.zero_();
                    else
                        slices.ReadSlice(source, name, tp.Rank, tp.Size, from, target);
                }
            }
        }
        rank.Optimizer.Step = reader.Records("exp_avg").Any() ? reader.Manifest.AdamStep : 0;
    }

    /// <summary>
    /// Loads a checkpoint taken at the end of stage k−1 into one rank of stage k, grown, slice by slice: for each
    /// of its parameters the rank makes only its own slice of the grown tensor — the new weights (<see cref="TensorGrowth"/>,
    /// the stage's seed, generated in pieces so every rank draws the same values without holding the whole tensor),
    /// then the old block read from just the shard bytes that hold it — and likewise the grown Adam moments (and
    /// master weights) of the part in its optimizer shard. Memory beyond the rank's own state stays within the
    /// budget, whatever the model's size. Adam's step count carries over.
    /// </summary>
    public static void LoadGrown(RankTrainer rank, CheckpointReader reader, JobConfig job, IReadOnlyList<ResolvedStage> stages, int stage, ReshardBudget? budget = null)
    {
        var (from, to) = (stages[stage - 1], stages[stage]);
        if (reader.Manifest.Stage != from.Index)
            throw new InvalidCheckpointException($"checkpoint '{reader.Directory}' is of stage {reader.Manifest.Stage}; growing into stage {to.Index} needs one of stage {from.Index}");
        CheckCompatible(reader, from.Job.Model, job.Tokenizer);
        var growth = new TensorGrowth(from.Job.Model, to.Job.Model, to.Options, GrowthSchedule.SeedFor(job, to));
        var whole = Model.ParamCatalog.Whole(to.Job.Model).ToDictionary(spec => spec.Name);
        var grownStates = ModelGrowth.OptimizerStates.Select(prefix => prefix.TrimEnd('.')).Where(kind => reader.Has(kind, Model.ParamCatalog.Embedding))
            .ToDictionary(kind => kind, kind => DTypeOf(reader, kind));
        var valueType = DTypeOf(reader, "param");

        using var _ = no_grad();
        var files = reader.OpenShards();
        using var owned = files as IDisposable;
        budget ??= ReshardBudget.For(rank.Job.Checkpoint);
        var grower = new SliceGrowth(new SliceReader(reader, files, budget), budget, growth);
        var tp = rank.Model.Tp;
        var shards = ShardsOf(rank);
        foreach (var entry in rank.Flat.Entries)
        {
            var p = entry.Parameter;
            var spec = whole[p.Name];
            var (oldName, copyValues, newLayer) = growth.SourceOf(p.Name);
            var valueSource = copyValues ? oldName : null;
            grower.Fill(spec, tp.Rank, tp.Size, 0, p.Tensor, fresh: valueType, old: valueSource is null ? null : ("param", valueSource));
            if (!InShard(rank, entry))
                continue;
            foreach (var (kind, shard) in shards)
            {
                var (target, start) = ShardPart(rank, entry, shard);
                using (target)
                {
                    if (grownStates.TryGetValue(kind, out var stateType))
                    {
                        // Master weights are the parameters in fp32 (new ones drawn, old ones copied); moments start at
                        // zero, with the old block copied only for old layers and shared tensors.
                        if (kind == "master")
                            grower.Fill(spec, tp.Rank, tp.Size, start, target, fresh: stateType, old: valueSource is null ? null : (kind, valueSource));
                        else
                            grower.Fill(spec, tp.Rank, tp.Size, start, target, fresh: null, old: oldName is null || newLayer ? null : (kind, oldName));
                    }
                    else if (kind == "master")
                        grower.Fill(spec, tp.Rank, tp.Size, start, target, fresh: valueType, old: valueSource is null ? null : ("param", valueSource)); // no master weights saved: the values
                    else
                        target.zero_(); // no moments saved (weights only)
                }
            }
        }
        rank.Optimizer.Step = grownStates.Keys.Any(kind => kind != "master") ? reader.Manifest.AdamStep : 0;
    }

    /// <summary>This rank's optimizer shards by state kind: the moments, and the master weights when kept apart from the values.</summary>
    private static List<(string Kind, Tensor Shard)> ShardsOf(RankTrainer rank)
    {
        var opt = rank.Optimizer;
        var shards = new List<(string Kind, Tensor Shard)> { ("exp_avg", opt.ExpAvg), ("exp_avg_sq", opt.ExpAvgSq) };
        if (rank.Flat.Params.dtype != opt.Master.dtype)
            shards.Add(("master", opt.Master));
        return shards;
    }

    private static (long Lo, long Hi) ShardRange(RankTrainer rank, Optim.FlatEntry entry) =>
        (Math.Max(entry.Offset, rank.Optimizer.ShardStart), Math.Min(entry.Offset + entry.Count, rank.Optimizer.ShardStart + rank.Optimizer.ShardLength));

    private static bool InShard(RankTrainer rank, Optim.FlatEntry entry) => ShardRange(rank, entry) is var (lo, hi) && hi > lo;

    /// <summary>The part of this rank's optimizer shard that holds <paramref name="entry"/>'s elements, and where it begins in the parameter's slice.</summary>
    private static (Tensor Target, long From) ShardPart(RankTrainer rank, Optim.FlatEntry entry, Tensor shard)
    {
        var (lo, hi) = ShardRange(rank, entry);
        return (shard.narrow(0, lo - rank.Optimizer.ShardStart, hi - lo), lo - entry.Offset);
    }

    private static ScalarType DTypeOf(CheckpointReader reader, string kind) =>
        SafeTensors.ParseDType(reader.Records(kind).First(r => r.Name == Model.ParamCatalog.Embedding).DType);
}
