using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace FlmCluster.Training.Telemetry;

/// <summary>
/// The figures FlmCluster emits, through System.Diagnostics.Metrics (meter "FlmCluster") and tracing
/// (ActivitySource "FlmCluster"). Exporters (OpenTelemetry: OTLP, Prometheus, console) subscribe by these names;
/// nothing here depends on one. Names and units follow OpenTelemetry's conventions (durations in seconds, bytes
/// "By", counts as {annotations}); attributes are <see cref="Tags"/>. docs/operations.md lists every instrument.
/// </summary>
public static class FlmTelemetry
{
    public const string Name = "FlmCluster";

    public static readonly Meter Meter = new(Name, "1.0");
    public static readonly ActivitySource Source = new(Name, "1.0");

    /// <summary>Histogram buckets for durations in seconds: a millisecond to ten minutes (steps, checkpoints, stalls).</summary>
    public static readonly IReadOnlyList<double> SecondBuckets =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600];

    private static Histogram<double> Seconds(string name, string description) =>
        Meter.CreateHistogram(name, "s", description, tags: null, advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondBuckets });

    /// <summary>Attribute names (Prometheus turns the dots into underscores: flm_job, flm_rank, …).</summary>
    public static class Tags
    {
        public const string Job = "flm.job";
        public const string Stage = "flm.stage";
        public const string Node = "flm.node";
        public const string Gpu = "flm.gpu";
        public const string Rank = "flm.rank";
        public const string Dp = "flm.dp";
        public const string Tp = "flm.tp";
        public const string Pp = "flm.pp";
        public const string Step = "flm.step";
        public const string Event = "flm.event";
        public const string Rebuild = "flm.rebuild";
        public const string Worker = "flm.worker";
        public const string Phase = "flm.phase";
        public const string Part = "flm.part";
        public const string Use = "flm.use";
        public const string Method = "flm.method";
        public const string Refusal = "flm.refusal";
    }

    /// <summary>Client calls a silo refused (tags method, refusal: internal, no_credentials, bad_credentials, needs_operator).</summary>
    public static readonly Counter<long> AccessRefused = Meter.CreateCounter<long>("flm.access.refused", "{call}", "Client calls refused by the access filter");

    // The job, at its coordinator (tags job, stage).

    /// <summary>Wall time of a committed step as the coordinator saw it (fan-out to fan-in).</summary>
    public static readonly Histogram<double> StepDuration = Seconds("flm.job.step.duration", "Step time, fan-out to fan-in");

    /// <summary>
    /// Real (wall-clock) time of the coordinator's part of a committed step; tag part: "fan_out" (the step sent to
    /// every rank and every report back — with real devices this includes their compute) or "commit" (aggregating
    /// the reports, persisting the step, its telemetry). Unlike <see cref="StepDuration"/> never on a simulation's
    /// virtual clock: on simulated devices it is all of the step's real time.
    /// </summary>
    public static readonly Histogram<double> StepControl = Seconds("flm.job.step.control", "Real time of a step's fan-out and commit");

    public static readonly Counter<long> Steps = Meter.CreateCounter<long>("flm.job.steps", "{step}", "Committed steps");

    public static readonly Counter<long> Tokens = Meter.CreateCounter<long>("flm.job.tokens", "{token}", "Tokens trained in committed steps");

    public static readonly Gauge<double> Throughput = Meter.CreateGauge<double>("flm.job.throughput", "{token}/s", "Tokens per second of the last committed step");

    public static readonly Gauge<double> Loss = Meter.CreateGauge<double>("flm.job.loss", null, "Mean token loss (nats) of the last committed step");

    public static readonly Gauge<double> GradNorm = Meter.CreateGauge<double>("flm.job.grad_norm", null, "Gradient norm before clipping, last committed step");

    public static readonly Gauge<double> LearningRate = Meter.CreateGauge<double>("flm.job.learning_rate", null, "Peak-group learning rate of the last committed step");

    public static readonly Gauge<double> ModelFlops = Meter.CreateGauge<double>("flm.job.step.model_flops", "{FLOP}", "Model FLOPs of one step (6N + attention per token)");

    public static readonly Gauge<double> Mfu = Meter.CreateGauge<double>("flm.job.mfu", "1", "Model FLOPs utilization of the last committed step against the devices' peak");

    /// <summary>The job's effective training time ratio so far: productive step time over its time since it first started.</summary>
    public static readonly Gauge<double> Ettr = Meter.CreateGauge<double>("flm.job.ettr", "1", "Effective training time ratio: productive step time over the time since the job started");

    /// <summary>Seconds of the job's life by use (tag flm.use: queued, startup, productive, redone, checkpoint_stall, growth, paused, overhead, recovery).</summary>
    public static readonly Gauge<double> TimeUsed = Meter.CreateGauge<double>("flm.job.time", "s", "Seconds of a job's life by what they were spent on");

    /// <summary>Job events by kind (flm.event): recoveries are the workers-lost, restoring, replaced, shrunk and grown-back ones.</summary>
    public static readonly Counter<long> Events = Meter.CreateCounter<long>("flm.job.events", "{event}", "Job events by kind");

    /// <summary>Recoveries that ended with a committed step.</summary>
    public static readonly Counter<long> Recoveries = Meter.CreateCounter<long>("flm.job.recoveries", "{recovery}", "Recoveries of jobs from lost workers");

    /// <summary>Seconds of each recovery phase (tag flm.phase: detect, decide, allocate, rebuild, restore, first_step, waiting).</summary>
    public static readonly Histogram<double> RecoveryPhase = Seconds("flm.job.recovery.phase.duration", "Duration of a recovery phase");

    /// <summary>Ranks found straggling (tags job, rank, worker).</summary>
    public static readonly Counter<long> Stragglers = Meter.CreateCounter<long>("flm.job.stragglers", "{rank}", "Ranks found computing far slower than their peers");

    // Recovery points, at the coordinator (tags job).

    public static readonly Counter<long> CheckpointBytes = Meter.CreateCounter<long>("flm.checkpoint.size", "By", "Bytes of committed checkpoints");

    public static readonly Histogram<double> CheckpointDuration = Seconds("flm.checkpoint.duration", "Checkpoint time, snapshot to committed manifest");

    public static readonly Histogram<double> CheckpointStall = Seconds("flm.checkpoint.stall", "Time steps stood still for a checkpoint (ranks snapshotting)");

    public static readonly Counter<long> ReplicaBytes = Meter.CreateCounter<long>("flm.replica.size", "By", "Bytes of in-memory replicas sent to peers");

    public static readonly Histogram<double> ReplicaDuration = Seconds("flm.replica.duration", "In-memory replica time, snapshot to held by every peer");

    public static readonly Histogram<double> ReplicaStall = Seconds("flm.replica.stall", "Time steps stood still for an in-memory replica");

    // One rank, at its worker (tags job, stage, node, gpu, rank, dp, tp, pp).

    public static readonly Histogram<double> RankStepDuration = Seconds("flm.rank.step.duration", "A rank's time in a step");

    public static readonly Histogram<double> RankCompute = Seconds("flm.rank.step.compute.duration", "A rank's time computing in a step");

    public static readonly Histogram<double> RankCommunication = Seconds("flm.rank.step.communication.duration", "A rank's time in collectives and sends in a step");

    public static readonly Histogram<double> RankPipelineIdle = Seconds("flm.rank.step.pipeline_idle.duration", "A rank's time waiting for its neighbouring pipeline stage in a step");

    public static readonly Gauge<double> RankLastStep = Meter.CreateGauge<double>("flm.rank.step.last_duration", "s", "A rank's time in its last step (straggler view)");

    public static readonly Histogram<double> RankIdle = Seconds("flm.rank.idle.duration", "A rank's time between steps (waiting for the coordinator)");

    public static readonly Counter<long> RankBytes = Meter.CreateCounter<long>("flm.rank.communication.size", "By", "Bytes a rank moved in collectives and transfers");

    public static readonly Gauge<long> RankParameterMemory = Meter.CreateGauge<long>("flm.rank.memory.parameters", "By", "A rank's parameters and gradients (flat buffers)");

    public static readonly Gauge<long> RankOptimizerMemory = Meter.CreateGauge<long>("flm.rank.memory.optimizer", "By", "A rank's optimizer state (fp32 master weights and moments of its shard)");

    // The scheduler (one per cluster): observed from its latest figures.

    private static SchedulerFigures _scheduler = new(0, 0, 0, false);

    /// <summary>The scheduler's activation publishes its figures after every change (Published false: not on this silo).</summary>
    public static void PublishScheduler(SchedulerFigures figures) => _scheduler = figures;

    public static readonly ObservableGauge<int> QueueLength = Meter.CreateObservableGauge("flm.scheduler.queue.length", () => Observe(f => f.Queued), "{job}", "Jobs waiting for GPUs");

    public static readonly ObservableGauge<int> AllocatedGpus = Meter.CreateObservableGauge("flm.scheduler.gpus.allocated", () => Observe(f => f.AllocatedGpus), "{gpu}", "GPUs allocated to jobs");

    public static readonly ObservableGauge<int> TotalGpus = Meter.CreateObservableGauge("flm.scheduler.gpus.total", () => Observe(f => f.TotalGpus), "{gpu}", "GPUs of active servers");

    private static IEnumerable<Measurement<int>> Observe(Func<SchedulerFigures, int> figure)
    {
        var f = _scheduler;
        return f.Published ? [new Measurement<int>(figure(f))] : [];
    }

    /// <summary>Starts an activity that began earlier (recorded when it ends, e.g. a checkpoint at its commit).</summary>
    public static Activity? StartedAt(string name, DateTimeOffset start, ActivityContext parent = default) =>
        Source.StartActivity(name, ActivityKind.Internal, parent, startTime: start);
}

/// <summary>The scheduler's queue and GPUs, as its activation last saw them.</summary>
public sealed record SchedulerFigures(int Queued, int AllocatedGpus, int TotalGpus, bool Published = true);
