namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// The shards of a checkpoint held in memory elsewhere (the in-memory replicas of a step, on the ranks that took
/// them and on their peers): each shard is fetched whole the first time a slice needs it — the fetch checks it
/// against its checksum — and kept until the restore is over, so a rank fetches only the shards its slices
/// are in.
/// </summary>
public sealed class FetchedShards(Func<string, ChunkedBytes> fetch) : IShardBytes
{
    private readonly Dictionary<string, ChunkedBytes> _shards = [];

    /// <summary>The shards fetched so far, by file name.</summary>
    public IReadOnlyList<string> Fetched
    {
        get
        {
            lock (_shards)
                return _shards.Keys.Order(StringComparer.Ordinal).ToList();
        }
    }

    public void Read(string shard, long offset, Span<byte> destination)
    {
        ChunkedBytes bytes;
        lock (_shards)
        {
            if (!_shards.TryGetValue(shard, out bytes!))
                _shards[shard] = bytes = fetch(shard);
        }
        if (offset < 0 || offset + destination.Length > bytes.Length)
            throw new InvalidCheckpointException($"shard {shard} has {bytes.Length} bytes; bytes {offset} … {offset + destination.Length} were asked for");
        bytes.ReadAt(offset, destination);
    }
}
