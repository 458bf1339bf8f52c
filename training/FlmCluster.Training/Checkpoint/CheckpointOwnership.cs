using System.Text.Json;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// A checkpoint folder belongs to one run. Its record (<see cref="OwnerFile"/>) names the run; a new run may
/// not save into a folder that holds another run's checkpoints (its retention would delete them and a later
/// resume would load the wrong run) unless it is told to replace them, and a resumed run may not re-save steps
/// the folder already holds.
/// </summary>
public static class CheckpointOwnership
{
    public const string OwnerFile = "run.json";
    private const string FormatName = "flmcluster-run";

    /// <summary>What the owner file says.</summary>
    public sealed record Owner(string Format, string RunId, string JobName, string ConfigFingerprint, DateTime CreatedAt);

    /// <summary>The run that owns <paramref name="root"/>, or null when the folder has no owner file.</summary>
    public static Owner? Read(string root)
    {
        var path = Path.Combine(root, OwnerFile);
        if (!File.Exists(path))
            return null;
        try
        {
            var owner = JsonSerializer.Deserialize<Owner>(File.ReadAllText(path), CheckpointManifest.Json);
            if (owner is null || owner.Format != FormatName || string.IsNullOrWhiteSpace(owner.RunId))
                throw new InvalidCheckpointException($"'{path}' is not an FlmCluster run record; remove it or choose another folder");
            return owner;
        }
        catch (Exception ex) when (ex is JsonException or IOException or UnauthorizedAccessException)
        {
            throw new InvalidCheckpointException($"'{path}' cannot be read ({ex.Message}); remove it or choose another folder");
        }
    }

    /// <summary>
    /// Why <paramref name="run"/> may not save into <paramref name="root"/> (one line naming the fix), or null.
    /// <paramref name="resumedStep"/>: the step of the checkpoint a resumed run continues from.
    /// </summary>
    public static string? Problem(string root, RunIdentity run, long? resumedStep = null)
    {
        if (!Directory.Exists(root))
            return null;
        var owner = Read(root);
        var committed = CheckpointStore.List(root).Where(e => e.Run is not null).ToList();
        var other = owner is not null && owner.RunId != run.RunId ? owner.RunId : committed.FirstOrDefault(e => e.Run != run.RunId)?.Run;
        if (other is not null)
        {
            var theirs = committed.Where(e => e.Run == other).Select(e => e.Step).DefaultIfEmpty(-1).Max();
            var name = owner?.RunId == other ? $" (job '{owner.JobName}')" : "";
            return $"checkpoint folder '{root}' belongs to run {other}{name}{(theirs >= 0 ? $", newest step {theirs}" : "")}; " +
                   $"continue that run with --resume {root}, save into a new folder, or replace its checkpoints with --overwrite";
        }
        // Newer good checkpoints of this run: the resumed run would fork it inside one folder. (Damaged ones do not
        // count; the run's saves replace them.)
        if (resumedStep is { } from && committed.Where(e => e.Step > from && CheckpointStore.Verifies(e.Directory)).Select(e => e.Step).DefaultIfEmpty(-1).Max() is var newer and >= 0)
            return $"checkpoint folder '{root}' already holds step {newer} of this run, newer than the checkpoint it resumes from (step {from}); " +
                   $"resume from the newest with --resume {root}, or save into a new folder";
        return null;
    }

    /// <summary>
    /// Makes <paramref name="root"/> the run's folder (creating it) before the run's first save. With
    /// <paramref name="overwrite"/> another run's checkpoints there are deleted first; without it, a folder
    /// <see cref="Problem"/> refuses throws <see cref="FlmUserException"/>. Returns the folders deleted.
    /// </summary>
    public static IReadOnlyList<string> Claim(string root, RunIdentity run, bool overwrite, long? resumedStep = null)
    {
        var removed = new List<string>();
        if (Problem(root, run, resumedStep) is { } problem)
        {
            if (!overwrite)
                throw new FlmUserException(problem);
            foreach (var entry in CheckpointStore.List(root).Where(e => e.Run != run.RunId || (resumedStep is { } from && e.Step > from)))
            {
                Directory.Delete(entry.Directory, recursive: true);
                removed.Add(entry.Directory);
            }
        }
        if (Read(root) is { } owner && owner.RunId == run.RunId)
            return removed;
        Directory.CreateDirectory(root);
        var record = new Owner(FormatName, run.RunId, run.JobName, run.ConfigFingerprint, DateTime.UtcNow);
        CheckpointStore.WriteDurably(Path.Combine(root, OwnerFile), stream => JsonSerializer.Serialize(stream, record, CheckpointManifest.Json));
        return removed;
    }
}
