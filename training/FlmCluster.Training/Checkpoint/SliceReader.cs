using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// Reads parts of a checkpoint's global tensors — the slice of one rank of any layout, or any runs of global
/// elements — from just the byte ranges of the shards that hold them, whatever layout saved them. Bytes go
/// straight into the target when it is host memory of the checkpoint's dtype; otherwise through one staging
/// buffer taken from the budget, so a tensor of any size never needs more temporary memory than the budget.
/// </summary>
public sealed class SliceReader(CheckpointReader checkpoint, IShardBytes shards, ReshardBudget budget)
{
    /// <summary>One byte range of a shard and where its elements go in the target.</summary>
    private readonly record struct Segment(string Shard, long Offset, long Elements, long At);

    private readonly Dictionary<(string Kind, string Name), Dictionary<int, PieceRecord[]>> _pieces = [];

    public CheckpointReader Checkpoint => checkpoint;

    /// <summary>
    /// Fills <paramref name="target"/> (contiguous, n elements) with elements [<paramref name="from"/>, from + n) of
    /// slice <paramref name="slice"/> of a <paramref name="tpSize"/>-way split of tensor (<paramref name="kind"/>, <paramref name="name"/>).
    /// </summary>
    public void ReadSlice(string kind, string name, int slice, int tpSize, long from, Tensor target)
    {
        var record = checkpoint.Record(kind, name);
        var geometry = new SliceGeometry(record.Shape, record.Split, tpSize);
        ReadRuns(kind, name, geometry.Runs(slice, from, from + target.NumberOfElements).Select(r => (r.Global, r.Length, r.At - from)), target);
    }

    /// <summary>Copies runs of global elements (global position, length, position in the target) into <paramref name="target"/>.</summary>
    public void ReadRuns(string kind, string name, IEnumerable<(long Global, long Length, long At)> runs, Tensor target)
    {
        var record = checkpoint.Record(kind, name);
        var dtype = SafeTensors.ParseDType(record.DType);
        if (!target.is_contiguous())
            throw new ArgumentException("a slice is read into contiguous memory", nameof(target));
        var segments = Segments(record, dtype, runs);
        using var flat = target.view(-1);
        if (flat.device_type == TorchSharp.DeviceType.CPU && flat.dtype == dtype)
            ReadDirect(segments, flat, dtype);
        else
            ReadStaged(segments, flat, dtype);
    }

    /// <summary>The shard byte ranges of the runs, neighbours merged.</summary>
    private List<Segment> Segments(TensorRecord record, ScalarType dtype, IEnumerable<(long Global, long Length, long At)> runs)
    {
        var geometry = new SliceGeometry(record.Shape, record.Split, record.TpSize);
        var element = SafeTensors.ElementSize(dtype);
        var pieces = PiecesOf(record);
        var segments = new List<Segment>();
        foreach (var (global, length, at) in runs)
        {
            for (long done = 0; done < length;)
            {
                var g = global + done;
                var (slice, position) = geometry.Locate(g);
                var inSlice = Math.Min(length - done, geometry.Contiguous(g));
                var sorted = pieces[slice];
                var i = Array.FindLastIndex(sorted, p => p.FlatStart <= position);
                var piece = sorted[i];
                var n = Math.Min(inSlice, piece.FlatStart + piece.FlatLength - position);
                var offset = checkpoint.ByteOffset(piece, dtype) + (position - piece.FlatStart) * element;
                var segment = new Segment(piece.File, offset, n, at + done);
                if (segments.Count > 0 && segments[^1] is var last && last.Shard == segment.Shard
                    && last.Offset + last.Elements * element == offset && last.At + last.Elements == segment.At)
                    segments[^1] = last with { Elements = last.Elements + n };
                else
                    segments.Add(segment);
                done += n;
            }
        }
        return segments;
    }

    /// <summary>Each slice's pieces by start (replicated tensors: the first slice holds everything).</summary>
    private Dictionary<int, PieceRecord[]> PiecesOf(TensorRecord record)
    {
        if (_pieces.TryGetValue((record.Kind, record.Name), out var cached))
            return cached;
        var bySlice = record.Pieces.GroupBy(p => p.TpRank).ToDictionary(g => g.Key, g => g.OrderBy(p => p.FlatStart).ToArray());
        return _pieces[(record.Kind, record.Name)] = bySlice;
    }

    /// <summary>Bytes straight into the target's memory (host, same dtype), at most 1 GiB per read (a span's limit is 2 GiB).</summary>
    private void ReadDirect(List<Segment> segments, Tensor flat, ScalarType dtype)
    {
        var element = SafeTensors.ElementSize(dtype);
        var most = (1L << 30) / element;
        foreach (var s in segments)
            for (long done = 0; done < s.Elements; done += most)
            {
                var n = Math.Min(most, s.Elements - done);
                using var part = flat.narrow(0, s.At + done, n);
                shards.Read(s.Shard, s.Offset + done * element, part.bytes);
            }
    }

    /// <summary>Bytes into a staging buffer from the budget, copied (and converted) into the target whenever it is full.</summary>
    private void ReadStaged(List<Segment> segments, Tensor flat, ScalarType dtype)
    {
        var total = segments.Sum(s => s.Elements);
        if (total == 0)
            return;
        var element = SafeTensors.ElementSize(dtype);
        using var lease = budget.Take(Math.Max(1, Math.Min(total, Math.Min(budget.Available, 1L << 30) / element)), dtype);
        var staging = lease.Tensor;
        var capacity = staging.NumberOfElements;
        var filled = new List<(long At, long From, long Elements)>();
        long used = 0;
        void Flush()
        {
            foreach (var (at, from, n) in filled)
            {
                using var into = flat.narrow(0, at, n);
                using var part = staging.narrow(0, from, n);
                into.copy_(part);
            }
            filled.Clear();
            used = 0;
        }
        foreach (var s in segments)
            for (long done = 0; done < s.Elements;)
            {
                if (used == capacity)
                    Flush();
                var n = Math.Min(capacity - used, s.Elements - done);
                using (var part = staging.narrow(0, used, n))
                    shards.Read(s.Shard, s.Offset + done * element, part.bytes);
                filled.Add((s.At + done, used, n));
                used += n;
                done += n;
            }
        Flush();
    }
}
