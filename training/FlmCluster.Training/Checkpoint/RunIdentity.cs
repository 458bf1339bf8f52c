using FlmCluster.Training.Jobs;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// The run checkpoints belong to: a fresh job starts a run, a resume continues the run of its checkpoint. A
/// checkpoint folder holds one run (see <see cref="CheckpointOwnership"/>).
/// </summary>
public sealed record RunIdentity(string RunId, string JobName, string ConfigFingerprint)
{
    /// <summary>A new run of a job: its id is the job's name made safe for files and URLs, and a random suffix.</summary>
    public static RunIdentity New(ResolvedJob job) => new(NewId(job.Name), job.Name, job.Fingerprint);

    /// <summary>The run a checkpoint belongs to, continued by <paramref name="job"/>.</summary>
    public static RunIdentity Continuing(CheckpointManifest checkpoint, ResolvedJob job) => new(checkpoint.Run, job.Name, job.Fingerprint);

    /// <summary>"name-1a2b3c4d": lower-case letters, digits and dashes from the name (at most 24), then 8 hex digits.</summary>
    public static string NewId(string name)
    {
        var slug = new string(name.ToLowerInvariant().Select(c => char.IsAsciiLetterOrDigit(c) ? c : '-').ToArray()).Trim('-');
        if (slug.Length == 0)
            slug = "job";
        return $"{slug[..Math.Min(24, slug.Length)]}-{Guid.NewGuid().ToString("N")[..8]}";
    }
}
