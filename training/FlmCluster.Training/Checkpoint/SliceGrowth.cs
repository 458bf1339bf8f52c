using FlmCluster.Training.Growth;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// One rank's slice of a grown tensor (<see cref="TensorGrowth"/>), made without the whole tensor: the new weights
/// streamed in pieces from the stage's generator (only the elements of the slice are kept), then the old block —
/// the old tensor's values in the top-left corner (per Q, K and V block for the packed projection) — read from
/// just the checkpoint bytes that hold it. The same numbers as growing the whole tensor and slicing it, within
/// the budget.
/// </summary>
public sealed class SliceGrowth(SliceReader checkpoint, ReshardBudget budget, TensorGrowth growth)
{
    /// <summary>
    /// Fills <paramref name="target"/> with elements [<paramref name="from"/>, from + n) of slice <paramref name="slice"/>
    /// (of <paramref name="tpSize"/>) of the grown tensor of <paramref name="spec"/>: new weights converted to
    /// <paramref name="fresh"/> (zero when null), overlaid by the old block of checkpoint tensor <paramref name="old"/>.
    /// </summary>
    public void Fill(ParamSpec spec, int slice, int tpSize, long from, Tensor target, ScalarType? fresh, (string Kind, string Name)? old)
    {
        var geometry = new SliceGeometry(spec.Shape, spec.Split, tpSize);
        var runs = geometry.Runs(slice, from, from + target.NumberOfElements).Select(r => (r.Global, r.Length, r.At - from)).ToList();
        using var flat = target.view(-1);
        if (fresh is { } type)
            FillFresh(spec, runs, flat, type);
        else
            flat.zero_();
        if (old is { } source)
            checkpoint.ReadRuns(source.Kind, source.Name, OldBlock(spec, checkpoint.Checkpoint.Record(source.Kind, source.Name).Shape, runs), flat);
    }

    /// <summary>The new weights of the runs: the spec's tensor streamed once, in order, through a buffer from the budget.</summary>
    private void FillFresh(ParamSpec spec, List<(long Global, long Length, long At)> runs, Tensor flat, ScalarType type)
    {
        if (runs.Count == 0)
            return;
        // An fp32 piece, and its copy in the target type when that differs.
        var converted = type != ScalarType.Float32;
        var perElement = 4 + (converted ? SafeTensors.ElementSize(type) : 0);
        var elements = Math.Min(spec.GlobalElements, budget.Available / perElement);
        using var pieces = budget.Take(elements, ScalarType.Float32);
        using var typedPieces = converted ? budget.Take(elements, type) : null;
        var next = 0;
        ModelInitializer.Stream(spec, growth.Seed, growth.To.Mup.QueryZeroInit, pieces.Tensor, runs[^1].Global + runs[^1].Length, (start, piece) =>
        {
            using var typed = converted ? typedPieces!.Tensor.narrow(0, 0, piece.NumberOfElements) : piece.alias();
            if (converted)
                typed.copy_(piece);
            var end = start + piece.NumberOfElements;
            while (next < runs.Count && runs[next].Global + runs[next].Length <= start)
                next++;
            for (var i = next; i < runs.Count && runs[i].Global < end; i++)
            {
                var (global, length, at) = runs[i];
                var lo = Math.Max(global, start);
                var hi = Math.Min(global + length, end);
                using var into = flat.narrow(0, at + lo - global, hi - lo);
                using var part = typed.narrow(0, lo - start, hi - lo);
                into.copy_(part);
            }
        });
    }

    /// <summary>
    /// The parts of the runs (new tensor's positions) inside the old block, as runs of the old tensor: row r and
    /// column c of the new tensor hold old row r (in the same Q/K/V block for a packed projection) and column c
    /// when both exist there.
    /// </summary>
    private static IEnumerable<(long Global, long Length, long At)> OldBlock(ParamSpec spec, long[] oldShape, List<(long Global, long Length, long At)> runs)
    {
        var grown = new SliceGeometry(spec.Shape, spec.Split, 1);
        var previous = new SliceGeometry(oldShape, spec.Split, 1);
        var (columns, oldColumns) = (grown.Columns, previous.Columns);
        var packed = spec.Split == TpSplit.PackedQkvDim0;
        var (block, oldBlock) = packed ? (grown.Rows / 3, previous.Rows / 3) : (grown.Rows, previous.Rows);
        foreach (var (global, length, at) in runs)
        {
            for (var g = global; g < global + length;)
            {
                var (row, column) = (g / columns, g % columns);
                var inRow = Math.Min(global + length - g, columns - column);
                var (part, inBlock) = (row / block, row % block);
                if (inBlock < oldBlock && column < oldColumns)
                    yield return ((part * oldBlock + inBlock) * oldColumns + column, Math.Min(inRow, oldColumns - column), at + g - global);
                g += inRow;
            }
        }
    }
}
