using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Optim;

namespace FlmCluster.Training.Jobs;

/// <summary>
/// The rules of a job's progress, shared by the in-process run and the cluster's coordinator: what the next
/// step is (step, data cursor, learning rate, growth mask), how the ranks' reports add up to the step, when a
/// checkpoint or an in-memory replica is due, what a checkpoint's manifest says, and whether a checkpoint can
/// resume the job.
/// </summary>
public sealed class JobProgress(ResolvedJob job)
{
    private readonly LrSchedule?[] _schedules = new LrSchedule?[job.Stages.Count];

    public ResolvedJob Job { get; } = job;

    /// <summary>The stage's own job: its shape, steps, batch, optimizer and layout.</summary>
    public JobConfig StageJob(JobCursor at) => Job.Stages[at.Stage].Job;

    public LrSchedule Schedule(int stage) => _schedules[stage] ??= new LrSchedule(Job.Stages[stage].Job.Optimizer, Job.Stages[stage].Job.Train.Steps);

    /// <summary>Growth mask value of the next step: ramps from 0 right after growth to exactly 1.</summary>
    public double MaskAt(JobCursor at) => Job.Stages[at.Stage].Ramp.ValueAt(at.NextStep - at.StageStartStep);

    public StepPlan Plan(JobCursor at) =>
        new(at.NextStep, at.SamplesConsumed, Schedule(at.Stage).At(at.NextStep - at.StageStartStep), MaskAt(at));

    public bool Finished(JobCursor at) => at.NextStep >= Job.TotalSteps;

    /// <summary>The stage's steps are done and another stage follows: the model grows before the next step.</summary>
    public bool AtStageEnd(JobCursor at) => at.Stage < Job.Stages.Count - 1 && at.NextStep >= Job.StageEnd(at.Stage);

    /// <summary>
    /// A step from every rank's report, and the cursor once it is committed: the mean token loss over the ranks
    /// that report it (one per data-parallel replica), tokens, the (replicated) gradient norm and skip flag, the
    /// mean communication share; the data cursor moves by the stage's global batch.
    /// </summary>
    public (StepSummary Step, JobCursor Next) Complete(JobCursor at, StepPlan plan, IReadOnlyList<RankStepReport> reports, TimeSpan elapsed)
    {
        var lossRanks = reports.Where(r => r.ReportsLoss).ToList();
        var tokens = lossRanks.Sum(r => r.Tokens);
        var loss = lossRanks.Sum(r => r.LossSum) / Math.Max(1, tokens);
        var comm = reports.Average(r => r.CommTime.TotalSeconds / Math.Max(1e-9, r.Elapsed.TotalSeconds));
        var next = at.After(reports[0].Skipped, StageJob(at).Train.GlobalBatch);
        var step = new StepSummary(plan.Step, loss, tokens, plan.Lr, reports[0].GradNorm, reports[0].Skipped, elapsed,
            tokens / Math.Max(1e-9, elapsed.TotalSeconds), comm, next.SamplesConsumed);
        return (step, next);
    }

    /// <summary>
    /// Whether a persistent checkpoint is due at <paramref name="at"/> (after a step): on request, or every
    /// checkpoint.interval steps; never without a checkpoint folder. The end of a stage and of the job save anyway.
    /// </summary>
    public bool CheckpointDue(JobCursor at, bool requested) =>
        !string.IsNullOrWhiteSpace(Job.Job.Checkpoint.Dir)
        && (requested || (Job.Job.Checkpoint.Interval > 0 && at.NextStep % Job.Job.Checkpoint.Interval == 0));

    /// <summary>Whether an in-memory replica is due; not at a stage's end, whose replicas would hold the old shape.</summary>
    public bool ReplicaDue(JobCursor at) =>
        Job.Job.Checkpoint.MemoryInterval is var every and > 0 && at.NextStep % every == 0 && at.NextStep < Job.StageEnd(at.Stage);

    /// <summary>A checkpoint's manifest for the state at <paramref name="at"/>, saved by <paramref name="shards"/>.</summary>
    public CheckpointManifest Manifest(JobCursor at, RunIdentity run, string jobId, string dataFingerprint, IReadOnlyList<WrittenShard> shards)
    {
        var mask = MaskAt(at);
        return new CheckpointManifest
        {
            JobId = jobId,
            RunId = run.RunId,
            ConfigFingerprint = run.ConfigFingerprint,
            JobJson = Job.ToJson(),
            CreatedAt = DateTime.UtcNow,
            Stage = at.Stage,
            StageStartStep = at.StageStartStep,
            Growth = mask < 1.0 ? Job.GrowthShapeOf(at.Stage) : null,
            MaskValue = mask,
            Step = at.NextStep,
            SamplesConsumed = at.SamplesConsumed,
            AdamStep = at.AdamStep,
            NextLr = Schedule(at.Stage).At(at.NextStep - at.StageStartStep),
            DataFingerprint = dataFingerprint,
            DataSeed = Job.Job.Data.Seed,
            TrainSeed = Job.Job.Train.Seed,
            Layout = StageJob(at).Layout,
            Shards = shards.Select(s => s.Shard).OrderBy(s => s.Rank).ToList(),
            Tensors = ShardWriter.Merge(shards),
        };
    }

    /// <summary>Deletes the run's checkpoints that retention does not keep (the last keep_last, every keep_every-th); returns them.</summary>
    public IReadOnlyList<string> Prune(RunIdentity run)
    {
        var policy = Job.Job.Checkpoint;
        return CheckpointStore.Prune(policy.Dir, run.RunId, policy.KeepLast, policy.KeepEvery * Math.Max(1, policy.Interval));
    }

    /// <summary>
    /// Checks that a checkpoint can be loaded into this job: its stage exists here, it holds this job's model and
    /// tokenizer, it was trained on this data (when <paramref name="dataFingerprint"/> is known); with
    /// <paramref name="stepsLeft"/>, that the job has steps left after it (to resume it, not just to load it).
    /// Throws <see cref="FlmUserException"/> naming the problem and the fix.
    /// </summary>
    public void CheckResume(CheckpointReader reader, string? dataFingerprint = null, bool stepsLeft = true)
    {
        var m = reader.Manifest;
        if (m.Stage < 0 || m.Stage >= Job.Stages.Count)
            throw new FlmUserException($"checkpoint '{reader.Directory}' is at stage {m.Stage}, but the job has {Job.Stages.Count} stage(s)");
        if (dataFingerprint is not null && m.DataFingerprint.Length > 0 && m.DataFingerprint != dataFingerprint)
            throw new FlmUserException($"checkpoint '{reader.Directory}' was trained on different data (fingerprint {m.DataFingerprint[..Math.Min(12, m.DataFingerprint.Length)]}… vs {dataFingerprint[..Math.Min(12, dataFingerprint.Length)]}…); resume with the same data.paths and tokenizer");
        CheckpointRestore.CheckCompatible(reader, Job.Stages[m.Stage].Job.Model, Job.Job.Tokenizer);
        if (stepsLeft && m.Step >= Job.TotalSteps)
            throw new FlmUserException($"the checkpoint is at step {m.Step} and the job has {Job.TotalSteps} steps; give more (--steps)");
    }
}
