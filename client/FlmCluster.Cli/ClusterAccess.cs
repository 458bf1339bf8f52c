using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Jobs;
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

    /// <summary>
    /// A submission: the job with its paths made absolute (the servers cannot know what a relative one meant);
    /// <paramref name="resumeFrom"/> is a checkpoint already checked against the job (TrainCommand.LoadResume).
    /// The cluster validates it again.
    /// </summary>
    public static JobSubmission Submission(JobConfig job, int priority, string? resumeFrom = null, bool overwrite = false)
    {
        if (GrowthSchedule.ClusterProblem(job) is { } problem)
            throw new FlmUserException(problem);
        if (!string.IsNullOrWhiteSpace(job.Checkpoint.Dir))
            job = job with { Checkpoint = job.Checkpoint with { Dir = Path.GetFullPath(job.Checkpoint.Dir) } };
        job = job with { Data = job.Data with { Paths = [.. job.Data.Paths.Select(p => p == Corpus.Bundled ? p : Path.GetFullPath(p))] } };
        return new JobSubmission(JobConfigLoader.ToJson(job), priority, resumeFrom is null ? null : Path.GetFullPath(resumeFrom), overwrite);
    }

    /// <summary>
    /// Refuses, before anything starts, a checkpoint folder that holds another run's checkpoints (or, for a
    /// resumed run, newer ones of its own) unless the user asked to overwrite them.
    /// </summary>
    public static void CheckCheckpointFolder(JobConfig job, CheckpointReader? resume, bool overwrite)
    {
        if (overwrite || string.IsNullOrWhiteSpace(job.Checkpoint.Dir))
            return;
        var resolved = ResolvedJob.Resolve(job);
        var run = resume is null ? RunIdentity.New(resolved) : RunIdentity.Continuing(resume.Manifest, resolved);
        if (CheckpointOwnership.Problem(job.Checkpoint.Dir, run, resume?.Manifest.Step) is { } problem)
            throw new FlmUserException(problem);
    }

    /// <summary>
    /// Follows a job through its durable history, reporting every committed step and event (with its index) from
    /// <paramref name="sinceStep"/> on in the order they happened, until it ends (with <paramref name="untilEnd"/>)
    /// or until what is there now is reported; returns its status at the end.
    /// </summary>
    public static async Task<JobStatus> Watch(FlmClusterClient client, string jobId, Action<StepRecord> onStep, Action<JobEvent, int>? onEvent = null,
        long sinceStep = 0, bool untilEnd = true, CancellationToken cancel = default)
    {
        var (nextStep, nextEvent) = (sinceStep, 0);
        while (true)
        {
            // Status first: every step committed before it is in the history read after it.
            var status = await client.Status(jobId);
            JobHistory page;
            do
            {
                page = await client.History(jobId, nextStep, nextEvent);
                var events = page.Events.Select((e, i) => (e.At, Report: (Action)(() => onEvent?.Invoke(e, nextEvent + i))));
                var steps = page.Steps.Select(s => (s.At, Report: (Action)(() => onStep(s))));
                foreach (var (_, report) in events.Concat(steps).OrderBy(x => x.At))
                    report();
                (nextStep, nextEvent) = (page.NextStep, page.NextEvent);
            }
            while (page.Steps.Count == JobHistory.MaxPage || page.Events.Count == JobHistory.MaxPage);
            if (status.State.IsFinal() || !untilEnd)
                return status;
            await Task.Delay(200, cancel);
        }
    }
}
