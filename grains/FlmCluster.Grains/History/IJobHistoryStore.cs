using System.Text.Json;
using System.Text.Json.Serialization;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Grains.History;

/// <summary>
/// Where jobs' histories live: an append-only record per job of every committed step and every event, durable
/// with the job's state (the same machine folder or Redis as grain storage), so a coordinator on another silo
/// reads what the one before it appended. The coordinator appends before it persists its state; a step redone
/// after a restore is appended again, and reads return the latest record of each step.
/// </summary>
public interface IJobHistoryStore
{
    /// <summary>Appends durably (returns once stored).</summary>
    Task Append(string jobId, IReadOnlyList<StepRecord> steps, IReadOnlyList<JobEvent> events);

    /// <summary>Steps numbered <paramref name="sinceStep"/> and later (latest record each, ascending) and events from index <paramref name="sinceEvent"/>, at most <paramref name="max"/> of each.</summary>
    Task<JobHistory> Read(string jobId, long sinceStep, int sinceEvent, int max);
}

/// <summary>How history records are written: JSON, one record per line or list entry.</summary>
public static class HistoryJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static string Write<T>(T value) => JsonSerializer.Serialize(value, Options);

    public static T Read<T>(string json) => JsonSerializer.Deserialize<T>(json, Options)
        ?? throw new InvalidDataException($"history record is empty: {json}");

    /// <summary>A page from steps (any order, repeats allowed: the last of a step wins) and events already cut to the page.</summary>
    public static JobHistory Page(IEnumerable<StepRecord> steps, long sinceStep, IReadOnlyList<JobEvent> events, int sinceEvent, int max)
    {
        var latest = new SortedDictionary<long, StepRecord>();
        foreach (var s in steps)
            if (s.Point.Step >= sinceStep)
                latest[s.Point.Step] = s;
        var page = latest.Values.Take(max).ToList();
        return new JobHistory(page, events, page.Count > 0 ? page[^1].Point.Step + 1 : sinceStep, sinceEvent + events.Count);
    }
}
