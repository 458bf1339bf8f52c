using FlmCluster.Training.Data;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Config;

/// <summary>Checks a whole job before anything runs and fills derived values (vocabulary from the tokenizer).</summary>
public static class JobValidator
{
    public static readonly string[] Precisions = ["auto", "fp32", "bf16", "fp64"];
    public static readonly string[] Decays = ["cosine", "linear", "constant"];

    public static JobConfig Validate(JobConfig job)
    {
        if (job.Stages.Count > 0)
        {
            // A growth schedule: every stage is a job of its own; the whole job's steps are their sum.
            var stages = Growth.GrowthSchedule.Resolve(job with { Model = FillVocabulary(job) });
            var tokens = stages.Aggregate(Int128.Zero, (sum, s) => sum + (Int128)s.Job.Train.Steps * s.Job.Train.GlobalBatch * s.Job.Model.SeqLen);
            Require(tokens <= long.MaxValue, "the stages' steps × global_batch × seq_len add up to more tokens than a 64-bit count holds; give fewer steps or tokens");
            return job with
            {
                Model = stages[0].Job.Model,
                Train = job.Train with { Steps = stages.Sum(s => s.Job.Train.Steps), GlobalBatch = stages[0].Job.Train.GlobalBatch },
                Layout = stages[0].Job.Layout,
            };
        }

        var tokenizerVocab = TokenizerFactory.VocabSize(job.Tokenizer);
        var model = FillVocabulary(job);
        model.Validate();
        Require(model.VocabSize >= tokenizerVocab,
            $"model.vocab_size={model.VocabSize} is smaller than the '{job.Tokenizer}' tokenizer's {tokenizerVocab} ids; set it to 0 to follow the tokenizer");

        var t = job.Train;
        Require(t.Steps > 0, $"train.steps must be positive (got {t.Steps})");
        Require(t.GlobalBatch > 0, $"train.global_batch must be positive (got {t.GlobalBatch})");
        // Sample and token counters are 64-bit: the whole job's tokens must fit.
        Require((Int128)t.Steps * t.GlobalBatch * model.SeqLen <= long.MaxValue,
            $"train.steps × train.global_batch × model.seq_len = {t.Steps} × {t.GlobalBatch} × {model.SeqLen} tokens overflows a 64-bit count; give fewer steps");
        Require(Precisions.Contains(t.Precision), $"train.precision '{t.Precision}' is not one of {string.Join(", ", Precisions)}");
        Require(t.Device == SimDevice || TryParseDevice(t.Device, out _), $"train.device '{t.Device}' is not cpu, cuda, cuda:N or sim");
        Require(t.Threads >= 0, $"train.threads must be 0 (one per core) or positive (got {t.Threads})");
        Require(t.Threads <= MaxThreads, $"train.threads={t.Threads} is more than {MaxThreads}; give 0 for one per core");
        Require(t.LogEvery > 0, $"train.log_every must be positive (got {t.LogEvery})");

        var o = job.Optimizer;
        Require(double.IsFinite(o.Lr) && o.Lr > 0, $"optimizer.lr must be positive and finite (got {o.Lr}); e.g. --set optimizer.lr=3e-4");
        Require(o.MinLr >= 0 && o.MinLr <= o.Lr, $"optimizer.min_lr must be in [0, optimizer.lr] (got {o.MinLr})");
        Require(o.WarmupSteps >= 0, $"optimizer.warmup_steps must not be negative (got {o.WarmupSteps})");
        Require(o.DecaySteps >= 0, $"optimizer.decay_steps must not be negative (got {o.DecaySteps})");
        Require(Decays.Contains(o.Decay), $"optimizer.decay '{o.Decay}' is not one of {string.Join(", ", Decays)}");
        Require(double.IsFinite(o.WeightDecay) && o.WeightDecay >= 0, $"optimizer.weight_decay must be finite and not negative (got {o.WeightDecay})");
        Require(o.Beta1 is >= 0 and < 1, $"optimizer.beta1 must be in [0, 1) (got {o.Beta1})");
        Require(o.Beta2 is >= 0 and < 1, $"optimizer.beta2 must be in [0, 1) (got {o.Beta2})");
        Require(double.IsFinite(o.Eps) && o.Eps > 0, $"optimizer.eps must be positive and finite (got {o.Eps})");
        Require(double.IsFinite(o.ClipGrad) && o.ClipGrad >= 0, $"optimizer.clip_grad must be finite and not negative (got {o.ClipGrad}); 0 disables clipping");

        var c = job.Checkpoint;
        Require(c.Interval >= 0, $"checkpoint.interval must not be negative (got {c.Interval})");
        Require(c.KeepLast >= 1, $"checkpoint.keep_last must be at least 1 (got {c.KeepLast})");
        Require(c.MemoryInterval >= 0, $"checkpoint.memory_interval must not be negative (got {c.MemoryInterval})");
        Require(c.ReshardBudgetMiB is >= 1 and <= 1 << 20, $"checkpoint.reshard_budget_mib must be 1 … {1 << 20} (got {c.ReshardBudgetMiB})");
        Require(c.KeepEvery >= 0, $"checkpoint.keep_every must not be negative (got {c.KeepEvery})");
        Require((Int128)c.KeepEvery * c.Interval <= long.MaxValue,
            $"checkpoint.keep_every × checkpoint.interval = {c.KeepEvery} × {c.Interval} overflows a step number; give smaller values");
        Require(c.Interval == 0 || !string.IsNullOrWhiteSpace(c.Dir), "checkpoint.interval is set but checkpoint.dir is empty; give a folder (e.g. --out runs/job or --set checkpoint.dir=runs/job)");
        Require(string.IsNullOrWhiteSpace(c.Dir) || !File.Exists(c.Dir), $"checkpoint.dir '{c.Dir}' is a file; give a folder");
        var r = job.Recovery;
        Require(r.WaitSeconds is null || (double.IsFinite(r.WaitSeconds.Value) && r.WaitSeconds >= 0 && r.WaitSeconds <= 7 * 24 * 3600),
            $"recovery.wait_seconds must be between 0 and one week (got {r.WaitSeconds}); leave it out for the server's setting");
        Require(r.RestoreLimit is >= 1 and <= 1000, $"recovery.restore_limit must be between 1 and 1000 (got {r.RestoreLimit})");
        Require(double.IsFinite(r.SpikeRatio) && (r.SpikeRatio == 0 || r.SpikeRatio > 1), $"recovery.spike_ratio must be 0 (off) or above 1 (got {r.SpikeRatio})");
        Require(double.IsFinite(r.SpikeZ) && r.SpikeZ >= 0, $"recovery.spike_z must be 0 (off) or positive (got {r.SpikeZ})");
        Require(r.SpikeWindow is >= 2 and <= 100_000, $"recovery.spike_window must be between 2 and 100000 steps (got {r.SpikeWindow})");
        Require(r.SpikeSkip is >= 1 and <= 10_000, $"recovery.spike_skip must be between 1 and 10000 batches (got {r.SpikeSkip})");
        Require(r.SpikeLimit is >= 1 and <= 100, $"recovery.spike_limit must be between 1 and 100 (got {r.SpikeLimit})");
        Require(double.IsFinite(r.HangFactor) && r.HangFactor >= 2, $"recovery.hang_factor must be at least 2 (got {r.HangFactor})");
        Require(double.IsFinite(r.HangMinSeconds) && r.HangMinSeconds is >= 1 and <= 24 * 3600, $"recovery.hang_min_seconds must be between 1 and one day (got {r.HangMinSeconds})");
        Require(double.IsFinite(r.StragglerFactor) && (r.StragglerFactor == 0 || r.StragglerFactor > 1), $"recovery.straggler_factor must be 0 (off) or above 1 (got {r.StragglerFactor})");
        Require(double.IsFinite(r.StragglerMinMs) && r.StragglerMinMs >= 0, $"recovery.straggler_min_ms must be a non-negative number of milliseconds (got {r.StragglerMinMs})");
        Require(r.StragglerWindow is >= 2 and <= 100_000, $"recovery.straggler_window must be between 2 and 100000 steps (got {r.StragglerWindow})");
        Require(double.IsFinite(r.StorageWaitSeconds) && r.StorageWaitSeconds is >= 1 and <= 7 * 24 * 3600,
            $"recovery.storage_wait_seconds must be between 1 and one week (got {r.StorageWaitSeconds})");
        Require(job.Data.Paths.Count > 0, "data.paths is empty; give at least one text, JSONL or token file (or 'bundled')");
        Require(job.Data.Paths.All(p => !string.IsNullOrWhiteSpace(p)), "data.paths has an empty entry; give a text, JSONL or token file (or 'bundled')");
        var layout = ParallelLayout.FromConfig(job.Layout);
        layout.Validate(model, t.GlobalBatch);
        // A micro-batch's token windows are one array (seq_len + 1 tokens per sequence).
        var microTokens = (long)layout.MicroBatchSize(t.GlobalBatch) * (model.SeqLen + 1L);
        Require(microTokens <= Array.MaxLength,
            $"a micro-batch of train.global_batch / (dp × micro_batches) = {layout.MicroBatchSize(t.GlobalBatch)} sequences of {model.SeqLen} tokens is too large ({microTokens} tokens, at most {Array.MaxLength}); use a smaller batch or more micro-batches");
        return job with { Model = model };
    }

    /// <summary>Torch intra-op threads beyond this are a typo, not a machine.</summary>
    public const int MaxThreads = 4096;

    /// <summary>The device of a job on simulated servers (<c>flm sim</c>): its work is modelled, not computed.</summary>
    public const string SimDevice = "sim";

    /// <summary><c>cpu</c> (index −1), <c>cuda</c> (0) or <c>cuda:N</c>: a device torch can compute on.</summary>
    public static bool TryParseDevice(string device, out int cudaIndex)
    {
        cudaIndex = device switch
        {
            "cpu" => -1,
            "cuda" => 0,
            _ when device.StartsWith("cuda:", StringComparison.Ordinal)
                && int.TryParse(device.AsSpan("cuda:".Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) => n,
            _ => -2,
        };
        return cudaIndex >= -1;
    }

    private static ModelConfig FillVocabulary(JobConfig job) =>
        job.Model.VocabSize == 0 ? job.Model with { VocabSize = TokenizerFactory.VocabSize(job.Tokenizer) } : job.Model;

    private static void Require(bool condition, string message)
    {
        if (!condition)
            throw new FlmUserException(message);
    }
}
