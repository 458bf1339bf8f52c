using System.Globalization;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>What a rank wrote: the shard file and the tensor pieces in it.</summary>
public sealed record WrittenShard(ShardRecord Shard, IReadOnlyList<TensorRecord> Tensors);

/// <summary>
/// Writes one rank's snapshot as a safetensors shard — to a file (fsynced) for a checkpoint, or into host memory
/// for an in-memory replica, byte for byte the same — and describes its pieces by global name and slice.
/// </summary>
public static class ShardWriter
{
    public static string FileName(int rank) => $"shard-{rank:D5}.safetensors";

    public static WrittenShard Write(RankSnapshot snapshot, string directory)
    {
        var (file, tensors, records, meta) = Lay(snapshot);
        var (bytes, sha) = SafeTensors.Write(Path.Combine(directory, file), tensors, meta);
        return new WrittenShard(new ShardRecord(file, snapshot.Rank, bytes, sha), records);
    }

    /// <summary>The shard in host memory, cut into chunks of <paramref name="chunkSize"/> bytes.</summary>
    public static (ChunkedBytes Bytes, WrittenShard Shard) Serialize(RankSnapshot snapshot, int chunkSize)
    {
        var (file, tensors, records, meta) = Lay(snapshot);
        using var writer = new ChunkedBytes.Writer(chunkSize);
        var sha = SafeTensors.Write(writer, tensors, meta, hash: true)!;
        var bytes = writer.ToBytes();
        return (bytes, new WrittenShard(new ShardRecord(file, snapshot.Rank, bytes.Length, sha), records));
    }

    /// <summary>The shard's tensors by key, their records, and its metadata.</summary>
    private static (string File, Dictionary<string, Tensor> Tensors, List<TensorRecord> Records, Dictionary<string, string> Meta) Lay(RankSnapshot snapshot)
    {
        var file = FileName(snapshot.Rank);
        var tensors = new Dictionary<string, Tensor>();
        var records = new List<TensorRecord>();
        foreach (var entry in snapshot.Entries.Where(e => !e.IsTiedCopy))
        {
            var spec = entry.Spec;
            if (snapshot.Params is { } parameters)
            {
                var key = $"param/{spec.Name}";
                tensors[key] = parameters.narrow(0, entry.Offset, entry.Count).view(entry.LocalShape);
                records.Add(Record("param", spec, parameters, snapshot.TpSize, new PieceRecord(file, key, snapshot.TpRank, 0, entry.Count)));
            }
            // The part of this parameter inside the rank's optimizer shard.
            var lo = Math.Max(entry.Offset, snapshot.ShardStart);
            var hi = Math.Min(entry.Offset + entry.Count, snapshot.ShardStart + snapshot.ShardLength);
            if (hi <= lo)
                continue;
            foreach (var (kind, shard) in snapshot.Optimizer)
            {
                var start = lo - entry.Offset;
                var key = string.Create(CultureInfo.InvariantCulture, $"{kind}/{spec.Name}@{start}");
                tensors[key] = shard.narrow(0, lo - snapshot.ShardStart, hi - lo);
                records.Add(Record(kind, spec, shard, snapshot.TpSize, new PieceRecord(file, key, snapshot.TpRank, start, hi - lo)));
            }
        }
        var meta = new Dictionary<string, string> { ["format"] = CheckpointManifest.FormatName, ["rank"] = snapshot.Rank.ToString(CultureInfo.InvariantCulture) };
        return (file, tensors, records, meta);
    }

    private static TensorRecord Record(string kind, Model.ParamSpec spec, Tensor source, int tpSize, PieceRecord piece) =>
        new(kind, spec.Name, spec.Shape, SafeTensors.DTypeName(source.dtype), spec.Split, tpSize, [piece]);

    /// <summary>Joins the pieces of all shards into one record per (kind, name).</summary>
    public static List<TensorRecord> Merge(IEnumerable<WrittenShard> shards) =>
        shards.SelectMany(s => s.Tensors)
            .GroupBy(t => (t.Kind, t.Name))
            .Select(g => g.First() with { Pieces = g.SelectMany(t => t.Pieces).OrderBy(p => p.TpRank).ThenBy(p => p.FlatStart).ToList() })
            .OrderBy(t => t.Kind, StringComparer.Ordinal).ThenBy(t => t.Name, StringComparer.Ordinal)
            .ToList();
}
