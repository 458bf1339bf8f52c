using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Model;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Growth;

/// <summary>A stage with everything resolved: its own job (shape, steps, batch, optimizer, layout) and how it grows in.</summary>
public sealed record ResolvedStage(int Index, string Name, JobConfig Job, GrowthRamp Ramp, GrowthOptions Options);

/// <summary>Turns a job's stages into per-stage jobs and checks the whole schedule before anything trains.</summary>
public static class GrowthSchedule
{
    /// <summary>The stages of a job (a job without stages is one stage).</summary>
    public static IReadOnlyList<ResolvedStage> Resolve(JobConfig job)
    {
        if (job.Stages.Count == 0)
            return [new ResolvedStage(0, job.Name, job, new GrowthRamp(0), new GrowthOptions())];
        var result = new List<ResolvedStage>();
        var model = job.Model;
        for (var i = 0; i < job.Stages.Count; i++)
        {
            var s = job.Stages[i];
            var name = string.IsNullOrEmpty(s.Name) ? $"stage{i}" : s.Name;
            var where = $"stages[{i}] ('{name}')";
            var previous = model;
            model = model with
            {
                Layers = s.Layers ?? model.Layers,
                Hidden = s.Hidden ?? model.Hidden,
                Heads = s.Heads ?? model.Heads,
                Ffn = s.Ffn ?? model.Ffn,
                HeadSize = s.HeadSize ?? model.HeadSize,
            };
            model.Validate($"{where}.model");
            if (i > 0)
                ModelGrowth.Validate(previous, model, where);
            var batch = s.GlobalBatch ?? job.Train.GlobalBatch;
            Require(batch > 0, $"{where}.global_batch must be positive (got {batch})");
            Require(s.Steps >= 0, $"{where}.steps must not be negative (got {s.Steps})");
            Require(double.IsFinite(s.Tokens) && s.Tokens is >= 0 and <= long.MaxValue, $"{where}.tokens must be a finite number from 0 to 2^63 (got {s.Tokens})");
            Require((s.Steps > 0) != (s.Tokens > 0), $"{where}: give exactly one of steps or tokens, positive (got steps={s.Steps}, tokens={s.Tokens})");
            var steps = s.Steps > 0 ? s.Steps : (long)Math.Round(s.Tokens / ((double)batch * model.SeqLen));
            Require(steps > 0, $"{where}: {s.Tokens} tokens is less than one step of {batch} × {model.SeqLen}");
            Require(s.Lr is null || (double.IsFinite(s.Lr.Value) && s.Lr > 0), $"{where}.lr must be positive and finite (got {s.Lr})");
            Require(s.MinLr is null || (double.IsFinite(s.MinLr.Value) && s.MinLr >= 0), $"{where}.min_lr must be finite and not negative (got {s.MinLr})");
            Require(s.WarmupSteps is null or >= 0, $"{where}.warmup_steps must not be negative (got {s.WarmupSteps})");
            Require(s.WarmupSamples is null or >= 0, $"{where}.warmup_samples must not be negative (got {s.WarmupSamples})");
            Require(s.WarmupSteps is null || s.WarmupSamples is null, $"{where}: give warmup_steps or warmup_samples, not both");
            var warmup = s.WarmupSteps ?? (s.WarmupSamples is { } samples ? (long)Math.Round((double)samples / batch) : job.Optimizer.WarmupSteps);
            var optimizer = job.Optimizer with
            {
                Lr = s.Lr ?? job.Optimizer.Lr,
                MinLr = s.MinLr ?? Math.Min(job.Optimizer.MinLr, s.Lr ?? job.Optimizer.Lr),
                WarmupSteps = warmup,
                DecaySteps = 0,
            };
            Require(GrowthOptions.Placements.Contains(s.DepthPlacement), $"{where}.depth_placement '{s.DepthPlacement}' is not one of {string.Join(", ", GrowthOptions.Placements)}");
            Require(GrowthOptions.Inits.Contains(s.NewBlockInit), $"{where}.new_block_init '{s.NewBlockInit}' is not one of {string.Join(", ", GrowthOptions.Inits)}");
            Require(s.MaskRampSteps >= 0, $"{where}.mask_ramp_steps must not be negative (got {s.MaskRampSteps})");
            Require(i == 0 || s.MaskRampSteps <= steps, $"{where}.mask_ramp_steps ({s.MaskRampSteps}) is longer than the stage ({steps} steps); the masks must be gone before the next growth");
            var stageJob = job with
            {
                Name = $"{job.Name}/{name}",
                Model = model,
                Train = job.Train with { Steps = steps, GlobalBatch = batch },
                Optimizer = optimizer,
                Layout = s.Layout ?? job.Layout,
                Stages = [],
            };
            try
            {
                stageJob = JobValidator.Validate(stageJob);
            }
            catch (FlmUserException ex)
            {
                throw new FlmUserException($"{where}: {ex.Message}");
            }
            result.Add(new ResolvedStage(i, name, stageJob, new GrowthRamp(i == 0 ? 0 : s.MaskRampSteps), new GrowthOptions(s.DepthPlacement, s.NewBlockInit)));
        }
        return result;
    }

    /// <summary>
    /// Why a job cannot run its growth stages on a cluster, or null: workers hand the model from one stage to
    /// the next through a checkpoint, so the job needs a checkpoint folder that every server reaches.
    /// </summary>
    public static string? ClusterProblem(JobConfig job) =>
        job.Stages.Count > 1 && string.IsNullOrWhiteSpace(job.Checkpoint.Dir)
            ? "a job with growth stages hands its model from stage to stage through a checkpoint on a cluster; set checkpoint.dir to a folder every server reaches (--set checkpoint.dir=DIR)"
            : null;

    /// <summary>The layout of the stage with the most ranks (the job's only layout when it has no stages).</summary>
    public static ParallelLayout WidestLayout(JobConfig job) =>
        Resolve(job).Select(s => ParallelLayout.FromConfig(s.Job.Layout)).MaxBy(l => l.WorldSize)!;

    /// <summary>Seed of a stage's new weights: from the job seed and the stage, so every rank and every rerun grows identically.</summary>
    public static ulong SeedFor(JobConfig job, ResolvedStage stage) =>
        SampleOrder.Mix(job.Train.Seed ^ (ulong)(stage.Index + 1) * 0x9E3779B97F4A7C15UL);

    /// <summary>The new structure of a stage's model while its masks ramp (null for the first stage).</summary>
    public static GrowthShape? ShapeOf(IReadOnlyList<ResolvedStage> stages, int index) =>
        index == 0 ? null : ModelGrowth.ShapeOf(stages[index - 1].Job.Model, stages[index].Job.Model, stages[index].Options);

    private static void Require(bool condition, string message)
    {
        if (!condition)
            throw new FlmUserException(message);
    }
}
