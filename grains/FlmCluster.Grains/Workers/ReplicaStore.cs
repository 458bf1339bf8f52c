using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// How much replica memory a silo may hold for its workers, all jobs together: what peers send is refused past it,
/// so no peer can make a server allocate more than this.
/// </summary>
public sealed class ReplicaBudget(long bytes)
{
    private long _used;

    public long Bytes { get; } = bytes;
    public long Used => Interlocked.Read(ref _used);

    /// <summary>Takes <paramref name="bytes"/> from the budget, or refuses (typed) when it would be exceeded.</summary>
    public void Take(long bytes, string what)
    {
        if (Interlocked.Add(ref _used, bytes) <= Bytes)
            return;
        Interlocked.Add(ref _used, -bytes);
        throw new ClusterRequestException($"{what}: this server's replica budget of {Bytes / (1 << 20)} MiB is used up (Flm:ReplicaBudgetBytes)");
    }

    public void Give(long bytes) => Interlocked.Add(ref _used, -bytes);
}

/// <summary>A replica held whole, with the checksum it was sent with.</summary>
public sealed record HeldReplica(long Step, ChunkedBytes Bytes, string Checksum);

/// <summary>
/// The in-memory replicas one worker keeps: its own rank's and those of the rank it is the peer of (assembled
/// from chunks as they arrive). Of each rank at most the two newest steps: the newest may not be held by
/// every rank yet, and until it is, the one before it is the job's recovery point; once the coordinator
/// confirms the newest, the older one goes. So a worker holds about twice its rank's state, three times
/// while a new copy arrives. What a peer sends is checked before it is kept: chunk sizes and counts, the
/// silo's replica budget, and the whole replica's checksum. Thread-safe: the worker's background sender
/// writes its own.
/// </summary>
public sealed class ReplicaStore(ReplicaBudget budget, int chunkBytes = TensorChunk.MaxBytes)
{
    private readonly Lock _lock = new();
    private const int Kept = 2;
    private readonly Dictionary<(string Job, int Rank), List<HeldReplica>> _complete = [];
    private readonly Dictionary<(string Job, int Rank), (long Step, string Checksum, byte[]?[] Chunks)> _incoming = [];
    private readonly HashSet<string> _ended = [];

    public long Bytes
    {
        get
        {
            lock (_lock)
                return _complete.Values.Sum(list => list.Sum(r => r.Bytes.Length));
        }
    }

    /// <summary>Keeps this worker's own replica (counted in the budget like a peer's); of each rank only the newest steps stay.</summary>
    public void Put(string job, int rank, long step, ChunkedBytes bytes, string checksum)
    {
        budget.Take(bytes.Length, $"replica of rank {rank} at step {step}");
        lock (_lock)
            Keep((job, rank), new HeldReplica(step, bytes, checksum));
    }

    private void Keep((string Job, int Rank) key, HeldReplica replica)
    {
        if (!_complete.TryGetValue(key, out var held))
            _complete[key] = held = [];
        Release(held.Where(r => r.Step == replica.Step));
        held.RemoveAll(r => r.Step == replica.Step);
        held.Add(replica);
        held.Sort((x, y) => y.Step.CompareTo(x.Step));
        if (held.Count > Kept)
        {
            Release(held.Skip(Kept));
            held.RemoveRange(Kept, held.Count - Kept);
        }
    }

    /// <summary>
    /// Adds a chunk from a peer; the replica counts once its last chunk is in and its checksum matches. Replicas
    /// travel in chunks of the store's chunk size (the last one shorter); other sizes, counts no budget
    /// could hold, chunks that disagree with the first about the replica, and anything past the budget are refused
    /// (typed) without being kept.
    /// </summary>
    public void Receive(ReplicaChunk chunk)
    {
        var most = budget.Bytes / chunkBytes + 1;
        var last = chunk.Index == chunk.Count - 1;
        if (chunk.Data is null || chunk.Count < 1 || chunk.Count > most || chunk.Index < 0 || chunk.Index >= chunk.Count
            || (last ? chunk.Data.Length is 0 || chunk.Data.Length > chunkBytes : chunk.Data.Length != chunkBytes) || string.IsNullOrEmpty(chunk.Checksum))
            throw new ClusterRequestException($"replica chunk {chunk.Index} of {chunk.Count} ({chunk.Data?.Length ?? 0} bytes) is malformed: replicas travel in at most {most} chunks of {chunkBytes} bytes (the last one 1 … {chunkBytes}) with their checksum");
        lock (_lock)
        {
            if (_ended.Contains(chunk.JobId))
                return; // a late piece for a job that has ended
            var key = (chunk.JobId, chunk.Rank);
            if (!_incoming.TryGetValue(key, out var incoming) || incoming.Step != chunk.Step)
            {
                if (incoming.Chunks is not null && incoming.Step > chunk.Step)
                    return; // a late piece of an older replica
                if (incoming.Chunks is not null)
                    Release(incoming.Chunks);
                incoming = (chunk.Step, chunk.Checksum, new byte[]?[chunk.Count]);
                _incoming[key] = incoming;
            }
            if (chunk.Count != incoming.Chunks.Length || chunk.Checksum != incoming.Checksum)
                throw new ClusterRequestException($"replica chunk {chunk.Index} of rank {chunk.Rank} at step {chunk.Step} disagrees with the replica's first chunk about its count or checksum");
            if (incoming.Chunks[chunk.Index] is not null)
                return; // a repeated piece
            budget.Take(chunk.Data.Length, $"replica of rank {chunk.Rank} at step {chunk.Step}");
            incoming.Chunks[chunk.Index] = chunk.Data;
            if (incoming.Chunks.Any(c => c is null))
                return;
            _incoming.Remove(key);
            var bytes = new ChunkedBytes(incoming.Chunks!);
            if (bytes.Checksum() != incoming.Checksum)
            {
                budget.Give(bytes.Length);
                throw new ClusterRequestException($"the replica of rank {chunk.Rank} at step {chunk.Step} does not match its checksum; it is not kept");
            }
            Keep(key, new HeldReplica(chunk.Step, bytes, incoming.Checksum));
        }
    }

    public HeldReplica? Get(string job, int rank, long step)
    {
        lock (_lock)
            return _complete.TryGetValue((job, rank), out var held) ? held.Find(r => r.Step == step) : null;
    }

    public ReplicaChunk? Chunk(string job, int rank, long step, int index)
    {
        var replica = Get(job, rank, step);
        return replica is null || index < 0 || index >= replica.Bytes.Chunks.Count
            ? null
            : new ReplicaChunk(job, rank, step, index, replica.Bytes.Chunks.Count, replica.Bytes.Chunks[index], replica.Checksum);
    }

    /// <summary>Drops the job's replicas of steps before <paramref name="step"/> (once that step is the recovery point).</summary>
    public void DropOlder(string job, long step)
    {
        lock (_lock)
            foreach (var (_, held) in _complete.Where(kv => kv.Key.Job == job))
            {
                Release(held.Where(r => r.Step < step));
                held.RemoveAll(r => r.Step < step);
            }
    }

    /// <summary>The job has ended: its replicas go, and pieces that arrive later are ignored.</summary>
    public void DropJob(string job)
    {
        lock (_lock)
        {
            _ended.Add(job);
            foreach (var key in _complete.Keys.Where(k => k.Job == job).ToList())
            {
                Release(_complete[key]);
                _complete.Remove(key);
            }
            foreach (var key in _incoming.Keys.Where(k => k.Job == job).ToList())
            {
                Release(_incoming[key].Chunks);
                _incoming.Remove(key);
            }
        }
    }

    private void Release(IEnumerable<HeldReplica> replicas)
    {
        foreach (var r in replicas)
            budget.Give(r.Bytes.Length);
    }

    private void Release(byte[]?[] chunks) => budget.Give(chunks.Sum(c => (long)(c?.Length ?? 0)));
}

/// <summary>
/// The replica stores of this silo's workers, kept by the silo rather than by a worker's activation: if the
/// runtime replaces an activation (its directory entry was on a server that died), the copies it held for
/// its own rank and its peers are still here. They share the silo's replica budget.
/// </summary>
public sealed class SiloReplicas(FlmNodeOptions node)
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, ReplicaStore> _stores = new();

    public ReplicaBudget Budget { get; } = new(node.ReplicaBudgetBytes > 0 ? node.ReplicaBudgetBytes : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2);

    public ReplicaStore For(string worker) => _stores.GetOrAdd(worker, _ => new ReplicaStore(Budget));
}
