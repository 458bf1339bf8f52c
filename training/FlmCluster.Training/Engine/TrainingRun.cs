using System.Diagnostics;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Engine;

/// <summary>What happened at a growth transition.</summary>
/// <param name="LossBefore">Mean loss of the next batch under the old model.</param>
/// <param name="LossAfter">Mean loss of the same batch under the grown model at mask 0 (equal when growth preserves the function).</param>
public sealed record TransitionReport(
    string FromStage,
    string ToStage,
    long Step,
    ModelConfig Before,
    ModelConfig After,
    ParallelLayout LayoutBefore,
    ParallelLayout LayoutAfter,
    double LossBefore,
    double LossAfter,
    long RampSteps,
    TimeSpan Elapsed);

/// <summary>
/// A whole job in this process: one or more stages, each trained by a <see cref="LocalEngine"/> of its own shape
/// and layout. Between stages it gathers the whole state, grows it (<see cref="ModelGrowth"/>), and loads it into
/// the next stage's engine, keeping the data cursor and Adam's step count; the next stage ramps the masks. Its
/// checkpoints belong to its run (<see cref="RunIdentity"/>): a new one, or the run of the checkpoint it resumed.
/// </summary>
public sealed class TrainingRun : IDisposable
{
    private readonly bool _ownsData;
    private readonly TimeSpan? _timeout;
    private readonly Action<string>? _log;
    private Checkpointer? _checkpointer;
    private long? _resumedStep;
    private bool _claimed;

    public ResolvedJob Resolved { get; }
    public JobProgress Progress { get; }
    public JobConfig Job => Resolved.Job;
    public IReadOnlyList<ResolvedStage> Stages => Resolved.Stages;
    public TokenDataset Data { get; }
    public LocalEngine Engine { get; private set; }
    public int StageIndex => Engine.Cursor.Stage;
    public ResolvedStage Stage => Stages[StageIndex];

    /// <summary>The run this job's checkpoints belong to.</summary>
    public RunIdentity Run { get; private set; }

    /// <summary>Replace another run's checkpoints in the checkpoint folder instead of refusing to save there.</summary>
    public bool OverwriteCheckpoints { get; set; }

    /// <summary>First global step of each stage.</summary>
    public IReadOnlyList<long> StageStarts => Resolved.StageStarts;

    public long TotalSteps => Resolved.TotalSteps;
    public long NextStep => Engine.NextStep;
    public bool Finished => Progress.Finished(Engine.Cursor);

    /// <summary>True when the current stage's steps are done and another stage follows.</summary>
    public bool AtStageEnd => Progress.AtStageEnd(Engine.Cursor);

    private TrainingRun(ResolvedJob job, TokenDataset data, bool ownsData, TimeSpan? timeout, Action<string>? log)
    {
        _log = log;
        Resolved = job;
        Progress = new JobProgress(job);
        Run = RunIdentity.New(job);
        Data = data;
        _ownsData = ownsData;
        _timeout = timeout;
        Engine = LocalEngine.ForStage(Progress, JobCursor.Start, data, timeout);
    }

    public static TrainingRun Create(JobConfig job, TimeSpan? collectiveTimeout = null, Action<string>? log = null)
    {
        var resolved = ResolvedJob.Resolve(job);
        var data = TokenDataset.Load(resolved.Job.Data.Paths, TokenizerFactory.Create(resolved.Job.Tokenizer), resolved.Job.Model.PaddedVocab);
        try
        {
            return new TrainingRun(resolved, data, ownsData: true, collectiveTimeout, log);
        }
        catch
        {
            data.Dispose();
            throw;
        }
    }

    public static TrainingRun Create(JobConfig job, TokenDataset data, TimeSpan? collectiveTimeout = null, Action<string>? log = null) =>
        new(ResolvedJob.Resolve(job), data, ownsData: false, collectiveTimeout, log);

    public StepSummary RunStep()
    {
        if (Finished)
            throw new InvalidOperationException("the job has run all its steps");
        if (AtStageEnd)
            throw new InvalidOperationException("the stage is done: call Grow() to move to the next stage");
        return Engine.RunStep();
    }

    /// <summary>Grows the model into the next stage's shape and layout; the function is unchanged (masks at 0).</summary>
    public TransitionReport Grow()
    {
        if (!AtStageEnd)
            throw new InvalidOperationException("growth happens when a stage's steps are done");
        var watch = Stopwatch.StartNew();
        var old = Engine;
        var from = Stage;
        var to = Stages[StageIndex + 1];
        var evalBatch = old.SamplesConsumed;
        var lossBefore = old.EvaluateLoss(evalBatch);
        var parameters = StateAssembler.GatherParameters(old.Ranks);
        var optimizer = StateAssembler.GatherOptimizer(old.Ranks);
        var adamStep = old.Ranks[0].Optimizer.Step;
        var next = old.Cursor.IntoNextStage();
        _checkpointer?.WaitForPending(); // a checkpoint of the old stage must finish before its engine goes
        var grown = ModelGrowth.Grow(from.Job.Model, to.Job.Model, parameters, optimizer, to.Options, GrowthSchedule.SeedFor(Job, to));
        DisposeAll(parameters, optimizer);
        old.Dispose();
        try
        {
            Engine = LocalEngine.ForStage(Progress, next, Data, _timeout);
            Engine.Fan(r =>
            {
                StateAssembler.ScatterParameters(Engine.Ranks[r], grown.Parameters);
                StateAssembler.ScatterOptimizer(Engine.Ranks[r], grown.Optimizer!, adamStep);
            });
            Engine.SetCursor(next);
        }
        finally
        {
            DisposeAll(grown.Parameters, grown.Optimizer!);
        }
        var lossAfter = Engine.EvaluateLoss(evalBatch);
        return new TransitionReport(from.Name, to.Name, next.NextStep, from.Job.Model, to.Job.Model, old.Layout, Engine.Layout,
            lossBefore, lossAfter, to.Ramp.Steps, watch.Elapsed);
    }

    /// <summary>The checkpointer of this run (policy from the job's checkpoint section).</summary>
    public Checkpointer Checkpoints => _checkpointer ??= new Checkpointer(Progress, _log);

    /// <summary>
    /// Makes the checkpoint folder this run's before its first save (see <see cref="CheckpointOwnership"/>);
    /// refuses with <see cref="FlmUserException"/> a folder that holds another run's checkpoints, or newer ones of
    /// this run than the checkpoint it resumed. Returns the folders an overwrite deleted.
    /// </summary>
    public IReadOnlyList<string> ClaimCheckpointFolder()
    {
        if (string.IsNullOrWhiteSpace(Job.Checkpoint.Dir))
            throw new FlmUserException("no checkpoint.dir is set; give one (e.g. --out DIR or --set checkpoint.dir=DIR)");
        var removed = CheckpointOwnership.Claim(Job.Checkpoint.Dir, Run, OverwriteCheckpoints, _resumedStep);
        _claimed = true;
        return removed;
    }

    /// <summary>Saves a checkpoint now (asynchronously when the policy says so); returns the training stall.</summary>
    public TimeSpan SaveCheckpoint()
    {
        if (!_claimed)
            ClaimCheckpointFolder();
        return Checkpoints.Save(Engine, Run);
    }

    /// <summary>
    /// Continues from a checkpoint (a checkpoint folder, or a store whose newest valid checkpoint is taken):
    /// moves to its stage, builds that stage's engine in this run's layout and loads every rank's slice.
    /// </summary>
    public CheckpointReader Restore(string path, Action<string, string>? rejected = null)
    {
        CheckpointReader reader;
        try
        {
            reader = CheckpointStore.Resolve(path, rejected);
        }
        catch (InvalidCheckpointException ex)
        {
            throw new FlmUserException(ex.Message);
        }
        Restore(reader);
        return reader;
    }

    /// <summary>
    /// Continues from a checkpoint already opened (and verified) by <see cref="CheckpointStore.Resolve"/>; the run
    /// becomes the checkpoint's.
    /// </summary>
    public void Restore(CheckpointReader reader)
    {
        Progress.CheckResume(reader, Data.Fingerprint, stepsLeft: false);
        var at = JobCursor.Of(reader.Manifest);
        Engine.Dispose();
        Engine = LocalEngine.ForStage(Progress, at, Data, _timeout);
        Engine.Fan(r => CheckpointRestore.Load(Engine.Ranks[r], reader));
        Engine.SetCursor(at);
        Run = RunIdentity.Continuing(reader.Manifest, Resolved);
        _resumedStep = at.NextStep;
        _claimed = false;
    }

    /// <summary>Runs a step, then a checkpoint when the policy's interval says so.</summary>
    public StepSummary RunStepAndCheckpoint()
    {
        var summary = RunStep();
        if (Progress.CheckpointDue(Engine.Cursor, requested: false))
            SaveCheckpoint();
        return summary;
    }

    private static void DisposeAll(params Dictionary<string, TorchSharp.torch.Tensor>[] sets)
    {
        foreach (var set in sets)
            foreach (var t in set.Values)
                t.Dispose();
    }

    public void Dispose()
    {
        _checkpointer?.Dispose();
        Engine.Dispose();
        if (_ownsData)
            Data.Dispose();
    }
}
