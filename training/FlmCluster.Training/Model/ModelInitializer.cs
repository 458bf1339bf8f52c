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

    public static ulong SeedFor(ulong seed, string name)
    {
        // FNV-1a of the name, mixed with the job seed: stable across processes and platforms.
        var hash = 14695981039346656037UL;
        foreach (var b in Encoding.UTF8.GetBytes(name))
            hash = (hash ^ b) * 1099511628211UL;
        return SampleOrder.Mix(seed ^ hash) & 0x7FFF_FFFF_FFFF_FFFFUL;
    }
}
