using FlmCluster.Training.Model;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// Where the elements of one tensor-parallel slice sit in the global tensor, seen as rows × columns (the first
/// dimension × the rest) and flattened row-major: a slice is a block of rows (Dim0; one block in each of Q, K
/// and V for the packed projection), a band of columns (Dim1), or everything (Replicated). A slice's own
/// elements are row-major over its rows and columns.
/// </summary>
public readonly record struct SliceGeometry(long[] Shape, TpSplit Split, int TpSize)
{
    public long Rows => Shape.Length == 0 ? 1 : Shape[0];
    public long Columns => Shape.Length <= 1 ? 1 : Shape.Skip(1).Aggregate(1L, (a, b) => a * b);

    /// <summary>Columns of a slice.</summary>
    public long Width => Split == TpSplit.Dim1 ? Columns / TpSize : Columns;

    /// <summary>Rows of a slice.</summary>
    public long SliceRows => Split is TpSplit.Dim0 or TpSplit.PackedQkvDim0 ? Rows / TpSize : Rows;

    public long SliceElements => SliceRows * Width;

    private long Block => Rows / 3;
    private long PerSlice => Block / TpSize;

    /// <summary>The global (flat) position of element <paramref name="at"/> of slice <paramref name="slice"/>.</summary>
    public long GlobalFlat(int slice, long at)
    {
        var (row, column) = (at / Width, at % Width);
        var globalRow = Split switch
        {
            TpSplit.Dim0 => slice * SliceRows + row,
            TpSplit.PackedQkvDim0 => row / PerSlice * Block + slice * PerSlice + row % PerSlice,
            _ => row,
        };
        return globalRow * Columns + (Split == TpSplit.Dim1 ? slice * Width : 0) + column;
    }

    /// <summary>Which slice holds global element <paramref name="global"/>, and where among its own elements.</summary>
    public (int Slice, long At) Locate(long global)
    {
        var (row, column) = (global / Columns, global % Columns);
        switch (Split)
        {
            case TpSplit.Dim0:
                {
                    var slice = (int)(row / SliceRows);
                    return (slice, (row - slice * SliceRows) * Width + column);
                }
            case TpSplit.PackedQkvDim0:
                {
                    var slice = (int)(row % Block / PerSlice);
                    return (slice, (row / Block * PerSlice + row % Block % PerSlice) * Width + column);
                }
            case TpSplit.Dim1:
                {
                    var slice = (int)(column / Width);
                    return (slice, row * Width + column - slice * Width);
                }
            default:
                return (0, global);
        }
    }

    /// <summary>How many elements from global element <paramref name="global"/> on lie next to each other both globally and in its slice.</summary>
    public long Contiguous(long global)
    {
        var (row, column) = (global / Columns, global % Columns);
        var end = Split switch
        {
            TpSplit.Dim0 => (row / SliceRows + 1) * SliceRows * Columns,
            TpSplit.PackedQkvDim0 => (row / PerSlice + 1) * PerSlice * Columns,
            TpSplit.Dim1 => row * Columns + (column / Width + 1) * Width,
            _ => Rows * Columns,
        };
        return end - global;
    }

    /// <summary>
    /// Elements [<paramref name="from"/>, <paramref name="to"/>) of slice <paramref name="slice"/> as runs that are
    /// contiguous both in the slice and globally, in order: (global position, length, position in the slice).
    /// </summary>
    public IEnumerable<(long Global, long Length, long At)> Runs(int slice, long from, long to)
    {
        for (var at = from; at < to;)
        {
            var global = GlobalFlat(slice, at);
            var length = Math.Min(to - at, Contiguous(global));
            yield return (global, length, at);
            at += length;
        }
    }
}
