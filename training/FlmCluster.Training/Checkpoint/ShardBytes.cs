using Microsoft.Win32.SafeHandles;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// Byte ranges of a checkpoint's shards, by shard file name. A restore reads only the ranges its slices need
/// through this, so the shards may live in files (<see cref="ShardFiles"/>) or anywhere else that can serve
/// a range, such as a peer's in-memory replica.
/// </summary>
public interface IShardBytes
{
    /// <summary>Fills <paramref name="destination"/> with the bytes of shard <paramref name="shard"/> from <paramref name="offset"/>.</summary>
    void Read(string shard, long offset, Span<byte> destination);
}

/// <summary>The shard files of a checkpoint folder, each opened once and read at offsets (no seeking, safe from several threads).</summary>
public sealed class ShardFiles(string directory) : IShardBytes, IDisposable
{
    private readonly Dictionary<string, SafeFileHandle> _open = [];

    public void Read(string shard, long offset, Span<byte> destination)
    {
        SafeFileHandle handle;
        lock (_open)
        {
            if (!_open.TryGetValue(shard, out handle!))
                _open[shard] = handle = File.OpenHandle(Path.Combine(directory, shard), FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        }
        while (destination.Length > 0)
        {
            var n = RandomAccess.Read(handle, destination, offset);
            if (n == 0)
                throw new InvalidCheckpointException($"shard {shard} of '{directory}' ends before byte {offset + destination.Length}");
            destination = destination[n..];
            offset += n;
        }
    }

    public void Dispose()
    {
        lock (_open)
        {
            foreach (var handle in _open.Values)
                handle.Dispose();
            _open.Clear();
        }
    }
}
