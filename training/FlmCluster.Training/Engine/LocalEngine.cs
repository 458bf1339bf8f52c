using System.Diagnostics;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Model;
using FlmCluster.Training.Optim;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Engine;

/// <summary>One step of a job, aggregated over ranks.</summary>
public sealed record StepSummary(
    long Step,
    double Loss,
    long Tokens,
    double Lr,
    double GradNorm,
    bool Skipped,
    TimeSpan Elapsed,
    double TokensPerSecond,
    double CommFraction,
    long SamplesConsumed);

/// <summary>Where a stage engine sits in a growth schedule.</summary>
public sealed record StageContext(long StartStep, GrowthShape? Growth, GrowthRamp Ramp);

/// <summary>
/// Runs every rank of a job inside this process, one device thread per rank, over in-process collectives.
/// It plays the coordinator's part for a local run: plans each step (data cursor, LR), fans it out to
/// all ranks and aggregates their reports.
/// </summary>
public sealed class LocalEngine : IDisposable
{
    private readonly InProcessFabric _fabric;
    private readonly DeviceThread[] _threads;
    private readonly RankTrainer[] _ranks;
    private bool _ownsData;

    public JobConfig Job { get; }
    public ParallelLayout Layout { get; }
    public TokenDataset Data { get; }
    public LrSchedule Schedule { get; }
    public IReadOnlyList<RankTrainer> Ranks => _ranks;

    /// <summary>Next step to run (0-based).</summary>
    public long NextStep { get; private set; }

    /// <summary>Global samples consumed so far: the data cursor.</summary>
    public long SamplesConsumed { get; private set; }

    /// <summary>Step at which this engine's stage started (LR schedule and mask ramp count from it).</summary>
    public long StageStartStep { get; }

    /// <summary>New structure of a model grown at the start of this stage, or null.</summary>
    public GrowthShape? Growth { get; }

    public GrowthRamp Ramp { get; }

    private LocalEngine(JobConfig job, TokenDataset data, TimeSpan? collectiveTimeout, StageContext? stage)
    {
        StageStartStep = stage?.StartStep ?? 0;
        Growth = stage?.Growth;
        Ramp = stage?.Ramp ?? new GrowthRamp(0);
        Job = job;
        Layout = ParallelLayout.FromConfig(job.Layout);
        Data = data;
        Schedule = new LrSchedule(job.Optimizer, job.Train.Steps);
        TorchEnvironment.ConfigureThreads(job.Train.Threads, Layout.WorldSize);
        _fabric = new InProcessFabric(Layout.WorldSize, collectiveTimeout);
        _threads = new DeviceThread[Layout.WorldSize];
        _ranks = new RankTrainer[Layout.WorldSize];
        try
        {
            for (var r = 0; r < Layout.WorldSize; r++)
                _threads[r] = new DeviceThread($"rank{r}");
            Fan(r => _ranks[r] = new RankTrainer(job, new RankGroups(Layout, r), _fabric.ForRank(r), data, Growth));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Validates the job, loads its data and builds all ranks. Throws <see cref="FlmUserException"/> on bad input.</summary>
    public static LocalEngine Create(JobConfig job, TimeSpan? collectiveTimeout = null)
    {
        job = JobValidator.Validate(job);
        var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        try
        {
            var engine = Create(job, data, collectiveTimeout);
            engine._ownsData = true;
            return engine;
        }
        catch
        {
            data.Dispose();
            throw;
        }
    }

    /// <summary>Builds all ranks over an already loaded dataset (shared, read-only).</summary>
    public static LocalEngine Create(JobConfig job, TokenDataset data, TimeSpan? collectiveTimeout = null, StageContext? stage = null)
    {
        job = JobValidator.Validate(job);
        if (job.Stages.Count > 0)
            throw new ArgumentException("a job with growth stages runs through TrainingRun, one engine per stage", nameof(job));
        return new(job, data, collectiveTimeout, stage);
    }

    /// <summary>Mask value of the next step: ramps from 0 right after growth to exactly 1.</summary>
    public double NextMaskValue => Growth is null ? 1.0 : Ramp.ValueAt(NextStep - StageStartStep);

    public StepSummary RunStep()
    {
        var plan = new StepPlan(NextStep, SamplesConsumed, Schedule.At(NextStep - StageStartStep), NextMaskValue);
        var started = Stopwatch.GetTimestamp();
        var reports = Fan(r => _ranks[r].TrainStep(plan));
        var elapsed = Stopwatch.GetElapsedTime(started);
        NextStep++;
        SamplesConsumed += Job.Train.GlobalBatch;
        var lossRanks = reports.Where(r => r.ReportsLoss).ToList();
        var tokens = lossRanks.Sum(r => r.Tokens);
        var comm = reports.Average(r => r.CommTime.TotalSeconds / Math.Max(1e-9, r.Elapsed.TotalSeconds));
        return new StepSummary(plan.Step, lossRanks.Sum(r => r.LossSum) / tokens, tokens, plan.Lr,
            reports[0].GradNorm, reports[0].Skipped, elapsed, tokens / elapsed.TotalSeconds, comm, SamplesConsumed);
    }

    /// <summary>Mean token loss of the global batch starting at <paramref name="firstSample"/>, without training.</summary>
    public double EvaluateLoss(long firstSample)
    {
        var mask = NextMaskValue;
        var reports = Fan(r => _ranks[r].EvaluateLoss(firstSample, mask));
        return reports.Sum(x => x.LossSum) / reports.Sum(x => x.Tokens);
    }

    /// <summary>Sets the progress counters after restoring state (the optimizer's step is restored with it).</summary>
    public void SetProgress(long nextStep, long samplesConsumed)
    {
        NextStep = nextStep;
        SamplesConsumed = samplesConsumed;
    }

    /// <summary>Runs <paramref name="work"/> for every rank on its device thread; the first failure aborts the others.</summary>
    public T[] Fan<T>(Func<int, T> work)
    {
        var tasks = new Task<T>[_threads.Length];
        for (var r = 0; r < _threads.Length; r++)
        {
            var rank = r;
            tasks[r] = _threads[r].Run(() =>
            {
                try
                {
                    return work(rank);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    _fabric.Abort(ex);
                    throw;
                }
            });
        }
        try
        {
            Task.WaitAll(tasks);
        }
        catch (AggregateException)
        {
            // Report the root cause, not a peer's "aborted" echo.
            var failures = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).ToList();
            var root = failures.FirstOrDefault(e => e is not OperationCanceledException) ?? failures[0];
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(root).Throw();
        }
        return tasks.Select(t => t.Result).ToArray();
    }

    public void Fan(Action<int> work) => Fan(r =>
    {
        work(r);
        return 0;
    });

    public void Dispose()
    {
        if (_threads.All(t => t is not null) && _ranks.All(r => r is not null))
            Fan(r => _ranks[r].Dispose());
        foreach (var thread in _threads)
            thread?.Dispose();
        _fabric.Dispose();
        if (_ownsData)
            Data.Dispose();
    }
}
