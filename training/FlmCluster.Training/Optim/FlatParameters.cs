using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Optim;

/// <summary>Where one parameter lives in the flat buffers.</summary>
public sealed record FlatEntry(ModelParameter Parameter, long Offset, long Count);

/// <summary>A contiguous range of the flat buffers whose elements share an optimizer treatment.</summary>
public sealed record FlatSegment(ParamGroup Group, long Start, long Length);

/// <summary>
/// One contiguous buffer holding all of a rank's parameters and one holding their gradients; every
/// parameter and its .grad are views into them (as Megatron's contiguous grad buffer). Backward
/// accumulates straight into the gradient buffer; the distributed optimizer reduce-scatters it and
/// all-gathers the parameter buffer without per-tensor copies. Parameters are ordered by optimizer group,
/// then by whether they count toward the gradient norm, so each treatment is a handful of ranges.
/// </summary>
public sealed class FlatParameters : IDisposable
{
    private readonly List<FlatEntry> _entries = [];

    public Tensor Params { get; }
    public Tensor Grads { get; }

    /// <summary>Real elements; the buffers are padded to <see cref="PaddedTotal"/> (a multiple of the DP size).</summary>
    public long Total { get; }
    public long PaddedTotal { get; }
    public IReadOnlyList<FlatEntry> Entries => _entries;
    public IReadOnlyList<FlatSegment> GroupSegments { get; }

    /// <summary>Ranges whose gradients count toward the global norm on this rank.</summary>
    public IReadOnlyList<(long Start, long Length)> NormSegments { get; }

    public FlatParameters(IReadOnlyList<ModelParameter> parameters, int tpRank, int dataParallelSize)
    {
        if (parameters.Count == 0)
            throw new ArgumentException("no parameters", nameof(parameters));
        var dtype = parameters[0].Tensor.dtype;
        var device = parameters[0].Tensor.device;
        var ordered = parameters
            .Select((p, i) => (p, i))
            .OrderBy(x => x.p.Spec.Group)
            .ThenBy(x => x.p.CountsForNorm(tpRank) ? 0 : 1)
            .ThenBy(x => x.i)
            .Select(x => x.p)
            .ToList();
        Total = ordered.Sum(p => p.Tensor.NumberOfElements);
        PaddedTotal = (Total + dataParallelSize - 1) / dataParallelSize * dataParallelSize;
        Params = zeros(PaddedTotal, dtype: dtype, device: device);
        Grads = zeros(PaddedTotal, dtype: dtype, device: device);

        using (no_grad())
        {
            long offset = 0;
            foreach (var p in ordered)
            {
                var n = p.Tensor.NumberOfElements;
                var shape = p.Tensor.shape;
                var paramView = Params.narrow(0, offset, n);
                paramView.copy_(p.Tensor.reshape(-1));
                p.Tensor.set_(paramView.view(shape));
                p.Tensor.grad = Grads.narrow(0, offset, n).view(shape);
                _entries.Add(new FlatEntry(p, offset, n));
                offset += n;
            }
        }

        GroupSegments = _entries
            .GroupBy(e => e.Parameter.Spec.Group)
            .Select(g => new FlatSegment(g.Key, g.Min(e => e.Offset), g.Sum(e => e.Count)))
            .ToList();
        NormSegments = Merge(_entries.Where(e => e.Parameter.CountsForNorm(tpRank)).Select(e => (e.Offset, e.Count)));
    }

    public FlatEntry Entry(string name) =>
        _entries.FirstOrDefault(e => e.Parameter.Name == name) ?? throw new KeyNotFoundException(name);

    public void ZeroGrads() => Grads.zero_();

    public long Bytes => PaddedTotal * Params.ElementSize;

    private static List<(long, long)> Merge(IEnumerable<(long Start, long Length)> ranges)
    {
        var merged = new List<(long Start, long Length)>();
        foreach (var r in ranges.OrderBy(r => r.Start))
        {
            if (merged.Count > 0 && merged[^1].Start + merged[^1].Length == r.Start)
                merged[^1] = (merged[^1].Start, merged[^1].Length + r.Length);
            else
                merged.Add(r);
        }
        return merged;
    }

    public void Dispose()
    {
        Params.Dispose();
        Grads.Dispose();
    }
}
