using System.Diagnostics;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;

namespace FlmCluster.Training.Checkpoint;

/// <summary>A committed checkpoint and what saving it cost.</summary>
public sealed record SaveReport(string Directory, long Step, long Bytes, TimeSpan Stall, TimeSpan Persist);

/// <summary>
/// Saves an engine's state as a sharded checkpoint. The training thread only waits for the snapshot (one
/// memory copy per rank, and for the previous save if it is still being written: at most one snapshot in
/// flight); shards are then written and fsynced in parallel in the background, the manifest is committed
/// last and the run's old checkpoints are pruned by the retention policy. A committed checkpoint of the same
/// step is kept, never replaced.
/// </summary>
public sealed class Checkpointer(JobProgress progress, Action<string>? log = null) : IDisposable
{
    private Task<SaveReport>? _inFlight;

    public SaveReport? LastCommitted { get; private set; }

    /// <summary>True while a save's shards are still being written.</summary>
    public bool Writing => _inFlight is { IsCompleted: false };

    /// <summary>Starts a save of the engine's current state (between steps). Returns the time training was stalled.</summary>
    public TimeSpan Save(LocalEngine engine, RunIdentity run)
    {
        var stall = Stopwatch.StartNew();
        WaitForPending();
        var policy = progress.Job.Job.Checkpoint;
        var at = engine.Cursor;
        if (CheckpointStore.PrepareDirectory(policy.Dir, at.NextStep) is not { } directory)
        {
            log?.Invoke($"checkpoint {CheckpointStore.DirectoryFor(policy.Dir, at.NextStep)} is already committed; kept as it is");
            LastCommitted = new SaveReport(CheckpointStore.DirectoryFor(policy.Dir, at.NextStep), at.NextStep, 0, stall.Elapsed, TimeSpan.Zero);
            return stall.Elapsed;
        }
        var snapshots = engine.Fan(r => RankSnapshot.Capture(engine.Ranks[r]));
        var fingerprint = engine.Data.Fingerprint;
        var stalled = stall.Elapsed;
        var write = Task.Run(() =>
        {
            var persist = Stopwatch.StartNew();
            try
            {
                var shards = new WrittenShard[snapshots.Length];
                System.Threading.Tasks.Parallel.For(0, snapshots.Length, r => shards[r] = ShardWriter.Write(snapshots[r], directory));
                CheckpointStore.Commit(directory, progress.Manifest(at, run, run.JobName, fingerprint, shards));
                var removed = progress.Prune(run);
                var report = new SaveReport(directory, at.NextStep, shards.Sum(s => s.Shard.Bytes), stalled, persist.Elapsed);
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
