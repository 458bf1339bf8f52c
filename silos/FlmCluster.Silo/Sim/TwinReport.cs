using System.Globalization;
using System.Text.Json.Serialization;
using FlmCluster.Training.Sim;

namespace FlmCluster.Silo.Sim;

/// <summary>
/// What a twin run measured (<see cref="TwinRun"/>). Times are simulated unless named real; days count from the
/// job's submission. The records serialize with snake_case names as the output of <c>flm sim --json</c>.
/// </summary>
public sealed record TwinReport(
    string Config,
    int Servers,
    int GpusPerServer,
    int Spares,
    int Seed,
    double Scale,
    string FailureModel,
    string State,
    string? Error,
    IReadOnlyList<StageReport> Stages,
    IReadOnlyList<GrowthReport> Growth,
    double CheckpointOverheadSeconds,
    double TotalDays,
    double? TotalDaysAtCardSteps,
    double Ettr,
    TimeReport Time,
    IReadOnlyList<FailureReport> Failures,
    IReadOnlyList<string> LossesNotInjected,
    SampleReport Samples,
    TwinSpeed Twin,
    ProjectionReport? Projection)
{
    [JsonIgnore]
    public bool Completed => State == "completed";

    /// <summary>The report as the bench and <c>flm sim</c> print it: markdown tables and lines.</summary>
    public void WriteText(TextWriter o)
    {
        void Line(string line) => o.WriteLine(line);
        Line($"job {State} after {Twin.RealSeconds / 60:0.0} real minutes ({Twin.CpuSeconds / 60:0.0} CPU minutes){(Error is { } e ? $": {e}" : "")}");
        if (!Completed)
            return;
        o.WriteLine();
        o.WriteLine("| stage | layout | steps | modelled step s | median step s (twin) | TFLOP/s per GPU (twin) | card | MFU | days (twin) | card days | days at the card's steps, without losses |");
        o.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var s in Stages)
            Line($"| {s.Name} | {s.Layout} | {s.Steps} | {s.ModelledStepSeconds:0.000} | {s.StepSeconds:0.000} | {s.TflopsPerGpu:0.0} | {Or(s.CardTflopsPerGpu)} | " +
                $"{s.Mfu:P1} | {s.Days:0.00} | {Or(s.CardDays)} | {Or(s.DaysAtCardSteps, "0.00")} |");
        o.WriteLine();
        foreach (var g in Growth)
            Line($"growth {g.From} → {g.To}: {g.Seconds / 60:0.0} minutes (checkpoint, load and grow, the losses before and after{(g.Failures > 0 ? $", {g.Failures} server loss(es)" : "")})");
        var t = Time;
        o.WriteLine();
        Line($"time account (simulated hours): productive {t.ProductiveSeconds / 3600:0.00}, redone {t.RedoneSeconds / 3600:0.00}, checkpoint stall {t.CheckpointStallSeconds / 3600:0.00}, " +
            $"growth {t.GrowthSeconds / 3600:0.00}, startup {t.StartupSeconds / 3600:0.00}, overhead {t.OverheadSeconds / 3600:0.00}, recovery {t.RecoverySeconds / 3600:0.00}, " +
            $"paused {t.PausedSeconds / 3600:0.00}, queued {t.QueuedSeconds / 3600:0.00}");
        Line($"accounted {t.AccountedSeconds:0.000} s of {t.WallSeconds:0.000} s from submission to completion (difference {t.AccountedSeconds - t.WallSeconds:0.000} s); ETTR {Ettr:P2}");
        Line($"whole run {TotalDays:0.00} simulated days{(TotalDaysAtCardSteps is { } d ? $", {d:0.00} at the card's steps without the losses" : "")}; " +
            $"twin speed {Twin.SimulatedDaysPerRealMinute:0.00} simulated days per real minute");
        o.WriteLine();
        Line($"server losses ({FailureModel}): {Failures.Count}");
        if (Failures.Count > 0)
        {
            o.WriteLine("| server | kind | when | days in | recoveries | detect s | decide s | allocate s | rebuild s | restore s | first step s | waiting s | redone s | cost s |");
            o.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            foreach (var f in Failures)
                Line($"| {f.Server} | {f.Kind} | {(f.DuringGrowth ? $"growth into {f.Stage}" : $"{f.Stage}, step {f.AtStep}")} | {f.AtDays:0.000} | {f.Recoveries} | " +
                    $"{f.DetectSeconds:0.0} | {f.DecideSeconds:0.0} | {f.AllocateSeconds:0.0} | {f.RebuildSeconds:0.0} | {f.RestoreSeconds:0.0} | {f.FirstStepSeconds:0.0} | " +
                    $"{f.WaitingSeconds:0.0} | {f.RedoneSeconds:0.0} | {f.CostSeconds:0.0} |");
        }
        foreach (var skipped in LossesNotInjected)
            Line($"  not injected: {skipped}");
        Line(Samples.Exact
            ? $"samples: every one of the {Samples.ExpectedSteps} steps trained its batch once, the batches back to back ({Samples.Consumed} samples of {Samples.Expected})"
            : $"samples: {Samples.Consumed} consumed of {Samples.Expected}; {string.Join("; ", Samples.Problems)}");
        if (Projection is { } p)
        {
            o.WriteLine();
            Line($"projection: {p.FailureFreeDays:0.00} days without failures + {p.ExpectedInterruptions:0.00} interruptions ({p.RatePerGpuHour:0.###e0} per GPU-hour × {p.Gpus} GPUs) " +
                $"× {p.MeanFailureCostSeconds / 60:0.0} minutes each (this run's mean) = {p.ProjectedDays:0.00} days; " +
                $"card: {p.CardStageDays:0.00} days of stages, < {p.CardTotalDaysBound} days in all");
        }
    }

    private static string Or(double? value, string format = "0.##") => value is { } v ? v.ToString(format, CultureInfo.InvariantCulture) : "—";
}

/// <summary>A stage from its first step's start to its last step's commit.</summary>
/// <param name="StepSeconds">Median step on the job's clock (modelled work plus the real control plane).</param>
/// <param name="DaysAtCardSteps">The stage's days without its losses' cost, scaled to the card's tokens (FLM-101B only).</param>
public sealed record StageReport(
    string Name,
    string Layout,
    long Steps,
    int Gpus,
    double ModelledStepSeconds,
    double StepSeconds,
    double TflopsPerGpu,
    double Mfu,
    double StartDays,
    double EndDays,
    double Days,
    double? CardTflopsPerGpu,
    double? CardDays,
    double? DaysAtCardSteps);

/// <summary>A growth transition: from the last step of one stage to the first step of the next.</summary>
public sealed record GrowthReport(string From, string To, double StartDays, double EndDays, double Seconds, int Failures);

/// <summary>Where the job's time went (the coordinator's account); the components sum to <see cref="AccountedSeconds"/>.</summary>
public sealed record TimeReport(
    double QueuedSeconds,
    double StartupSeconds,
    double ProductiveSeconds,
    double RedoneSeconds,
    double CheckpointStallSeconds,
    double GrowthSeconds,
    double PausedSeconds,
    double OverheadSeconds,
    double RecoverySeconds,
    double AccountedSeconds,
    double WallSeconds);

/// <summary>
/// One injected server loss and what it cost: the recovery phases and the redone steps accounted between it and
/// the next loss (or the end).
/// </summary>
/// <param name="Kind">"coordinator" (the server of the job's coordinator), "worker" (one of the job's), "idle" (none of the job's).</param>
/// <param name="Planned">The plan's moment (a step, an hour or a growth transition).</param>
public sealed record FailureReport(
    string Server,
    string Kind,
    string Planned,
    string Stage,
    bool DuringGrowth,
    long AtStep,
    double AtDays,
    double? RecoveredDays,
    int Recoveries,
    double DetectSeconds,
    double DecideSeconds,
    double AllocateSeconds,
    double RebuildSeconds,
    double RestoreSeconds,
    double FirstStepSeconds,
    double WaitingSeconds,
    double RecoverySeconds,
    double RedoneSeconds)
{
    /// <summary>Recovery plus redone steps: what the loss took from the run.</summary>
    public double CostSeconds => RecoverySeconds + RedoneSeconds;
}

/// <summary>The simulation's ledger of trained samples against the schedule's.</summary>
/// <param name="Exact">Every step kept trained its stage's batch once, back to back, over all its replicas.</param>
public sealed record SampleReport(long Steps, long ExpectedSteps, long Consumed, long Expected, bool Exact, IReadOnlyList<string> Problems);

/// <summary>How fast the twin ran: real time and CPU time of this process.</summary>
public sealed record TwinSpeed(double RealSeconds, double CpuSeconds, double SimulatedDaysPerRealMinute);

/// <summary>
/// Days the schedule would take at a published interruption rate: the run's failure-free days (at the card's
/// steps) plus the expected interruptions on this many GPUs over them, each costing this run's mean loss.
/// </summary>
public sealed record ProjectionReport(
    double RatePerGpuHour,
    string RateSource,
    int Gpus,
    double FailureFreeDays,
    double ExpectedInterruptions,
    double MeanFailureCostSeconds,
    double ProjectedDays,
    double CardStageDays,
    double CardTotalDaysBound)
{
    /// <summary>Llama 3: 466 job interruptions in 54 days on 16,384 GPUs (arXiv 2407.21783, section 3.3.4).</summary>
    public const double Llama3RatePerGpuHour = 466.0 / (54 * 24 * 16_384);

    public const string Llama3Source = "Llama 3 (arXiv 2407.21783, section 3.3.4): 466 interruptions in 54 days on 16,384 GPUs";

    public static ProjectionReport? Of(double failureFreeDays, IReadOnlyList<FailureReport> failures, int gpus, double ratePerGpuHour, string source)
    {
        if (failures.Count == 0)
            return null;
        var mean = failures.Average(f => f.CostSeconds);
        var expected = ratePerGpuHour * gpus * failureFreeDays * 24;
        return new ProjectionReport(ratePerGpuHour, source, gpus, failureFreeDays, expected, mean, failureFreeDays + expected * mean / 86400,
            PublishedSchedule.StageDays, PublishedSchedule.TotalDaysBound);
    }
}
