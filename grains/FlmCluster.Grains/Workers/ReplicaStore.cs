using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// The in-memory replicas one worker keeps: its own rank's and those of the rank it is the peer of (assembled
/// from chunks as they arrive). Of each rank at most the two newest steps: the newest may not be held by
/// every rank yet, and until it is, the one before it is the job's recovery point; once the coordinator
/// confirms the newest, the older one goes. So a worker holds about twice its rank's state, three times
/// while a new copy arrives. Thread-safe: the worker's background sender writes its own.
/// </summary>
public sealed class ReplicaStore
{
    private readonly Lock _lock = new();
    private const int Kept = 2;
    private readonly Dictionary<(string Job, int Rank), List<(long Step, ChunkedBytes Bytes)>> _complete = [];
    private readonly Dictionary<(string Job, int Rank), (long Step, byte[]?[] Chunks)> _incoming = [];
    private readonly HashSet<string> _ended = [];

    public long Bytes
    {
        get
        {
            lock (_lock)
                return _complete.Values.Sum(list => list.Sum(r => r.Bytes.Length));
        }
    }

    /// <summary>Keeps a replica; of each rank only the newest steps stay.</summary>
    public void Put(string job, int rank, long step, ChunkedBytes bytes)
    {
        lock (_lock)
            Keep((job, rank), step, bytes);
    }

    private void Keep((string Job, int Rank) key, long step, ChunkedBytes bytes)
    {
        if (!_complete.TryGetValue(key, out var held))
            _complete[key] = held = [];
        held.RemoveAll(r => r.Step == step);
        held.Add((step, bytes));
        held.Sort((x, y) => y.Step.CompareTo(x.Step));
        if (held.Count > Kept)
            held.RemoveRange(Kept, held.Count - Kept);
    }

    /// <summary>Adds a chunk from a peer; the replica counts once its last chunk is in.</summary>
    public void Receive(ReplicaChunk chunk)
    {
        lock (_lock)
        {
            if (_ended.Contains(chunk.JobId))
                return; // a late piece for a job that has ended
            var key = (chunk.JobId, chunk.Rank);
            if (!_incoming.TryGetValue(key, out var incoming) || incoming.Step != chunk.Step)
            {
                if (incoming.Chunks is not null && incoming.Step > chunk.Step)
                    return; // a late piece of an older replica
                incoming = (chunk.Step, new byte[]?[chunk.Count]);
                _incoming[key] = incoming;
            }
            if (chunk.Index < 0 || chunk.Index >= incoming.Chunks.Length)
                throw new ArgumentException($"replica chunk {chunk.Index} of {incoming.Chunks.Length}");
            incoming.Chunks[chunk.Index] = chunk.Data;
            if (incoming.Chunks.Any(c => c is null))
                return;
            _incoming.Remove(key);
            Keep(key, chunk.Step, new ChunkedBytes(incoming.Chunks!));
        }
    }

    public ChunkedBytes? Get(string job, int rank, long step)
    {
        lock (_lock)
            return _complete.TryGetValue((job, rank), out var held) ? held.Find(r => r.Step == step).Bytes : null;
    }

    public ReplicaChunk? Chunk(string job, int rank, long step, int index)
    {
        var bytes = Get(job, rank, step);
        return bytes is null || index < 0 || index >= bytes.Chunks.Count ? null : new ReplicaChunk(job, rank, step, index, bytes.Chunks.Count, bytes.Chunks[index]);
    }

    /// <summary>Drops the job's replicas of steps before <paramref name="step"/> (once that step is the recovery point).</summary>
    public void DropOlder(string job, long step)
    {
        lock (_lock)
            foreach (var (key, held) in _complete.Where(kv => kv.Key.Job == job))
                held.RemoveAll(r => r.Step < step);
    }

    /// <summary>The job has ended: its replicas go, and pieces that arrive later are ignored.</summary>
    public void DropJob(string job)
    {
        lock (_lock)
        {
            _ended.Add(job);
            foreach (var key in _complete.Keys.Where(k => k.Job == job).ToList())
                _complete.Remove(key);
            foreach (var key in _incoming.Keys.Where(k => k.Job == job).ToList())
                _incoming.Remove(key);
        }
    }
}

/// <summary>
/// The replica stores of this silo's workers, kept by the silo rather than by a worker's activation: if the
/// runtime replaces an activation (its directory entry was on a server that died), the copies it held for
/// its own rank and its peers are still here.
/// </summary>
public sealed class SiloReplicas
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, ReplicaStore> _stores = new();

    public ReplicaStore For(string worker) => _stores.GetOrAdd(worker, _ => new ReplicaStore());
}
