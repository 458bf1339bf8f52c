using System.Diagnostics;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Growth;
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
/// A whole job: one or more stages, each trained by a <see cref="LocalEngine"/> of its own shape and layout.
/// Between stages it gathers the whole state, grows it (<see cref="ModelGrowth"/>), and loads it into the
/// next stage's engine, keeping the data cursor and Adam's step count; the next stage ramps the masks.
/// </summary>
public sealed class TrainingRun : IDisposable
{
    private readonly bool _ownsData;
    private readonly TimeSpan? _timeout;
    private readonly Action<string>? _log;
    private Checkpointer? _checkpointer;

    public JobConfig Job { get; }
    public IReadOnlyList<ResolvedStage> Stages { get; }
    public TokenDataset Data { get; }
    public int StageIndex { get; private set; }
    public LocalEngine Engine { get; private set; }
    public ResolvedStage Stage => Stages[StageIndex];

    /// <summary>First global step of each stage.</summary>
    public IReadOnlyList<long> StageStarts { get; }

    public long TotalSteps => StageStarts[^1] + Stages[^1].Job.Train.Steps;
    public long NextStep => Engine.NextStep;
    public bool Finished => NextStep >= TotalSteps;

    /// <summary>True when the current stage's steps are done and another stage follows.</summary>
    public bool AtStageEnd => StageIndex < Stages.Count - 1 && NextStep >= StageStarts[StageIndex + 1];

    private TrainingRun(JobConfig job, TokenDataset data, bool ownsData, TimeSpan? timeout, Action<string>? log)
    {
        _log = log;
        Job = job;
        Data = data;
        _ownsData = ownsData;
        _timeout = timeout;
        Stages = GrowthSchedule.Resolve(job);
        var starts = new List<long>();
        long step = 0;
        foreach (var stage in Stages)
        {
            starts.Add(step);
            step += stage.Job.Train.Steps;
        }
        StageStarts = starts;
        Engine = LocalEngine.Create(Stages[0].Job, data, timeout, new StageContext(0, null, new GrowthRamp(0)));
    }

    public static TrainingRun Create(JobConfig job, TimeSpan? collectiveTimeout = null, Action<string>? log = null)
    {
        job = JobValidator.Validate(job);
        var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        try
        {
            return new TrainingRun(job, data, ownsData: true, collectiveTimeout, log);
        }
        catch
        {
            data.Dispose();
            throw;
        }
    }

    public static TrainingRun Create(JobConfig job, TokenDataset data, TimeSpan? collectiveTimeout = null, Action<string>? log = null) =>
        new(JobValidator.Validate(job), data, ownsData: false, collectiveTimeout, log);

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
        var (step, samples) = (old.NextStep, old.SamplesConsumed);
        _checkpointer?.WaitForPending(); // a checkpoint of the old stage must finish before its engine goes
        var grown = ModelGrowth.Grow(from.Job.Model, to.Job.Model, parameters, optimizer, to.Options, GrowthSchedule.SeedFor(Job, to));
        DisposeAll(parameters, optimizer);
        old.Dispose();
        try
        {
            Engine = LocalEngine.Create(to.Job, Data, _timeout, new StageContext(step, grown.Shape, to.Ramp));
            Engine.Fan(r =>
            {
                StateAssembler.ScatterParameters(Engine.Ranks[r], grown.Parameters);
                StateAssembler.ScatterOptimizer(Engine.Ranks[r], grown.Optimizer!, adamStep);
            });
            Engine.SetProgress(step, samples);
        }
        finally
        {
            DisposeAll(grown.Parameters, grown.Optimizer!);
        }
        StageIndex++;
        var lossAfter = Engine.EvaluateLoss(evalBatch);
        return new TransitionReport(from.Name, to.Name, step, from.Job.Model, to.Job.Model, old.Layout, Engine.Layout,
            lossBefore, lossAfter, to.Ramp.Steps, watch.Elapsed);
    }

    /// <summary>The checkpointer of this run (policy from the job's checkpoint section).</summary>
    public Checkpointer Checkpoints => _checkpointer ??= new Checkpointer(Job.Checkpoint, _log);

    /// <summary>Saves a checkpoint now (asynchronously when the policy says so); returns the training stall.</summary>
    public TimeSpan SaveCheckpoint()
    {
        if (string.IsNullOrWhiteSpace(Job.Checkpoint.Dir))
            throw new FlmUserException("no checkpoint.dir is set; give one (e.g. --out DIR or --set checkpoint.dir=DIR)");
        return Checkpoints.Save(Engine, Job, Job.Name, StageIndex);
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

    /// <summary>Continues from a checkpoint already opened (and verified) by <see cref="CheckpointStore.Resolve"/>.</summary>
    public void Restore(CheckpointReader reader)
    {
        var m = reader.Manifest;
        if (m.Stage < 0 || m.Stage >= Stages.Count)
            throw new FlmUserException($"checkpoint '{reader.Directory}' is at stage {m.Stage}, but the job has {Stages.Count} stage(s)");
        if (m.DataFingerprint.Length > 0 && m.DataFingerprint != Data.Fingerprint)
            throw new FlmUserException($"checkpoint '{reader.Directory}' was trained on different data (fingerprint {m.DataFingerprint[..12]}… vs {Data.Fingerprint[..12]}…); resume with the same data.paths and tokenizer");
        CheckpointRestore.CheckCompatible(reader, Stages[m.Stage].Job.Model, Job.Tokenizer);
        if (m.Stage != StageIndex || m.Growth is not null)
        {
            Engine.Dispose();
            StageIndex = m.Stage;
            Engine = LocalEngine.Create(Stage.Job, Data, _timeout, new StageContext(m.StageStartStep, m.Growth, Stage.Ramp));
        }
        Engine.Fan(r => CheckpointRestore.Load(Engine.Ranks[r], reader));
        Engine.SetProgress(m.Step, m.SamplesConsumed);
    }

    /// <summary>Runs a step, then a checkpoint when the policy's interval says so.</summary>
    public StepSummary RunStepAndCheckpoint()
    {
        var summary = RunStep();
        var interval = Job.Checkpoint.Interval;
        if (interval > 0 && NextStep % interval == 0 && !string.IsNullOrWhiteSpace(Job.Checkpoint.Dir))
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
