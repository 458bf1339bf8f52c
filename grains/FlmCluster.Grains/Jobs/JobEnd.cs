using FlmCluster.Grains.Abstractions;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Grains.Jobs;

/// <summary>What ends a job's ticking: the grain's timer and reminder.</summary>
public interface IJobTicks
{
    /// <summary>Stops the timer and the reminder: the job needs no more ticks.</summary>
    Task StopTicking();

    /// <summary>Ticks again, not before <paramref name="at"/>.</summary>
    void TickAgainAt(DateTimeOffset at);
}

/// <summary>
/// The end of a job: its final phase saved, its workers freed, the scheduler told. When its end cannot be saved
/// or told now (the storage is down), it is tried again every second until it is; the job does nothing else.
/// </summary>
public sealed class JobEnd(JobStateMachine job, RankCalls ranks, IClusterSchedulerGrain scheduler, ILogger log, IJobTicks ticks)
{
    /// <summary>The job ended, but its end is not saved or not reported to the scheduler yet.</summary>
    public bool Pending { get; private set; }

    public async Task Finish(JobPhase final, string message)
    {
        var held = job.Phase.HoldsGpus();
        try
        {
            await job.BecomeFinished(final, message);
        }
        catch (StateStorageException ex)
        {
            log.LogError("Job {Job} {Final}, but its state cannot be saved yet ({Message}); retrying", job.JobId, final, ex.Message);
            Pending = true;
        }
        if (held)
            await ranks.ReleaseAll();
        await Report();
    }

    /// <summary>Saves the job's end (when that failed before) and tells the scheduler; ticking stops once both are done.</summary>
    public async Task Report()
    {
        try
        {
            if (Pending)
                await job.Save();
            await scheduler.JobEnded(job.JobId, job.Phase);
            Pending = false;
            await ticks.StopTicking();
        }
        catch (Exception ex)
        {
            log.LogWarning("Job {Job}: its end is not recorded yet ({Message}); retrying", job.JobId, ex.Message);
            Pending = true;
            ticks.TickAgainAt(job.Now.AddSeconds(1));
        }
    }
}
