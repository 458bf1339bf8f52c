using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using FlmCluster.Training.Config;

namespace FlmCluster.Training.Checkpoint;

/// <summary>A checkpoint in a store, whether it can be loaded, and the run it belongs to (null: no readable manifest).</summary>
public sealed record CheckpointEntry(string Directory, long Step, bool Valid, string? Problem, string? Run = null);

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
        SyncDirectory(directory);
        WriteDurably(Path.Combine(directory, CheckpointReader.ManifestFile), stream => JsonSerializer.Serialize(stream, manifest, CheckpointManifest.Json));
        SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(directory))!);
    }

    /// <summary>Writes a file so that it exists whole or not at all: a temporary file, fsync, rename, fsync of the folder.</summary>
    public static void WriteDurably(string path, Action<Stream> write)
    {
        var temp = path + ".tmp";
        using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            write(stream);
            stream.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
        SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    /// <summary>
    /// The folder to save step <paramref name="step"/> into, emptied of an earlier attempt that never committed
    /// (or whose checkpoint does not verify); null when a good checkpoint of that step exists, which is never
    /// replaced.
    /// </summary>
    public static string? PrepareDirectory(string root, long step)
    {
        var directory = DirectoryFor(root, step);
        if (File.Exists(Path.Combine(directory, CheckpointReader.ManifestFile)) && Verifies(directory))
            return null;
        if (Directory.Exists(directory))
            Directory.Delete(directory, recursive: true);
        Directory.CreateDirectory(directory);
        return directory;
    }

    /// <summary>Whether a checkpoint folder holds a checkpoint whose manifest, sizes and checksums are good.</summary>
    public static bool Verifies(string directory)
    {
        try
        {
            return CheckpointReader.Open(directory).Verify().Count == 0;
        }
        catch (InvalidCheckpointException)
        {
            return false;
        }
    }

    /// <summary>The run a checkpoint folder's manifest names, whether or not its shards are intact; null without a readable manifest.</summary>
    public static string? RunOf(string directory)
    {
        try
        {
            var path = Path.Combine(directory, CheckpointReader.ManifestFile);
            return File.Exists(path) ? JsonSerializer.Deserialize<CheckpointManifest>(File.ReadAllText(path), CheckpointManifest.Json)?.Run : null;
        }
        catch (Exception ex) when (ex is JsonException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
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
                result.Add(new CheckpointEntry(dir, step, problems.Count == 0, problems.Count == 0 ? null : string.Join("; ", problems), reader.Manifest.Run));
            }
            catch (InvalidCheckpointException ex)
            {
                result.Add(new CheckpointEntry(dir, step, false, ex.Message, RunOf(dir)));
            }
        }
        return result;
    }

    /// <summary>
    /// The newest checkpoint whose manifest, sizes and checksums are good; every newer one that is not is
    /// reported through <paramref name="rejected"/> with its reason. Null when there is none. With
    /// <paramref name="run"/>, only that run's checkpoints count; with <paramref name="atMost"/>, only those at or before that step.
    /// </summary>
    public static CheckpointReader? NewestValid(string root, Action<string, string>? rejected = null, string? run = null, long? atMost = null)
    {
        foreach (var entry in List(root).AsEnumerable().Reverse().Where(e => (run is null || e.Run == run) && e.Step <= (atMost ?? long.MaxValue)))
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
    /// Deletes checkpoints of run <paramref name="run"/> other than its last <paramref name="keepLast"/> valid ones
    /// and those whose step is a multiple of <paramref name="keepStepMultiple"/> (0 = none). Its invalid ones and
    /// saves that never committed, older than its newest valid one, go too. Another run's checkpoints are never touched.
    /// </summary>
    public static IReadOnlyList<string> Prune(string root, string run, int keepLast, long keepStepMultiple)
    {
        var entries = List(root).Where(e => e.Run == run || (e.Run is null && !File.Exists(Path.Combine(e.Directory, CheckpointReader.ManifestFile)))).ToList();
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
