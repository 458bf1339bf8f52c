using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Sim;
using FlmCluster.Training;
using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Sim;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Silo.Sim;

/// <summary>What a twin run trains on what.</summary>
/// <param name="Job">A job with growth stages (e.g. the <c>flm-101b</c> preset); its device becomes simulated GPUs.</param>
/// <param name="Scale">A fraction of every stage's steps (at least <see cref="TwinRun.MinStageSteps"/> each).</param>
/// <param name="StorageDir">Where the run's checkpoints and silo state go (a new folder inside it, deleted afterwards).</param>
/// <param name="ProjectionRatePerGpuHour">The published interruption rate the projection uses.</param>
public sealed record TwinRunOptions(
    JobConfig Job,
    int Servers,
    int GpusPerServer,
    int Spares,
    FailurePlan Failures,
    int Seed,
    double Scale,
    string StorageDir,
    double ProjectionRatePerGpuHour = ProjectionReport.Llama3RatePerGpuHour,
    string ProjectionRateSource = ProjectionReport.Llama3Source);

/// <summary>
/// A digital twin of a growth schedule: real silos in this process, simulated GPUs on each, the real coordinator,
/// scheduler, checkpoints, replicas and recovery policy, on the virtual clock. Servers die as the failure plan says
/// (a silo killed at once) and come back repaired; spare servers take their ranks meanwhile. The report has per
/// stage the throughput and days against FLM-101B's card, the growth transitions, every loss and what it cost,
/// where the job's time went (ETTR), the sample accounting, how fast the twin ran, and a projection at a published
/// interruption rate.
/// </summary>
public sealed class TwinRun
{
    /// <summary>Fewest steps a scaled stage keeps: enough for replicas and checkpoints to matter.</summary>
    public const long MinStageSteps = 100;

    private const int CheckpointInterval = 500, ReplicaInterval = 50;

    private readonly TwinRunOptions _options;
    private readonly JobConfig _job;
    private readonly IReadOnlyList<ResolvedStage> _stages;
    private readonly List<long> _stageEnds;

    private TwinRun(TwinRunOptions options, JobConfig job, IReadOnlyList<ResolvedStage> stages)
    {
        _options = options;
        _job = job;
        _stages = stages;
        _stageEnds = [.. stages.Select((_, i) => stages.Take(i + 1).Sum(s => s.Job.Train.Steps))];
    }

    public IReadOnlyList<ResolvedStage> Stages => _stages;

    public long TotalSteps => _stageEnds[^1];

    /// <summary>
    /// Checks everything before anything starts: the cluster's shape, the scale, that every stage's layout fits the
    /// servers, and that every planned loss can happen in this schedule. Problems are <see cref="FlmUserException"/>s.
    /// </summary>
    public static TwinRun Prepare(TwinRunOptions options)
    {
        if (options.Servers < 1)
            throw new FlmUserException($"--servers {options.Servers} is not a cluster; give 1 or more servers");
        if (options.GpusPerServer is < 1 or > 64)
            throw new FlmUserException($"--gpus-per-server {options.GpusPerServer} is out of range; give 1 … 64");
        if (options.Spares < 0)
            throw new FlmUserException($"--spares {options.Spares} is negative; give 0 or more spare servers");
        if (!double.IsFinite(options.Scale) || options.Scale <= 0 || options.Scale > 1)
            throw new FlmUserException($"--scale {options.Scale} is not a fraction of the schedule; give a number in (0, 1]");
        if (!double.IsFinite(options.ProjectionRatePerGpuHour) || options.ProjectionRatePerGpuHour <= 0)
            throw new FlmUserException($"the projection's rate {options.ProjectionRatePerGpuHour} is not a rate; give interruptions per GPU-hour above 0");
        if (options.Job.Stages is not { Count: > 0 })
            throw new FlmUserException($"config '{options.Job.Name}' has no growth stages; give a schedule such as flm-101b");
        var job = JobValidator.Validate(options.Job with
        {
            Train = options.Job.Train with { Device = JobValidator.SimDevice },
            Stages = [.. options.Job.Stages.Select(s => s with { Steps = Math.Max(MinStageSteps, (long)Math.Round(s.Steps * options.Scale)) })],
            Checkpoint = new CheckpointConfig { Dir = options.StorageDir, Interval = CheckpointInterval, MemoryInterval = ReplicaInterval }, // a run's own folder in it, once started
        });
        var stages = GrowthSchedule.Resolve(job);
        var gpus = options.Servers * options.GpusPerServer;
        foreach (var stage in stages)
        {
            var world = ParallelLayout.FromConfig(stage.Job.Layout).WorldSize;
            if (world > gpus)
                throw new FlmUserException($"stage {stage.Name}'s layout {ParallelLayout.FromConfig(stage.Job.Layout)} needs {world} GPUs, " +
                    $"{options.Servers} servers × {options.GpusPerServer} have {gpus}; give --servers {(world + options.GpusPerServer - 1) / options.GpusPerServer} or more");
        }
        var run = new TwinRun(options, job, stages);
        foreach (var loss in options.Failures.Pending)
            run.Check(loss);
        return run;
    }

    private void Check(PlannedLoss loss)
    {
        if (loss.AtStep is { } step && step >= TotalSteps)
            throw new FlmUserException($"a server loss at step {step} is past the schedule's last step {TotalSteps - 1}; give a step below {TotalSteps}");
        if (loss.AtGrowth is { } to && _stages.Skip(1).All(s => s.Name != to))
            throw new FlmUserException($"a server loss at_growth '{to}' names no stage grown into; give one of {string.Join(", ", _stages.Skip(1).Select(s => s.Name))}");
        var nodes = _options.Servers + _options.Spares;
        if (loss.Server is not (PlannedLoss.Random or PlannedLoss.Coordinator) && !IsNode(loss.Server, nodes))
            throw new FlmUserException($"server '{loss.Server}' is not one of the twin's; give node0 … node{nodes - 1}, \"coordinator\" or \"random\"");
    }

    private static bool IsNode(string name, int nodes) =>
        name.StartsWith("node", StringComparison.Ordinal) && int.TryParse(name.AsSpan(4), System.Globalization.NumberStyles.None, null, out var i) && i < nodes
        && name == $"node{i}";

    /// <summary>
    /// Starts the cluster (<paramref name="startCluster"/>; silos in this process by default), runs the schedule to
    /// its end with the planned losses, and reports.
    /// </summary>
    public async Task<TwinReport> RunAsync(Action<string>? progress = null, CancellationToken cancel = default,
        Func<TwinClusterSpec, Task<ITwinCluster>>? startCluster = null)
    {
        var dir = Directory.CreateDirectory(Path.Combine(_options.StorageDir, $"flm-sim-{Guid.NewGuid():N}")).FullName;
        var hardware = SimCluster.Default with { Hardware = SimCluster.Default.Hardware with { GpusPerServer = _options.GpusPerServer } };
        try
        {
            var job = _job with { Checkpoint = _job.Checkpoint with { Dir = Path.Combine(dir, "checkpoints") } };
            var started = Stopwatch.StartNew();
            await using var cluster = await (startCluster ?? InProcessTwinCluster.StartAsync)(new TwinClusterSpec(_options.Servers + _options.Spares, Path.Combine(dir, "state"), hardware));
            (progress ?? (_ => { }))($"{cluster.Nodes.Count} silos up in {started.Elapsed.TotalSeconds:0.0} s");
            return await Run(job, cluster, hardware, progress ?? (_ => { }), cancel);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private async Task<TwinReport> Run(JobConfig job, ITwinCluster cluster, SimCluster hardware, Action<string> progress, CancellationToken cancel)
    {
        var random = new Random(_options.Seed);
        var plan = _options.Failures;
        var real = Stopwatch.StartNew();
        var cpu = cluster.CpuTime();
        var id = await cluster.Grains.GetGrain<IClusterSchedulerGrain>("cluster").Submit(new JobSubmission(JobConfigLoader.ToJson(job)));
        progress($"submitted {id}: {string.Join(" + ", _stages.Select(s => $"{s.Job.Train.Steps} ({s.Name})"))} steps on {_options.Servers} × {_options.GpusPerServer} " +
            $"simulated GPUs + {_options.Spares} spare servers; {plan.Description}");
        var injected = new List<Injected>();
        var notInjected = new List<string>();
        var down = new List<(string Node, DateTime Due)>();
        var repairs = new List<Task>();
        var stepSeconds = _stages.ToDictionary(s => s.Name, _ => new List<double>());
        var seen = -1L;
        JobStatus status;
        var submitted = cluster.Clock.GetUtcNow().UtcDateTime; // for progress lines; the report reads the job's own time
        while (true)
        {
            cancel.ThrowIfCancellationRequested();
            // Repairs first (with every server down, nothing answers for the job until one is back), without waiting
            // for the silo to come up: the job goes on meanwhile, and the next losses must land at their steps.
            var now = cluster.Clock.GetUtcNow().UtcDateTime;
            foreach (var repaired in down.Where(d => now >= d.Due).ToList())
            {
                down.Remove(repaired);
                var at = (now - submitted).TotalDays;
                repairs.Add(cluster.StartAsync(repaired.Node).ContinueWith(
                    started => progress($"{repaired.Node} repaired at {at:0.000} simulated days{(started.IsFaulted ? $", but its silo did not start: {started.Exception!.InnerException!.Message}" : "")}"),
                    TaskScheduler.Default));
            }
            try
            {
                // Any silo that is up answers for the cluster.
                // Briefly: a call to a coordinator on a server just killed waits for a response that will not come.
                status = await cluster.Grains.GetGrain<IJobCoordinatorGrain>(id).GetStatus().WaitAsync(TimeSpan.FromSeconds(5), cancel);
            }
            catch (Exception ex) when (ex is OrleansException or TimeoutException or NoSiloRunningException)
            {
                await Task.Delay(20, cancel);
                continue; // the coordinator is moving, or its servers are all down
            }
            // Step times from the status's recent steps: reading a 192-rank history of 66,400 steps back is slower than the run.
            foreach (var point in status.Recent.Where(p => p.Step > seen))
                stepSeconds[point.Stage].Add(point.StepMs / 1000);
            seen = status.Recent.Count > 0 ? status.Recent[^1].Step : seen;
            if (status.State.IsFinal())
                break;
            now = cluster.Clock.GetUtcNow().UtcDateTime;
            if (plan.Next is { } loss && Due(loss, status, now) && status.Workers.Count > 0 && status.Time is { } time)
            {
                plan.Advance();
                var node = Pick(loss.Server, status, cluster, random);
                if (node is null || !cluster.IsRunning(node))
                    notInjected.Add($"{loss.Server} at {loss.When}: {(node is null ? "no such server now" : $"{node} is down")}");
                else
                {
                    var coordinator = status.Coordinator is { } silo ? cluster.NodeOfSilo(silo) : null;
                    var kind = node == coordinator ? "coordinator" : status.Workers.Any(w => w.StartsWith(node + "/", StringComparison.Ordinal)) ? "worker" : "idle";
                    await cluster.KillAsync(node);
                    down.Add((node, now.AddHours(loss.RepairHours)));
                    var duringGrowth = status.State == JobPhase.Starting && _stageEnds.Contains(status.Step) && status.Step < TotalSteps;
                    var stage = duringGrowth ? _stages[_stageEnds.IndexOf(status.Step) + 1].Name : status.Stage;
                    injected.Add(new Injected(node, kind, loss.When, stage, duringGrowth, status.Step, now - status.SubmittedAt, time));
                    progress($"killed {node} ({kind}) at step {status.Step}, {(now - status.SubmittedAt).TotalDays:0.000} simulated days in");
                }
            }
            await Task.Delay(20, cancel);
        }
        real.Stop();
        await Task.WhenAll(repairs);
        var cpuSeconds = (cluster.CpuTime() - cpu).TotalSeconds;
        foreach (var loss in Remaining(plan))
            notInjected.Add($"{loss.Server} at {loss.When}: the job had ended");
        var coordinatorGrain = cluster.Grains.GetGrain<IJobCoordinatorGrain>(id);
        var events = await Events(coordinatorGrain);
        var stageEnds = new List<DateTime>();
        foreach (var end in status.State == JobPhase.Completed ? _stageEnds : [])
            stageEnds.Add((await Patiently(() => coordinatorGrain.GetHistory(end - 1, int.MaxValue, 1))).Steps.Single().At);
        return Report(status, stepSeconds, stageEnds, events, injected, notInjected, hardware, cluster.Samples(id), cluster.Clock, real.Elapsed.TotalSeconds, cpuSeconds);
    }

    private IEnumerable<PlannedLoss> Remaining(FailurePlan plan)
    {
        // A rate model always has a next arrival; only a schedule's leftovers are reported.
        if (plan.RatePerHour > 0)
            yield break;
        while (plan.Next is { } loss)
        {
            plan.Advance();
            yield return loss;
        }
    }

    private bool Due(PlannedLoss loss, JobStatus status, DateTime now)
    {
        if (loss.AtStep is { } step)
            return status.Step >= step;
        if (loss.AtHours is { } hours)
            return (now - status.SubmittedAt).TotalHours >= hours;
        // During the transition into the stage: its predecessor's steps are done and the job is starting the next
        // (should the transition pass between two looks, the loss lands just after it).
        var end = _stageEnds[_stages.ToList().FindIndex(s => s.Name == loss.AtGrowth) - 1];
        return status.Step > end || (status.Step == end && status.State == JobPhase.Starting);
    }

    private static string? Pick(string server, JobStatus status, ITwinCluster cluster, Random random) => server switch
    {
        PlannedLoss.Coordinator => status.Coordinator is { } silo ? cluster.NodeOfSilo(silo) : null,
        PlannedLoss.Random => status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().OrderBy(n => n, StringComparer.Ordinal).ToList() is { Count: > 0 } nodes
            ? nodes[random.Next(nodes.Count)]
            : null,
        _ => server,
    };

    /// <summary>The job's events, page by page (without steps).</summary>
    private static async Task<List<JobEvent>> Events(IJobCoordinatorGrain coordinator)
    {
        var events = new List<JobEvent>();
        while (true)
        {
            var page = await Patiently(() => coordinator.GetHistory(long.MaxValue, events.Count, JobHistory.MaxPage));
            if (page.Events.Count == 0)
                return events;
            events.AddRange(page.Events);
        }
    }

    /// <summary>
    /// A history read, again while it times out: the first read of a long job indexes its whole step file, which
    /// under load outlasts a grain call's timeout; the read goes on and a later one finds the index built.
    /// </summary>
    private static async Task<JobHistory> Patiently(Func<Task<JobHistory>> read)
    {
        for (var attempt = 1; ; attempt++)
            try
            {
                return await read();
            }
            catch (TimeoutException) when (attempt < 40)
            {
            }
    }

    private TwinReport Report(JobStatus status, Dictionary<string, List<double>> stepSeconds, List<DateTime> stageEnds, List<JobEvent> events,
        List<Injected> injected, List<string> notInjected,
        SimCluster hardware, IReadOnlyDictionary<long, StepSamples> ledger, VirtualClock clock, double realSeconds, double cpuSeconds)
    {
        var o = _options;
        var samples = Samples(ledger);
        var completedEvent = events.LastOrDefault(e => e.Kind == "completed");
        var end = completedEvent?.At ?? clock.GetUtcNow().UtcDateTime;
        var wall = (end - status.SubmittedAt).TotalSeconds;
        var t = status.Time ?? new TimeAccount(0, 0, 0, 0, 0, 0, 0, 0, new RecoveryTime(0, 0, 0, 0, 0, 0, 0, 0));
        var time = new TimeReport(t.Queued, t.Startup, t.Productive, t.Redone, t.CheckpointStall, t.Growth, t.Paused, t.Overhead, t.Recovery.Total, t.Accounted, wall);
        var twin = new TwinSpeed(realSeconds, cpuSeconds, wall / 86400 / (realSeconds / 60));
        var failures = Failures(injected, t, events, status.SubmittedAt);
        string State() => Text(status.State);
        if (status.State != JobPhase.Completed)
            return new TwinReport(_job.Name, o.Servers, o.GpusPerServer, o.Spares, o.Seed, o.Scale, o.Failures.Description, State(), status.Error,
                [], [], t.CheckpointStall, wall / 86400, null, t.Ettr, time, failures, notInjected, samples, twin, null);

        double Days(DateTime at) => (at - status.SubmittedAt).TotalDays;
        var card = _job.Name == "flm-101b" && _stages.Select(s => s.Name).SequenceEqual(PublishedSchedule.Flm101b.Select(c => c.Name));
        var stageReports = new List<StageReport>();
        var growth = new List<GrowthReport>();
        var failureFree = 0.0;
        for (var i = 0; i < _stages.Count; i++)
        {
            var s = _stages[i];
            var layout = ParallelLayout.FromConfig(s.Job.Layout);
            var modelled = StepCostModel.For(s.Job.Model, layout, s.Job.Train.GlobalBatch, s.Job.Train.Precision, hardware).Seconds;
            var median = Median(stepSeconds[s.Name]);
            var tflops = ModelFlops.TrainingStep(s.Job.Model, s.Job.Train.GlobalBatch) / median / layout.WorldSize / 1e12;
            // A stage starts where the job started or the first growth into it ended, and ends at its last step's (last) commit.
            var from = Days(i == 0 ? events.First(e => e.Kind == "started").At
                : events.First(e => e.Kind == "growth" && e.Message.StartsWith($"{_stages[i - 1].Name} → {s.Name} at step", StringComparison.Ordinal)).At);
            var to = Days(stageEnds[i]);
            var published = card ? PublishedSchedule.Flm101b[i] : null;
            var factor = published is null ? 1 : published.Tokens / ((double)s.Job.Train.Steps * s.Job.Train.GlobalBatch * s.Job.Model.SeqLen);
            // Losses are taken out before scaling: a short stage's loss would otherwise count as often as the stage is scaled up.
            // A loss counts where its cost fell: in the stage when it struck after the growth into it was done (a
            // loss while the grown stage's ranks were starting is one), in the transition when before.
            var lossesInStage = failures.Where(f => f.AtDays >= from && f.AtDays <= to).Sum(f => f.CostSeconds) / 86400;
            stageReports.Add(new StageReport(s.Name, layout.ToString(), s.Job.Train.Steps, layout.WorldSize, modelled, median, tflops,
                tflops * 1e12 / hardware.Hardware.PeakFlops, from, to, to - from, published?.TflopsPerGpu, published?.Days,
                published is null ? null : (to - from - lossesInStage) * factor));
            if (i == 0)
                failureFree += from; // submission to the first step
            failureFree += (to - from - lossesInStage) * factor;
            if (i > 0)
            {
                var previous = stageReports[i - 1];
                var during = failures.Where(f => f.AtDays >= previous.EndDays && f.AtDays < from).ToList();
                growth.Add(new GrowthReport(previous.Name, s.Name, previous.EndDays, from, (from - previous.EndDays) * 86400, during.Count));
                failureFree += from - previous.EndDays - during.Sum(f => f.CostSeconds) / 86400;
            }
        }
        failureFree += Days(end) - stageReports[^1].EndDays; // the final checkpoint
        double? atCardSteps = card ? failureFree : null;
        var projection = ProjectionReport.Of(failureFree, failures, o.Servers * o.GpusPerServer, o.ProjectionRatePerGpuHour, o.ProjectionRateSource);
        return new TwinReport(_job.Name, o.Servers, o.GpusPerServer, o.Spares, o.Seed, o.Scale, o.Failures.Description, State(), status.Error,
            stageReports, growth, t.CheckpointStall, wall / 86400, atCardSteps, t.Ettr, time, failures, notInjected, samples, twin, projection);
    }

    private static string Text(JobPhase phase) => phase.ToString().ToLowerInvariant();

    /// <summary>Each loss's share of the job's time account: what accrued from it to the next loss (or the end).</summary>
    private static List<FailureReport> Failures(List<Injected> injected, TimeAccount end, List<JobEvent> events, DateTime submitted)
    {
        var recovered = events.Where(e => e.Kind == "recovered").ToList();
        var reports = new List<FailureReport>();
        for (var i = 0; i < injected.Count; i++)
        {
            var (a, b) = (injected[i].Time, i + 1 < injected.Count ? injected[i + 1].Time : end);
            var (ra, rb) = (a.Recovery, b.Recovery);
            var count = rb.Count - ra.Count;
            DateTime? back = count > 0 && rb.Count <= recovered.Count ? recovered[rb.Count - 1].At : null;
            var f = injected[i];
            reports.Add(new FailureReport(f.Node, f.Kind, f.Planned, f.Stage, f.DuringGrowth, f.Step, f.At.TotalDays, back is { } at ? (at - submitted).TotalDays : null, count,
                rb.Detect - ra.Detect, rb.Decide - ra.Decide, rb.Allocate - ra.Allocate, rb.Rebuild - ra.Rebuild, rb.Restore - ra.Restore, rb.FirstStep - ra.FirstStep,
                rb.Waiting - ra.Waiting, rb.Total - ra.Total, b.Redone - a.Redone));
        }
        return reports;
    }

    /// <summary>The steps kept trained contiguous batches of their stage's size, each split over all its replicas.</summary>
    private SampleReport Samples(IReadOnlyDictionary<long, StepSamples> ledger)
    {
        var problems = new List<string>();
        var (step, next, expected) = (0L, 0L, 0L);
        foreach (var stage in _stages)
            for (var i = 0L; i < stage.Job.Train.Steps; i++, step++)
            {
                expected += stage.Job.Train.GlobalBatch;
                if (!ledger.TryGetValue(step, out var s))
                {
                    problems.Add($"step {step} is missing");
                    continue;
                }
                if (s.Replicas != s.DataParallel || s.First != next || s.Samples != stage.Job.Train.GlobalBatch || s.End - s.First != s.Samples)
                    problems.Add($"step {step}: {s}");
                next = s.End;
            }
        if (ledger.Count != step)
            problems.Add($"{ledger.Count} steps recorded, {step} expected");
        return new SampleReport(ledger.Count, step, ledger.Values.Sum(s => s.Samples), expected, problems.Count == 0, [.. problems.Take(5)]);
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private sealed record Injected(string Node, string Kind, string Planned, string Stage, bool DuringGrowth, long Step, TimeSpan At, TimeAccount Time);
}
