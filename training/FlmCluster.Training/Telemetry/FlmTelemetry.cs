using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace FlmCluster.Training.Telemetry;

/// <summary>
/// The figures FlmCluster emits, through System.Diagnostics.Metrics (meter "FlmCluster") and tracing
/// (ActivitySource "FlmCluster"). Exporters (OpenTelemetry, Prometheus) subscribe by these names; nothing
/// here depends on one.
/// </summary>
public static class FlmTelemetry
{
    public const string Name = "FlmCluster";

    public static readonly Meter Meter = new(Name, "1.0");
    public static readonly ActivitySource Source = new(Name, "1.0");

    /// <summary>Wall time of a committed step as the coordinator saw it (fan-out to fan-in), ms; tag job.</summary>
    public static readonly Histogram<double> StepDuration = Meter.CreateHistogram<double>("flm.job.step.duration", "ms", "Step time, fan-out to fan-in");

    /// <summary>
    /// Real (wall-clock) time of the coordinator's part of a committed step, ms; tags job and part: "fan_out" (the
    /// step sent to every rank and every report back — with real devices this includes their compute) and
    /// "commit" (aggregating the reports and persisting the step). Unlike <see cref="StepDuration"/> never on a
    /// simulation's virtual clock.
    /// </summary>
    public static readonly Histogram<double> StepControl = Meter.CreateHistogram<double>("flm.job.step.control", "ms", "Real time of a step's fan-out and commit");

    /// <summary>Mean token loss of a committed step; tag job.</summary>
    public static readonly Histogram<double> Loss = Meter.CreateHistogram<double>("flm.job.loss", null, "Training loss per step");

    /// <summary>Tokens per second of a committed step; tag job.</summary>
    public static readonly Histogram<double> TokensPerSecond = Meter.CreateHistogram<double>("flm.job.tokens_per_second", "tokens/s", "Throughput per step");

    /// <summary>Tokens trained; tag job.</summary>
    public static readonly Counter<long> Tokens = Meter.CreateCounter<long>("flm.job.tokens", "tokens", "Tokens trained");

    /// <summary>Per worker and step: time computing, ms; tags job, rank.</summary>
    public static readonly Histogram<double> WorkerCompute = Meter.CreateHistogram<double>("flm.worker.compute", "ms", "Worker time computing per step");

    /// <summary>Per worker and step: time in collectives and point-to-point transfers (including waiting for peers), ms.</summary>
    public static readonly Histogram<double> WorkerCommunication = Meter.CreateHistogram<double>("flm.worker.communication", "ms", "Worker time communicating per step");

    /// <summary>Per worker: time between the end of one step and the start of the next (waiting for the coordinator), ms.</summary>
    public static readonly Histogram<double> WorkerIdle = Meter.CreateHistogram<double>("flm.worker.idle", "ms", "Worker idle time between steps");

    /// <summary>Bytes a worker moved per step.</summary>
    public static readonly Counter<long> WorkerBytes = Meter.CreateCounter<long>("flm.worker.communication.bytes", "By", "Bytes moved by a worker");

    /// <summary>Jobs waiting in the scheduler's queue (added and removed as jobs queue and start).</summary>
    public static readonly UpDownCounter<int> QueueLength = Meter.CreateUpDownCounter<int>("flm.scheduler.queue.length", "jobs", "Jobs waiting for GPUs");

    /// <summary>GPUs allocated to jobs.</summary>
    public static readonly UpDownCounter<int> AllocatedGpus = Meter.CreateUpDownCounter<int>("flm.scheduler.gpus.allocated", "gpus", "GPUs allocated to jobs");

    /// <summary>Recoveries that ended with a committed step.</summary>
    public static readonly Counter<long> Recoveries = Meter.CreateCounter<long>("flm.job.recoveries", "{recovery}", "Recoveries of jobs from lost workers");

    /// <summary>Seconds of each recovery phase (tag phase: detect, decide, allocate, rebuild, restore, first_step, waiting).</summary>
    public static readonly Histogram<double> RecoveryPhase = Meter.CreateHistogram<double>("flm.job.recovery.phase.duration", "s", "Duration of a recovery phase");

    /// <summary>Ranks found straggling (tags job, rank, worker).</summary>
    public static readonly Counter<long> Stragglers = Meter.CreateCounter<long>("flm.job.stragglers", "{rank}", "Ranks found computing far slower than their peers");
}
