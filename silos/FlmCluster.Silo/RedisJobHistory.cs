using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.History;
using StackExchange.Redis;

namespace FlmCluster.Silo;

/// <summary>
/// Job histories in Redis, beside the cluster's grain state (Redis clustering): per job a sorted set of steps
/// scored by step number (a redone step replaces its record in the same transaction) and a list of events.
/// Reads take a range of either, so a page costs its size.
/// </summary>
public sealed class RedisJobHistory(ConfigurationOptions options, string serviceId) : IJobHistoryStore, IDisposable
{
    // A Redis that is away at the first append does not fail the connection for good: it reconnects when Redis is back.
    private readonly Lazy<Task<ConnectionMultiplexer>> _redis = new(() =>
    {
        var retrying = options.Clone();
        retrying.AbortOnConnectFail = false;
        return ConnectionMultiplexer.ConnectAsync(retrying);
    });

    public async Task Append(string jobId, IReadOnlyList<StepRecord> steps, IReadOnlyList<JobEvent> events)
    {
        var db = (await _redis.Value).GetDatabase();
        var transaction = db.CreateTransaction();
        var writes = new List<Task>();
        foreach (var step in steps)
        {
            writes.Add(transaction.SortedSetRemoveRangeByScoreAsync(StepsKey(jobId), step.Point.Step, step.Point.Step));
            writes.Add(transaction.SortedSetAddAsync(StepsKey(jobId), HistoryJson.Write(step), step.Point.Step));
        }
        if (events.Count > 0)
            writes.Add(transaction.ListRightPushAsync(EventsKey(jobId), events.Select(e => (RedisValue)HistoryJson.Write(e)).ToArray()));
        if (!await transaction.ExecuteAsync())
            throw new InvalidOperationException($"Redis did not append the history of job {jobId}");
        await Task.WhenAll(writes);
    }

    public async Task<JobHistory> Read(string jobId, long sinceStep, int sinceEvent, int max)
    {
        var db = (await _redis.Value).GetDatabase();
        var steps = await db.SortedSetRangeByScoreAsync(StepsKey(jobId), sinceStep, double.PositiveInfinity, take: max);
        var events = await db.ListRangeAsync(EventsKey(jobId), sinceEvent, (long)sinceEvent + max - 1);
        return HistoryJson.Page(steps.Select(s => HistoryJson.Read<StepRecord>(s!)), sinceStep,
            events.Select(e => HistoryJson.Read<JobEvent>(e!)).ToList(), sinceEvent, max);
    }

    private RedisKey StepsKey(string jobId) => $"flm:{serviceId}:history:{jobId}:steps";
    private RedisKey EventsKey(string jobId) => $"flm:{serviceId}:history:{jobId}:events";

    public void Dispose()
    {
        if (_redis.IsValueCreated && _redis.Value.IsCompletedSuccessfully)
            _redis.Value.Result.Dispose();
    }
}
