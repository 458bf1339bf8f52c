using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace FlmCluster.Training.Parallel;

/// <summary>Element-wise reductions over raw little-endian tensor bytes, for the collectives.</summary>
public static class Reduction
{
    public static int ElementSize(ScalarType type) => type switch
    {
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.BFloat16 or ScalarType.Float16 => 2,
        ScalarType.Byte or ScalarType.Int8 or ScalarType.Bool => 1,
        _ => throw new NotSupportedException($"collectives do not support {type} tensors"),
    };

    public static bool CanReduce(ScalarType type) =>
        type is ScalarType.Float32 or ScalarType.Float64 or ScalarType.BFloat16 or ScalarType.Int64 or ScalarType.Int32;

    /// <summary>acc ← op(acc, src), element-wise.</summary>
    public static void Accumulate(Span<byte> acc, ReadOnlySpan<byte> src, ScalarType type, ReduceOp op)
    {
        if (acc.Length != src.Length)
            throw new ArgumentException("reduction operands differ in length");
        switch (type)
        {
            case ScalarType.Float32:
                Apply(MemoryMarshal.Cast<byte, float>(acc), MemoryMarshal.Cast<byte, float>(src), op);
                break;
            case ScalarType.Float64:
                Apply(MemoryMarshal.Cast<byte, double>(acc), MemoryMarshal.Cast<byte, double>(src), op);
                break;
            case ScalarType.Int64:
                {
                    var a = MemoryMarshal.Cast<byte, long>(acc);
                    var s = MemoryMarshal.Cast<byte, long>(src);
                    for (var i = 0; i < a.Length; i++) a[i] = op == ReduceOp.Sum ? a[i] + s[i] : Math.Max(a[i], s[i]);
                    break;
                }
            case ScalarType.Int32:
                {
                    var a = MemoryMarshal.Cast<byte, int>(acc);
                    var s = MemoryMarshal.Cast<byte, int>(src);
                    for (var i = 0; i < a.Length; i++) a[i] = op == ReduceOp.Sum ? a[i] + s[i] : Math.Max(a[i], s[i]);
                    break;
                }
            case ScalarType.BFloat16:
                {
                    var a = MemoryMarshal.Cast<byte, ushort>(acc);
                    var s = MemoryMarshal.Cast<byte, ushort>(src);
                    for (var i = 0; i < a.Length; i++)
                    {
                        var x = BFloat16ToFloat(a[i]);
                        var y = BFloat16ToFloat(s[i]);
                        a[i] = FloatToBFloat16(op == ReduceOp.Sum ? x + y : MathF.Max(x, y));
                    }
                    break;
                }
            default:
                throw new NotSupportedException($"collectives cannot reduce {type} tensors");
        }
    }

    private static void Apply<T>(Span<T> acc, ReadOnlySpan<T> src, ReduceOp op)
        where T : System.Numerics.IFloatingPointIeee754<T>
    {
        if (op == ReduceOp.Sum)
            TensorPrimitives.Add(acc, src, acc);
        else
            TensorPrimitives.Max(acc, src, acc);
    }

    private static float BFloat16ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    private static ushort FloatToBFloat16(float value)
    {
        // Round to nearest even, as torch does.
        var bits = (uint)BitConverter.SingleToInt32Bits(value);
        if (float.IsNaN(value))
            return (ushort)((bits >> 16) | 0x40);
        var rounding = 0x7FFFu + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }
}
