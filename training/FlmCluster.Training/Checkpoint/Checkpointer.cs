using System.Diagnostics;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;

namespace FlmCluster.Training.Checkpoint;

/// <summary>A committed checkpoint and what saving it cost.</summary>
public sealed record SaveReport(string Directory, long Step, long Bytes, TimeSpan Stall, TimeSpan Persist);

/// <summary>
/// Saves an engine's state as a sharded checkpoint. The training thread only waits for the snapshot (one
/// memory copy per rank, and for the previous save if it is still being written: at most one snapshot in
/// flight); shards are then written and fsynced in parallel in the background, the manifest is committed
/// last and old checkpoints are pruned by the retention policy.
/// </summary>
public sealed class Checkpointer(CheckpointConfig policy, Action<string>? log = null) : IDisposable
{
    private Task<SaveReport>? _inFlight;

    public SaveReport? LastCommitted { get; private set; }

    /// <summary>True while a save's shards are still being written.</summary>
    public bool Writing => _inFlight is { IsCompleted: false };

    /// <summary>Starts a save of the engine's current state (between steps). Returns the time training was stalled.</summary>
    public TimeSpan Save(LocalEngine engine, JobConfig job, string jobId, int stage)
    {
        var stall = Stopwatch.StartNew();
        WaitForPending();
        var root = policy.Dir;
        var directory = CheckpointStore.DirectoryFor(root, engine.NextStep);
        if (Directory.Exists(directory))
            Directory.Delete(directory, recursive: true); // an earlier, uncommitted attempt at this step
        Directory.CreateDirectory(directory);
        var snapshots = engine.Fan(r => RankSnapshot.Capture(engine.Ranks[r]));
        var manifest = BaseManifest(engine, job, jobId, stage);
        var stalled = stall.Elapsed;
        var write = Task.Run(() =>
        {
            var persist = Stopwatch.StartNew();
            try
            {
                var shards = new WrittenShard[snapshots.Length];
                System.Threading.Tasks.Parallel.For(0, snapshots.Length, r => shards[r] = ShardWriter.Write(snapshots[r], directory));
                CheckpointStore.Commit(directory, manifest with
                {
                    Shards = shards.Select(s => s.Shard).ToList(),
                    Tensors = ShardWriter.Merge(shards),
                });
                var removed = CheckpointStore.Prune(root, policy.KeepLast, policy.KeepEvery * Math.Max(1, policy.Interval));
                var report = new SaveReport(directory, manifest.Step, shards.Sum(s => s.Shard.Bytes), stalled, persist.Elapsed);
                log?.Invoke($"checkpoint {directory} committed ({report.Bytes / 1e6:0.0} MB in {report.Persist.TotalSeconds:0.00} s{(removed.Count > 0 ? $", pruned {removed.Count}" : "")})");
                return report;
            }
            finally
            {
                foreach (var s in snapshots)
                    s.Dispose();
            }
        });
        _inFlight = write;
        if (!policy.Async)
            WaitForPending();
        return stall.Elapsed;
    }

    /// <summary>Waits for the save in flight, if any (rethrows its failure).</summary>
    public void WaitForPending()
    {
        if (_inFlight is null)
            return;
        try
        {
            LastCommitted = _inFlight.GetAwaiter().GetResult();
        }
        finally
        {
            _inFlight = null;
        }
    }

    public static CheckpointManifest BaseManifest(LocalEngine engine, JobConfig job, string jobId, int stage) => new()
    {
        JobId = jobId,
        JobJson = JobConfigLoader.ToJson(job),
        CreatedAt = DateTime.UtcNow,
        Stage = stage,
        StageStartStep = engine.StageStartStep,
        Growth = engine.NextMaskValue < 1.0 ? engine.Growth : null,
        MaskValue = engine.NextMaskValue,
        Step = engine.NextStep,
        SamplesConsumed = engine.SamplesConsumed,
        AdamStep = engine.Ranks[0].Optimizer.Step,
        NextLr = engine.Schedule.At(engine.NextStep - engine.StageStartStep),
        DataFingerprint = engine.Data.Fingerprint,
        DataSeed = engine.Job.Data.Seed,
        TrainSeed = engine.Job.Train.Seed,
        Layout = engine.Job.Layout,
    };

    public void Dispose()
    {
        try
        {
            WaitForPending();
        }
        catch (Exception ex)
        {
            log?.Invoke($"checkpoint failed: {ex.Message}");
        }
    }
}
