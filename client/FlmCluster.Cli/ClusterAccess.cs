using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training;
using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;

namespace FlmCluster.Cli;

/// <summary>Connecting to the configured cluster and turning a job config into a submission.</summary>
public static class ClusterAccess
{
    public static async Task<FlmClusterClient> Connect(string? profilePath = null)
    {
        var profile = ClusterProfile.Configured(profilePath)
            ?? throw new ClusterUnavailableException($"no cluster is configured ({ClusterProfile.DefaultPath} does not exist); start one with 'flm cluster up', or set FLM_CLUSTER_GATEWAYS or FLM_CLUSTER_REDIS");
        return await FlmClusterClient.ConnectAsync(profile);
    }

    /// <summary>A submission; <paramref name="resumeFrom"/> is a checkpoint already checked against the job (TrainCommand.LoadResume).</summary>
    public static JobSubmission Submission(JobConfig job, int priority, string? resumeFrom = null)
    {
        if (GrowthSchedule.ClusterProblem(job) is { } problem)
            throw new FlmUserException(problem);
        if (!string.IsNullOrWhiteSpace(job.Checkpoint.Dir))
            job = job with { Checkpoint = job.Checkpoint with { Dir = Path.GetFullPath(job.Checkpoint.Dir) } };
        // GPUs for the widest stage: a job keeps its workers from stage to stage.
        var stages = GrowthSchedule.Resolve(job);
        var widest = GrowthSchedule.WidestLayout(job);
        return new JobSubmission(job.Name, JobConfigLoader.ToJson(job), priority, widest.Dp, widest.Tp, widest.Pp, stages.Sum(s => s.Job.Train.Steps),
            resumeFrom is null ? null : Path.GetFullPath(resumeFrom));
    }

    /// <summary>Polls a job, reporting every new committed step, until it ends; returns its final status.</summary>
    public static async Task<JobStatus> Watch(FlmClusterClient client, string jobId, Action<StepPoint> onStep, Action<JobEvent>? onEvent = null,
        CancellationToken cancel = default)
    {
        long nextStep = -1;
        var seenEvents = 0;
        while (true)
        {
            var status = await client.Status(jobId);
            if (onEvent is not null)
            {
                var events = status.Events.ToList();
                foreach (var e in events.Skip(Math.Min(seenEvents, events.Count)))
                    onEvent(e);
                seenEvents = events.Count;
            }
            foreach (var point in status.Recent.Where(p => p.Step > nextStep))
            {
                onStep(point);
                nextStep = point.Step;
            }
            if (JobStates.IsFinal(status.State))
                return status;
            await Task.Delay(200, cancel);
        }
    }
}
