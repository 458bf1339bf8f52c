using System.Text;
using FlmCluster.Training.Data;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>
/// Layout-independent initialisation: every global tensor is drawn whole from a generator seeded by
/// (seed, name), then sliced to this rank's shard, so any layout starts from the same model.
/// </summary>
public static class ModelInitializer
{
    public static void Initialize(FlmModel model, ulong seed)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (var p in model.Parameters)
        {
            var full = Generate(p.Spec, seed, model.Config.Mup.QueryZeroInit);
            var local = p.Spec.Slice(full, model.Tp.Rank, model.Tp.Size);
            p.Tensor.copy_(local);
        }
    }

    /// <summary>The whole tensor for a spec (fp32, CPU).</summary>
    public static Tensor Generate(ParamSpec spec, ulong seed, bool queryZeroInit = false)
    {
        if (spec.InitStd == 0)
            return full(spec.Shape, spec.InitConstant, dtype: ScalarType.Float32);
        var generator = new Generator(SeedFor(seed, spec.Name));
        var t = randn(spec.Shape, dtype: ScalarType.Float32, generator: generator) * spec.InitStd;
        if (queryZeroInit && spec.Name.EndsWith("attn.c_attn.weight", StringComparison.Ordinal))
            t.narrow(0, 0, spec.Shape[0] / 3).zero_();
        return t;
    }

    /// <summary>
    /// The whole tensor of a spec, generated in order in pieces that take turns in <paramref name="buffer"/> (fp32,
    /// contiguous), each handed to <paramref name="visit"/> with its flat start; pieces past <paramref name="upTo"/>
    /// are not made. The values are those of <see cref="Generate"/> bit for bit: libtorch fills a CPU normal tensor
    /// from one generator 16 values at a time (redrawing a last group of fewer than 16), so pieces of a multiple
    /// of 16 elements, the last taking the rest, continue one another exactly. Memory: the buffer, which needs
    /// the whole tensor's elements or at least 31.
    /// </summary>
    public static void Stream(ParamSpec spec, ulong seed, bool queryZeroInit, Tensor buffer, long upTo, Action<long, Tensor> visit)
    {
        var total = spec.GlobalElements;
        upTo = Math.Min(upTo, total);
        var room = buffer.NumberOfElements;
        if (room < Math.Min(total, 31))
            throw new ArgumentException($"a buffer of {room} elements cannot stream {spec.Name}", nameof(buffer));
        // The last piece may be up to 15 elements longer than the others.
        var chunk = total <= room ? total : Math.Max(16, (room - 15) / 16 * 16);
        using var generator = spec.InitStd == 0 ? null : new Generator(SeedFor(seed, spec.Name));
        var zeroEnd = queryZeroInit && spec.Name.EndsWith("attn.c_attn.weight", StringComparison.Ordinal) ? total / 3 : 0;
        for (long start = 0; start < upTo;)
        {
            var left = total - start;
            var count = left - chunk < 16 ? left : chunk;
            using var piece = buffer.narrow(0, 0, count);
            if (generator is null)
                piece.fill_(spec.InitConstant);
            else
            {
                piece.normal_(0, 1, generator); // what randn does to the tensor it makes
                piece.mul_(spec.InitStd);
            }
            if (start < zeroEnd)
                piece.narrow(0, 0, Math.Min(count, zeroEnd - start)).zero_();
            visit(start, piece);
            start += count;
        }
    }

    public static ulong SeedFor(ulong seed, string name)
    {
        // FNV-1a of the name, mixed with the job seed: stable across processes and platforms.
        var hash = 14695981039346656037UL;
        foreach (var b in Encoding.UTF8.GetBytes(name))
            hash = (hash ^ b) * 1099511628211UL;
        return SampleOrder.Mix(seed ^ hash) & 0x7FFF_FFFF_FFFF_FFFFUL;
    }
}
