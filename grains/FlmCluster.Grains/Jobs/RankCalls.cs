using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Placement;
using FlmCluster.Grains.Sim;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Jobs;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Calls to the workers of a job's ranks: all at once, with the failure that matters reported. Every call carries
/// the job's time of issue (<see cref="OperationTime"/>), so that simulated ranks model one operation once.
/// </summary>
public sealed class RankCalls(JobStateMachine job, IGrainFactory grains, ILogger log)
{
    public IGpuWorkerGrain Worker(string key) => grains.GetGrain<IGpuWorkerGrain>(key);

    /// <summary>
    /// Calls every rank's worker at once for work that uses collectives. When one fails, the others are told to
    /// stop (they would wait for the failed peer until the collective timeout) and the root cause is thrown — a
    /// lost worker first — not a peer's echo of it.
    /// </summary>
    /// <param name="deadline">When given: past it, the ranks are stopped as though one had failed (a hung one then fails as hung).</param>
    public async Task<T[]> FanOut<T>(Func<IGpuWorkerGrain, int, Task<T>> call, TimeSpan? deadline = null)
    {
        OperationTime.Stamp(job.Now);
        return await Gather(job.Ranks.Select((worker, rank) => Named(worker, call(Worker(worker), rank))).ToList(), deadline);
    }

    /// <summary>
    /// A step on every rank, as <see cref="FanOut{T}"/> does it, sent through each server's <see cref="IServerGrain"/>:
    /// one message per server each way. The reports come back in rank order.
    /// </summary>
    public async Task<WorkerStepReport[]> RunStep(WorkerStep step, TimeSpan? deadline)
    {
        OperationTime.Stamp(job.Now);
        var servers = job.Ranks.Select((worker, rank) => (Worker: worker, Rank: rank)).GroupBy(r => NodeMetadata.NodeOfWorker(r.Worker)).ToList();
        var replies = await Gather(servers.Select(s => Named(s.First().Worker, grains.GetGrain<IServerGrain>(ServerGrain.KeyOf(s.Key)).RunStep(step, s.Select(r => r.Worker).ToList()),
            $"server {s.Key} (the job's workers {string.Join(", ", s.Select(r => r.Worker))})")).ToList(), deadline);
        var reports = new WorkerStepReport[job.Ranks.Count];
        foreach (var (server, reply) in servers.Zip(replies))
            foreach (var (rank, report) in server.Select(r => r.Rank).Zip(reply))
                reports[rank] = report;
        return reports;
    }

    /// <summary>Waits for calls that together make one collective operation; on the first failure stops every rank and throws the root cause.</summary>
    private async Task<T[]> Gather<T>(List<Task<T>> tasks, TimeSpan? deadline)
    {
        using var stopLate = new CancellationTokenSource(); // the deadline's timer ends with the call
        try
        {
            return await Gather(tasks, deadline is { } limit ? Task.Delay(limit, stopLate.Token) : null, deadline);
        }
        finally
        {
            await stopLate.CancelAsync();
        }
    }

    private async Task<T[]> Gather<T>(List<Task<T>> tasks, Task? late, TimeSpan? deadline)
    {
        var ranks = job.Ranks;
        var pending = new List<Task<T>>(tasks);
        while (pending.Count > 0)
        {
            var done = late is null ? await Task.WhenAny(pending) : await Task.WhenAny(pending.Append<Task>(late));
            if (done == late)
            {
                log.LogWarning("Job {Job}: the step took longer than {Deadline} s; stopping its ranks", job.JobId, deadline!.Value.TotalSeconds);
                await Abort(ranks, job.State.Incarnation);
                late = null;
                continue;
            }
            var finished = (Task<T>)done;
            pending.Remove(finished);
            if (finished.IsCompletedSuccessfully)
                continue;
            await Abort(ranks, job.State.Incarnation);
            try
            {
                await Task.WhenAll(tasks);
            }
            catch
            {
                // inspected below
            }
            var failures = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).ToList();
            if (failures.Count == 0)
                await finished; // cancelled
            var root = RootCause.Of(failures, FailureClassifier.IsEcho, e => FailureClassifier.Classify(e).Kind is FailureKind.WorkerLost or FailureKind.WorkerReset or FailureKind.Hang);
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(root).Throw();
        }
        return tasks.Select(t => t.Result).ToArray();
    }

    /// <summary>Calls every rank's worker at once for work without collectives (status polls, commands that return at once).</summary>
    public async Task<T[]> All<T>(Func<IGpuWorkerGrain, int, Task<T>> call)
    {
        OperationTime.Stamp(job.Now);
        return await Task.WhenAll(job.Ranks.Select((worker, rank) => Named(worker, call(Worker(worker), rank))));
    }

    public async Task All(Func<IGpuWorkerGrain, int, Task> call)
    {
        OperationTime.Stamp(job.Now);
        await Task.WhenAll(job.Ranks.Select((worker, rank) => Named(worker, Completed(call(Worker(worker), rank)))));
    }

    private static async Task<bool> Completed(Task call)
    {
        await call;
        return true;
    }

    /// <summary>
    /// A call whose transport failed (its server's silo gone or unreachable, the call timed out) becomes the lost
    /// worker it is, named with its server, instead of Orleans' message about a message.
    /// </summary>
    private static async Task<T> Named<T>(string worker, Task<T> call, string? who = null)
    {
        try
        {
            return await call;
        }
        catch (Exception ex) when (Unreachable(ex) is { } why)
        {
            throw new WorkerLostException(worker, $"{who ?? $"worker {worker} on server {NodeMetadata.NodeOfWorker(worker)}"} is out of reach: {why}");
        }
    }

    private static string? Unreachable(Exception ex) => ex switch
    {
        SiloUnavailableException => "its server's silo is unavailable",
        Orleans.Runtime.Messaging.ConnectionFailedException => "the connection to its server failed",
        OrleansMessageRejectionException => "Orleans rejected the call (its server's silo is gone or unreachable)",
        TimeoutException => "the call timed out",
        _ => null,
    };

    /// <summary>Whether every worker the job holds answers a status call within <paramref name="timeout"/>.</summary>
    public async Task<bool> AllAnswer(TimeSpan timeout)
    {
        try
        {
            await Task.WhenAll(job.State.RankWorkers.Select(worker => Worker(worker).GetStatus().WaitAsync(timeout)));
            return true;
        }
        catch (Exception ex)
        {
            log.LogDebug("Job {Job}: a worker does not answer: {Message}", job.JobId, ex.Message);
            return false;
        }
    }

    /// <summary>Every worker the job holds gives it up and frees its memory; a worker that is gone has nothing to free.</summary>
    public Task ReleaseAll() => Task.WhenAll(job.State.RankWorkers.Select(async worker =>
    {
        try
        {
            await Worker(worker).Release(job.JobId, job.State.Incarnation);
        }
        catch (Exception ex)
        {
            log.LogWarning("Job {Job}: could not release worker {Worker}: {Message}", job.JobId, worker, ex.Message);
        }
    }));

    private Task Abort(IReadOnlyList<string> ranks, int incarnation) => Task.WhenAll(ranks.Select(async (worker, rank) =>
    {
        try
        {
            await Worker(worker).Abort(job.JobId, incarnation);
        }
        catch (Exception ex)
        {
            log.LogDebug("Job {Job}: abort of rank {Rank}: {Message}", job.JobId, rank, ex.Message); // a lost worker has nothing to stop
        }
    }));
}
