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
        var shards = ShardsOf(rank);
        foreach (var entry in rank.Flat.Entries.Where(e => InShard(rank, e)))
        {
            foreach (var (kind, shard) in shards)
            {
                // Master weights missing (an fp32 checkpoint loaded as bf16): from the parameters. Moments missing
                // (an import of weights only): a fresh optimizer, zero moments.
                var source = reader.Has(kind, entry.Parameter.Name) ? kind : kind == "master" ? "param" : null;
                using var whole = source is null ? null : reader.ReadWhole(source, entry.Parameter.Name);
                FillShard(rank, entry, shard, whole);
            }
        }
        rank.Optimizer.Step = reader.Records("exp_avg").Any() ? reader.Manifest.AdamStep : 0;
    }
    /// <summary>
    /// Loads a checkpoint taken at the end of stage k−1 into one rank of stage k, grown. Tensor by tensor, the
    /// rank reads the old tensors a new one comes from, grows it (<see cref="TensorGrowth"/>, the stage's seed,
    /// so every rank grows the same new weights) and keeps its slice — and, for the tensors in its optimizer
    /// shard, the grown Adam moments (and master weights). Memory beyond the rank's own state is one whole
    /// tensor at a time. Adam's step count carries over.
    /// </summary>
    public static void LoadGrown(RankTrainer rank, CheckpointReader reader, JobConfig job, IReadOnlyList<ResolvedStage> stages, int stage)
    {
        var (from, to) = (stages[stage - 1], stages[stage]);
        if (reader.Manifest.Stage != from.Index)
            throw new InvalidCheckpointException($"checkpoint '{reader.Directory}' is of stage {reader.Manifest.Stage}; growing into stage {to.Index} needs one of stage {from.Index}");
        CheckCompatible(reader, from.Job.Model, job.Tokenizer);
        var growth = new TensorGrowth(from.Job.Model, to.Job.Model, to.Options, GrowthSchedule.SeedFor(job, to));
        var whole = Model.ParamCatalog.Whole(to.Job.Model).ToDictionary(spec => spec.Name);
        var kinds = ModelGrowth.OptimizerStates.Select(prefix => prefix.TrimEnd('.')).Where(kind => reader.Has(kind, Model.ParamCatalog.Embedding));
        var states = kinds.Select(kind => (Prefix: kind + ".", DType: DTypeOf(reader, kind))).ToList();
        var valueType = DTypeOf(reader, "param");
        Tensor ReadParam(string name) => reader.ReadWhole("param", name);
        Tensor ReadState(string prefix, string name) => reader.ReadWhole(prefix.TrimEnd('.'), name);

        using var _ = no_grad();
        var tp = rank.Model.Tp;
        var shards = ShardsOf(rank);
        foreach (var entry in rank.Flat.Entries)
        {
            using var scope = NewDisposeScope(); // one grown tensor (and its states) at a time
            var p = entry.Parameter;
            var inShard = InShard(rank, entry);
            var (value, grown) = growth.Grow(whole[p.Name], valueType, inShard ? states : [], ReadParam, ReadState, ownsOld: true);
            p.Tensor.copy_(p.Spec.Slice(value, tp.Rank, tp.Size));
            if (!inShard)
                continue;
            foreach (var (kind, shard) in shards)
            {
                // No moments in the checkpoint (weights only): zero; no master weights: the values.
                var source = grown.FirstOrDefault(g => g.Prefix == kind + ".").State ?? (kind == "master" ? value : null);
                FillShard(rank, entry, shard, source);
            }
        }
        rank.Optimizer.Step = states.Any(s => s.Prefix != "master.") ? reader.Manifest.AdamStep : 0;
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

    /// <summary>Writes the part of a whole tensor's state that falls in this rank's optimizer shard (zero when there is none).</summary>
    private static void FillShard(RankTrainer rank, Optim.FlatEntry entry, Tensor shard, Tensor? whole)
    {
        var (lo, hi) = ShardRange(rank, entry);
        var tp = rank.Model.Tp;
        var target = shard.narrow(0, lo - rank.Optimizer.ShardStart, hi - lo);
        if (whole is null)
            target.zero_();
        else
            target.copy_(entry.Parameter.Spec.Slice(whole, tp.Rank, tp.Size).reshape(-1).narrow(0, lo - entry.Offset, hi - lo));
    }

    private static ScalarType DTypeOf(CheckpointReader reader, string kind) =>
        SafeTensors.ParseDType(reader.Records(kind).First(r => r.Name == Model.ParamCatalog.Embedding).DType);
}
