using System.Text.Json;
using System.Text.Json.Serialization;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Cli;

/// <summary>
/// What --json prints: records with stable snake_case field names (docs/operations.md lists them). Each
/// command prints one JSON document on standard output; 'flm logs --json' prints one record per line.
/// </summary>
public static class JsonOutput
{
    private static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    private static readonly JsonSerializerOptions Lines = new(Options) { WriteIndented = false };

    public static void Print<T>(T value) => Console.WriteLine(JsonSerializer.Serialize(value, Options));

    public static void PrintLine<T>(T value) => Console.WriteLine(JsonSerializer.Serialize(value, Lines));

    public sealed record JobJson(string Job, string Name, string State, long Step, long TotalSteps, string Stage, string Layout, int Priority,
        DateTime SubmittedAt, double? Loss, double? TokensPerSecond, string? Error);

    public sealed record RankJson(int Rank, string Worker);

    public sealed record EventJson(DateTime At, string Kind, string Message);

    public sealed record StatusJson(string Job, string Name, string State, long Step, long TotalSteps, string Stage, string Layout, int Priority,
        DateTime SubmittedAt, double? Loss, double? TokensPerSecond, string? Error, IReadOnlyList<RankJson> Ranks, string? CheckpointDir,
        long? LastCheckpointStep, long? LastReplicaStep, IReadOnlyList<EventJson> RecentEvents);

    public sealed record GpuJson(string Gpu, string Worker, string Device, string? Job, int? Rank, string? State, string? Detail);

    public sealed record NodeJson(string Node, string Address, string Status, IReadOnlyList<GpuJson> Gpus);

    public sealed record NodesJson(IReadOnlyList<NodeJson> Nodes, int TotalGpus, int FreeGpus, IReadOnlyList<string> Queue);

    public sealed record CheckpointJson(string Checkpoint, string Directory, long Step, bool Valid, string? Layout, long? Bytes, string? Problem);

    public sealed record RankTimeJson(int Rank, string Worker, double StepMs, double ComputeMs, double CommunicationMs, double PipelineIdleMs);

    /// <summary>One line of 'flm logs --json': type "step" or "event".</summary>
    public sealed record LogJson(string Type, DateTime At, long? Step = null, string? Stage = null, double? Loss = null, long? Tokens = null,
        double? TokensPerSecond = null, double? StepMs = null, double? GradNorm = null, double? Lr = null, bool? Skipped = null, double? ModelFlops = null,
        double? Mfu = null, string? Layout = null, IReadOnlyList<RankTimeJson>? Ranks = null, long? Index = null, string? Kind = null, string? Message = null);

    public static JobJson Of(JobStatus s)
    {
        var last = s.Recent.Count > 0 ? s.Recent[^1] : null;
        return new JobJson(s.JobId, s.Name, Text.Of(s.State), s.Step, s.TotalSteps, s.Stage, s.Layout, s.Priority, s.SubmittedAt, last?.Loss,
            last?.TokensPerSecond, s.Error);
    }

    public static StatusJson StatusOf(JobStatus s)
    {
        var j = Of(s);
        return new StatusJson(j.Job, j.Name, j.State, j.Step, j.TotalSteps, j.Stage, j.Layout, j.Priority, j.SubmittedAt, j.Loss, j.TokensPerSecond, j.Error,
            s.Workers.Select((w, rank) => new RankJson(rank, w)).ToList(), s.CheckpointDir, s.LastCheckpointStep, s.LastReplicaStep,
            s.Events.Select(e => new EventJson(e.At, e.Kind, e.Message)).ToList());
    }

    public static LogJson StepOf(StepRecord r)
    {
        var p = r.Point;
        return new LogJson("step", r.At, p.Step, p.Stage, p.Loss, p.Tokens, p.TokensPerSecond, p.StepMs, p.GradNorm, p.Lr, p.Skipped, r.ModelFlops, r.Mfu,
            r.Layout, r.Ranks.Select(x => new RankTimeJson(x.Rank, x.Worker, x.StepMs, x.ComputeMs, x.CommunicationMs, x.PipelineIdleMs)).ToList());
    }

    public static LogJson EventOf(JobEvent e, long index) => new("event", e.At, Index: index, Kind: e.Kind, Message: e.Message);
}
