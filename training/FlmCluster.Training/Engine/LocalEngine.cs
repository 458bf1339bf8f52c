using System.Diagnostics;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Jobs;
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

/// <summary>
/// Runs every rank of one stage of a job inside this process, one device thread per rank, over in-process
/// collectives. It plays the coordinator's part for a local run with the same rules as the cluster's
/// (<see cref="JobProgress"/>): plans each step from its cursor, fans it out to all ranks and aggregates their reports.
/// </summary>
public sealed class LocalEngine : IDisposable
{
    private readonly InProcessFabric _fabric;
    private readonly DeviceThread[] _threads;
    private readonly RankTrainer[] _ranks;
    private bool _ownsData;

    /// <summary>The stage's job: its shape, batch, optimizer and layout.</summary>
    public JobConfig Job { get; }
    public JobProgress Progress { get; }
    public ParallelLayout Layout { get; }
    public TokenDataset Data { get; }
    public IReadOnlyList<RankTrainer> Ranks => _ranks;

    /// <summary>Where the job stands: next step, data cursor, Adam's step count, stage.</summary>
    public JobCursor Cursor { get; private set; }

    /// <summary>Next step to run (0-based).</summary>
    public long NextStep => Cursor.NextStep;

    /// <summary>Global samples consumed so far: the data cursor.</summary>
    public long SamplesConsumed => Cursor.SamplesConsumed;

    public LrSchedule Schedule => Progress.Schedule(Cursor.Stage);

    private LocalEngine(JobProgress progress, JobCursor cursor, TokenDataset data, TimeSpan? collectiveTimeout)
    {
        Progress = progress;
        Cursor = cursor;
        Job = progress.StageJob(cursor);
        Layout = ParallelLayout.FromConfig(Job.Layout);
        Data = data;
        TorchEnvironment.ConfigureThreads(Job.Train.Threads, Layout.WorldSize);
        _fabric = new InProcessFabric(Layout.WorldSize, collectiveTimeout);
        _threads = new DeviceThread[Layout.WorldSize];
        _ranks = new RankTrainer[Layout.WorldSize];
        var growth = progress.Job.GrowthShapeOf(cursor.Stage);
        try
        {
            for (var r = 0; r < Layout.WorldSize; r++)
                _threads[r] = new DeviceThread($"rank{r}");
            Fan(r => _ranks[r] = new RankTrainer(Job, new RankGroups(Layout, r), _fabric.ForRank(r), data, growth));
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

    /// <summary>Builds all ranks of a job without growth stages over an already loaded dataset (shared, read-only).</summary>
    public static LocalEngine Create(JobConfig job, TokenDataset data, TimeSpan? collectiveTimeout = null)
    {
        var resolved = ResolvedJob.Resolve(job);
        if (resolved.Stages.Count > 1)
            throw new ArgumentException("a job with growth stages runs through TrainingRun, one engine per stage", nameof(job));
        return new(new JobProgress(resolved), JobCursor.Start, data, collectiveTimeout);
    }

    /// <summary>Builds all ranks of the stage <paramref name="at"/> is in, standing at <paramref name="at"/>.</summary>
    public static LocalEngine ForStage(JobProgress progress, JobCursor at, TokenDataset data, TimeSpan? collectiveTimeout = null) =>
        new(progress, at, data, collectiveTimeout);

    /// <summary>Mask value of the next step: ramps from 0 right after growth to exactly 1.</summary>
    public double NextMaskValue => Progress.MaskAt(Cursor);

    public StepSummary RunStep()
    {
        var plan = Progress.Plan(Cursor);
        var started = Stopwatch.GetTimestamp();
        var reports = Fan(r => _ranks[r].TrainStep(plan));
        (var summary, Cursor) = Progress.Complete(Cursor, plan, reports, Stopwatch.GetElapsedTime(started));
        return summary;
    }

    /// <summary>Mean token loss of the global batch starting at <paramref name="firstSample"/>, without training.</summary>
    public double EvaluateLoss(long firstSample)
    {
        var mask = NextMaskValue;
        var reports = Fan(r => _ranks[r].EvaluateLoss(firstSample, mask));
        return reports.Sum(x => x.LossSum) / reports.Sum(x => x.Tokens);
    }

    /// <summary>Sets the cursor after restoring state into the ranks (Adam's step count as the ranks hold it).</summary>
    public void SetCursor(JobCursor at)
    {
        if (at.Stage != Cursor.Stage)
            throw new ArgumentException($"this engine runs stage {Cursor.Stage}, not {at.Stage}", nameof(at));
        Cursor = at with { AdamStep = _ranks[0].Optimizer.Step };
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
                catch (Exception ex) when (ex is not CollectiveAbortedException)
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
            var root = RootCause.Of(failures, e => e is CollectiveAbortedException);
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
