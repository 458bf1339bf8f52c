using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using FlmCluster.Training.Config;

namespace FlmCluster.Training.Checkpoint;

/// <summary>A checkpoint in a store and whether it can be loaded.</summary>
public sealed record CheckpointEntry(string Directory, long Step, bool Valid, string? Problem);

/// <summary>
/// A folder of checkpoints ("step-00000120", …): commit (manifest last, by atomic rename), listing with
/// validity, the newest valid one (checksums verified, bad ones skipped with the reason), and retention
/// (keep the last K and every Nth).
/// </summary>
public static partial class CheckpointStore
{
    public static string DirectoryFor(string root, long step) => Path.Combine(root, string.Create(CultureInfo.InvariantCulture, $"step-{step:D8}"));

    /// <summary>Makes a checkpoint exist: fsync the shards' folder, write the manifest to a temporary file, fsync, rename, fsync the folder.</summary>
    public static void Commit(string directory, CheckpointManifest manifest)
    {
        var temp = Path.Combine(directory, CheckpointReader.ManifestFile + ".tmp");
        using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            JsonSerializer.Serialize(stream, manifest, CheckpointManifest.Json);
            stream.Flush(flushToDisk: true);
        }
        SyncDirectory(directory);
        File.Move(temp, Path.Combine(directory, CheckpointReader.ManifestFile), overwrite: true);
        SyncDirectory(directory);
        SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(directory))!);
    }

    /// <summary>Writes a weights-only checkpoint at step 0 (e.g. of an imported model): one shard, whole tensors, no optimizer state.</summary>
    public static string WriteWeights(string root, JobConfig job, IReadOnlyDictionary<string, TorchSharp.torch.Tensor> parameters)
    {
        var directory = DirectoryFor(root, 0);
        if (Directory.Exists(directory))
            throw new FlmUserException($"'{directory}' already exists; import into another folder");
        Directory.CreateDirectory(directory);
        var file = ShardWriter.FileName(0);
        var tensors = parameters.ToDictionary(kv => $"param/{kv.Key}", kv => kv.Value);
        var (bytes, sha) = SafeTensors.Write(Path.Combine(directory, file), tensors);
        var records = Model.ParamCatalog.Whole(job.Model).Select(spec => new TensorRecord("param", spec.Name, spec.Shape,
            SafeTensors.DTypeName(parameters[spec.Name].dtype), spec.Split, 1,
            [new PieceRecord(file, $"param/{spec.Name}", 0, 0, spec.GlobalElements)])).ToList();
        Commit(directory, new CheckpointManifest
        {
            JobId = job.Name,
            JobJson = JobConfigLoader.ToJson(job),
            CreatedAt = DateTime.UtcNow,
            DataSeed = job.Data.Seed,
            TrainSeed = job.Train.Seed,
            Layout = new LayoutConfig(),
            Shards = [new ShardRecord(file, 0, bytes, sha)],
            Tensors = records,
        });
        return directory;
    }

    /// <summary>The checkpoints under <paramref name="root"/>, oldest first; "Valid" checks manifest and sizes (and checksums when asked).</summary>
    public static List<CheckpointEntry> List(string root, bool verifyChecksums = false)
    {
        if (!Directory.Exists(root))
            return [];
        var result = new List<CheckpointEntry>();
        foreach (var dir in Directory.EnumerateDirectories(root, "step-*").Order(StringComparer.Ordinal))
        {
            if (!long.TryParse(Path.GetFileName(dir)["step-".Length..], NumberStyles.Integer, CultureInfo.InvariantCulture, out var step))
                continue;
            try
            {
                var reader = CheckpointReader.Open(dir);
                var problems = verifyChecksums ? reader.Verify() : [];
                result.Add(new CheckpointEntry(dir, step, problems.Count == 0, problems.Count == 0 ? null : string.Join("; ", problems)));
            }
            catch (InvalidCheckpointException ex)
            {
                result.Add(new CheckpointEntry(dir, step, false, ex.Message));
            }
        }
        return result;
    }

    /// <summary>
    /// The newest checkpoint whose manifest, sizes and checksums are good; every newer one that is not is
    /// reported through <paramref name="rejected"/> with its reason. Null when there is none.
    /// </summary>
    public static CheckpointReader? NewestValid(string root, Action<string, string>? rejected = null)
    {
        foreach (var entry in List(root).AsEnumerable().Reverse())
        {
            if (!entry.Valid)
            {
                rejected?.Invoke(entry.Directory, entry.Problem!);
                continue;
            }
            var reader = CheckpointReader.Open(entry.Directory);
            var problems = reader.Verify();
            if (problems.Count == 0)
                return reader;
            rejected?.Invoke(entry.Directory, string.Join("; ", problems));
        }
        return null;
    }

    /// <summary>A checkpoint directory, or the newest valid checkpoint of a store; throws with the reason when there is none.</summary>
    public static CheckpointReader Resolve(string path, Action<string, string>? rejected = null)
    {
        if (File.Exists(Path.Combine(path, CheckpointReader.ManifestFile)))
        {
            var reader = CheckpointReader.Open(path);
            var problems = reader.Verify();
            if (problems.Count > 0)
                throw new InvalidCheckpointException($"checkpoint '{path}' is corrupt: {string.Join("; ", problems)}");
            return reader;
        }
        if (Directory.Exists(path) && Directory.EnumerateDirectories(path, "step-*").Any())
        {
            // Skipped ones are reported as warnings only beside a checkpoint that is used; otherwise they are the error.
            var skipped = new List<(string Directory, string Problem)>();
            var reader = NewestValid(path, (dir, why) => skipped.Add((dir, why))) ?? throw NoValidCheckpoint(path, skipped);
            foreach (var (dir, why) in skipped)
                rejected?.Invoke(dir, why);
            return reader;
        }
        return CheckpointReader.Open(path); // throws with the reason
    }

    /// <summary>The error for a folder of checkpoints none of which can be used, with each one's problem.</summary>
    public static InvalidCheckpointException NoValidCheckpoint(string root, IEnumerable<(string Directory, string Problem)> problems)
    {
        var reasons = string.Join("; ", problems.Select(p => $"{Path.GetFileName(p.Directory)}: {p.Problem}"));
        return new InvalidCheckpointException($"'{root}' holds no valid checkpoint{(reasons.Length > 0 ? $" ({reasons})" : "")}");
    }

    /// <summary>
    /// Deletes checkpoints other than the last <paramref name="keepLast"/> valid ones and those whose step is a
    /// multiple of <paramref name="keepStepMultiple"/> (0 = none). Invalid ones older than the newest valid one go too.
    /// </summary>
    public static IReadOnlyList<string> Prune(string root, int keepLast, long keepStepMultiple)
    {
        var entries = List(root);
        var valid = entries.Where(e => e.Valid).ToList();
        var keep = new HashSet<string>(valid.TakeLast(Math.Max(1, keepLast)).Select(e => e.Directory));
        if (keepStepMultiple > 0)
            foreach (var e in valid.Where(e => e.Step > 0 && e.Step % keepStepMultiple == 0))
                keep.Add(e.Directory);
        var newestValid = valid.Count > 0 ? valid[^1].Step : long.MaxValue;
        var removed = new List<string>();
        foreach (var e in entries)
        {
            if (keep.Contains(e.Directory) || (!e.Valid && e.Step > newestValid))
                continue; // an incomplete newer one may still be in progress
            Directory.Delete(e.Directory, recursive: true);
            removed.Add(e.Directory);
        }
        return removed;
    }

    private static void SyncDirectory(string directory)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
            return;
        var fd = Open(directory, 0);
        if (fd < 0)
            return;
        try
        {
            Fsync(fd);
        }
        finally
        {
            Close(fd);
        }
    }

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync")]
    private static partial int Fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}
