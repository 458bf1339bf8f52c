using FlmCluster.Grains.Abstractions;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Jobs;

namespace FlmCluster.Grains.Scheduling;

/// <summary>
/// Checks a client's submission on the server, before anything is recorded, with the messages the CLI gives
/// for the same problems: the job itself (resolved and validated), its paths (absolute: the servers cannot know
/// what a client's relative path meant), its device and layout against the cluster's servers, the checkpoint it
/// resumes from, and the owner of its checkpoint folder. Nothing in a submission is trusted.
/// </summary>
public static class SubmissionValidator
{
    /// <summary>Largest job config accepted (a job file is a few kB).</summary>
    public const int MaxJobJsonChars = 1 << 20;

    /// <summary>Priorities range over ±this.</summary>
    public const int MaxPriority = 1000;

    /// <param name="jobId">The id the job gets; a job that does not resume starts a run of that id.</param>
    public static AcceptedJob Validate(JobSubmission submission, string jobId, IReadOnlyDictionary<string, DeviceSpec> servers, FileRoots roots, DateTime now)
    {
        try
        {
            return Accept(submission, jobId, servers, roots, now);
        }
        catch (Exception ex) when (ex is FlmUserException or InvalidCheckpointException)
        {
            throw new ClusterRequestException(ex.Message);
        }
    }

    private static AcceptedJob Accept(JobSubmission s, string jobId, IReadOnlyDictionary<string, DeviceSpec> servers, FileRoots roots, DateTime now)
    {
        Require(s.JobJson is { Length: > 0 and <= MaxJobJsonChars }, $"the submitted job must be a JSON object of at most {MaxJobJsonChars} characters");
        Require(s.Priority is >= -MaxPriority and <= MaxPriority, $"priority {s.Priority} is outside [-{MaxPriority}, {MaxPriority}]");
        var job = ResolvedJob.Parse(s.JobJson, "the submitted job");
        if (GrowthSchedule.ClusterProblem(job.Job) is { } problem)
            throw new FlmUserException(problem);
        var dir = job.Job.Checkpoint.Dir;
        Require(string.IsNullOrWhiteSpace(dir) || Path.IsPathFullyQualified(dir), $"checkpoint.dir '{dir}' is relative; give the absolute path of a folder every server reaches");
        foreach (var path in job.Job.Data.Paths.Where(p => p != Training.Data.Corpus.Bundled))
            Require(Path.IsPathFullyQualified(path), $"data path '{path}' is relative; give its absolute path on the servers");
        Refuse(RootsProblem(job, roots));

        var device = DeviceSpec.KindOf(job.Job.Train.Device);
        var fitting = servers.Where(n => n.Value.Kind == device).ToDictionary();
        Require(fitting.Count > 0, $"the job trains on {job.Job.Train.Device}, but the cluster has no {device} servers " +
            $"({string.Join(", ", servers.Select(n => $"{n.Key}: {n.Value}"))}); set train.device to {string.Join(" or ", servers.Values.Select(v => v.Kind).Distinct())}");
        var widest = job.WidestLayout;
        Require(GangAllocator.CanEverHost(fitting.Values.Select(n => n.Count), widest.Dp, widest.Tp, widest.Pp),
            $"layout dp={widest.Dp},tp={widest.Tp},pp={widest.Pp} needs {widest.Dp * widest.Pp} groups of {widest.Tp} GPUs on one server, " +
            $"but the cluster has {string.Join(", ", fitting.Select(n => $"{n.Key}: {n.Value.Count} GPUs"))}; choose a layout with tp ≤ GPUs per server and dp×tp×pp ≤ {fitting.Values.Sum(n => n.Count)}");

        var run = new RunIdentity(jobId, job.Name, job.Fingerprint);
        long? resumedStep = null;
        if (s.ResumeFrom is { } from)
        {
            Require(Path.IsPathFullyQualified(from), $"the checkpoint to resume from, '{from}', is relative; give its absolute path on the servers");
            Refuse(roots.CheckpointProblem(from, "the checkpoint to resume from"));
            var reader = CheckpointStore.Resolve(from);
            new JobProgress(job).CheckResume(reader);
            run = RunIdentity.Continuing(reader.Manifest, job);
            resumedStep = reader.Manifest.Step;
        }
        if (!string.IsNullOrWhiteSpace(dir) && !s.OverwriteCheckpoints && CheckpointOwnership.Problem(dir, run, resumedStep) is { } owned)
            throw new FlmUserException(owned);
        return new AcceptedJob(job.Name, s, run.RunId, widest.Dp, widest.Tp, widest.Pp, job.TotalSteps, device, now);
    }

    /// <summary>Why the job's checkpoint folder or data files are outside the server's roots, or null.</summary>
    public static string? RootsProblem(ResolvedJob job, FileRoots roots)
    {
        var dir = job.Job.Checkpoint.Dir;
        if (!string.IsNullOrWhiteSpace(dir) && roots.CheckpointProblem(dir, "checkpoint.dir") is { } problem)
            return problem;
        return job.Job.Data.Paths.Where(p => p != Training.Data.Corpus.Bundled).Select(p => roots.DataProblem(p, "data path")).FirstOrDefault(p => p is not null);
    }

    private static void Refuse(string? problem)
    {
        if (problem is not null)
            throw new FlmUserException(problem);
    }

    private static void Require(bool condition, string message)
    {
        if (!condition)
            throw new FlmUserException(message);
    }
}
