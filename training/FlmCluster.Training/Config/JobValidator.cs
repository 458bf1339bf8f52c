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
        Require(Precisions.Contains(t.Precision), $"train.precision '{t.Precision}' is not one of {string.Join(", ", Precisions)}");
        Require(t.Device == "cpu" || t.Device == "cuda" || t.Device.StartsWith("cuda:", StringComparison.Ordinal),
            $"train.device '{t.Device}' is not cpu, cuda or cuda:N");
        Require(t.Threads >= 0, $"train.threads must be 0 (one per core) or positive (got {t.Threads})");
        Require(t.LogEvery > 0, $"train.log_every must be positive (got {t.LogEvery})");

        var o = job.Optimizer;
        Require(o.Lr > 0, $"optimizer.lr must be positive (got {o.Lr}); e.g. --set optimizer.lr=3e-4");
        Require(o.MinLr >= 0 && o.MinLr <= o.Lr, $"optimizer.min_lr must be in [0, optimizer.lr] (got {o.MinLr})");
        Require(o.WarmupSteps >= 0, $"optimizer.warmup_steps must not be negative (got {o.WarmupSteps})");
        Require(o.DecaySteps >= 0, $"optimizer.decay_steps must not be negative (got {o.DecaySteps})");
        Require(Decays.Contains(o.Decay), $"optimizer.decay '{o.Decay}' is not one of {string.Join(", ", Decays)}");
        Require(o.WeightDecay >= 0, $"optimizer.weight_decay must not be negative (got {o.WeightDecay})");
        Require(o.Beta1 is >= 0 and < 1, $"optimizer.beta1 must be in [0, 1) (got {o.Beta1})");
        Require(o.Beta2 is >= 0 and < 1, $"optimizer.beta2 must be in [0, 1) (got {o.Beta2})");
        Require(o.Eps > 0, $"optimizer.eps must be positive (got {o.Eps})");
        Require(o.ClipGrad >= 0, $"optimizer.clip_grad must not be negative (got {o.ClipGrad}); 0 disables clipping");

        var c = job.Checkpoint;
        Require(c.Interval >= 0, $"checkpoint.interval must not be negative (got {c.Interval})");
        Require(c.KeepLast >= 1, $"checkpoint.keep_last must be at least 1 (got {c.KeepLast})");
        Require(c.MemoryInterval >= 0, $"checkpoint.memory_interval must not be negative (got {c.MemoryInterval})");
        Require(c.KeepEvery >= 0, $"checkpoint.keep_every must not be negative (got {c.KeepEvery})");
        Require(c.Interval == 0 || !string.IsNullOrWhiteSpace(c.Dir), "checkpoint.interval is set but checkpoint.dir is empty; give a folder (e.g. --set checkpoint.dir=runs/job)");
        Require(string.IsNullOrWhiteSpace(c.Dir) || !File.Exists(c.Dir), $"checkpoint.dir '{c.Dir}' is a file; give a folder");
        var r = job.Recovery;
        Require(r.WaitSeconds is null || (double.IsFinite(r.WaitSeconds.Value) && r.WaitSeconds >= 0 && r.WaitSeconds <= 7 * 24 * 3600),
            $"recovery.wait_seconds must be between 0 and one week (got {r.WaitSeconds}); leave it out for the server's setting");
        Require(r.RestoreLimit is >= 1 and <= 1000, $"recovery.restore_limit must be between 1 and 1000 (got {r.RestoreLimit})");
        Require(job.Data.Paths.Count > 0, "data.paths is empty; give at least one text, JSONL or token file (or 'bundled')");
        ParallelLayout.FromConfig(job.Layout).Validate(model, t.GlobalBatch);
        return job with { Model = model };
    }

    private static ModelConfig FillVocabulary(JobConfig job) =>
        job.Model.VocabSize == 0 ? job.Model with { VocabSize = TokenizerFactory.VocabSize(job.Tokenizer) } : job.Model;

    private static void Require(bool condition, string message)
    {
        if (!condition)
            throw new FlmUserException(message);
    }
}
