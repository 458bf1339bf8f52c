using FlmCluster.Training.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FlmCluster.Reference;

/// <summary>
/// The FLM forward pass written plainly with TorchSharp's built-in modules (nn.Linear, nn.LayerNorm,
/// cross_entropy over full logits), trained with torch.optim.AdamW and clip_grad_norm_. It shares no model
/// or optimizer code with the engine and serves as the independent reference in tests and the baseline
/// in benchmarks.
/// </summary>
public sealed class PlainFlm : nn.Module
{
    private readonly ModelConfig _c;
    private readonly Parameter _wte;
    private readonly List<(LayerNorm Ln1, Linear Qkv, Linear Proj, LayerNorm Ln2, Linear Fc, Linear Out)> _blocks = [];
    private readonly LayerNorm _lnF;
    private readonly Tensor _cos, _sin, _scale;

    public PlainFlm(ModelConfig c) : base("PlainFlm")
    {
        _c = c;
        long d = c.Hidden;
        _wte = new Parameter(zeros(c.PaddedVocab, d));
        register_parameter("wte", _wte);
        for (var i = 0; i < c.Layers; i++)
        {
            var b = (nn.LayerNorm(d, c.LnEps), nn.Linear(d, 3 * d), nn.Linear(d, d), nn.LayerNorm(d, c.LnEps), nn.Linear(d, c.FfnSize), nn.Linear(c.FfnSize, d));
            _blocks.Add(b);
            register_module($"ln1_{i}", b.Item1);
            register_module($"qkv_{i}", b.Item2);
            register_module($"proj_{i}", b.Item3);
            register_module($"ln2_{i}", b.Item4);
            register_module($"fc_{i}", b.Item5);
            register_module($"out_{i}", b.Item6);
        }
        _lnF = nn.LayerNorm(d, c.LnEps);
        register_module("ln_f", _lnF);

        // xPos tables for full-length training sequences, straight from the definition.
        var t = c.SeqLen;
        var dh = c.HeadDim;
        var cos = new double[t, dh];
        var sin = new double[t, dh];
        var scale = new double[t, dh];
        var minPos = (int)Math.Floor(-t / 2.0);
        for (var p = 0; p < t; p++)
        {
            for (var j = 0; j < dh; j++)
            {
                var i = j % (dh / 2);
                var angle = p / Math.Pow(c.Xpos.Theta, 2.0 * i / dh);
                cos[p, j] = Math.Cos(angle);
                sin[p, j] = Math.Sin(angle);
                var zeta = (2.0 * i + c.Xpos.Gamma * dh) / ((1 + c.Xpos.Gamma) * dh);
                scale[p, j] = Math.Pow(zeta, (p + minPos) / c.Xpos.ScaleBase);
            }
        }
        _cos = tensor(cos).to(ScalarType.Float32);
        _sin = tensor(sin).to(ScalarType.Float32);
        _scale = tensor(scale).to(ScalarType.Float32);
    }

    /// <summary>Copies parameters from global-name tensors (the engine's names, [out, in] weights).</summary>
    public void Load(IReadOnlyDictionary<string, Tensor> p)
    {
        using var _ = no_grad();
        _wte.copy_(p["transformer.wte.weight"]);
        for (var i = 0; i < _blocks.Count; i++)
        {
            var b = _blocks[i];
            var n = $"transformer.h.{i}.";
            b.Ln1.weight!.copy_(p[n + "ln_1.weight"]); b.Ln1.bias!.copy_(p[n + "ln_1.bias"]);
            b.Qkv.weight.copy_(p[n + "attn.c_attn.weight"]); b.Qkv.bias!.copy_(p[n + "attn.c_attn.bias"]);
            b.Proj.weight.copy_(p[n + "attn.c_proj.weight"]); b.Proj.bias!.copy_(p[n + "attn.c_proj.bias"]);
            b.Ln2.weight!.copy_(p[n + "ln_2.weight"]); b.Ln2.bias!.copy_(p[n + "ln_2.bias"]);
            b.Fc.weight.copy_(p[n + "mlp.c_fc.weight"]); b.Fc.bias!.copy_(p[n + "mlp.c_fc.bias"]);
            b.Out.weight.copy_(p[n + "mlp.c_proj.weight"]); b.Out.bias!.copy_(p[n + "mlp.c_proj.bias"]);
        }
        _lnF.weight!.copy_(p["transformer.ln_f.weight"]);
        _lnF.bias!.copy_(p["transformer.ln_f.bias"]);
    }

    public Dictionary<string, Tensor> Export()
    {
        var r = new Dictionary<string, Tensor> { ["transformer.wte.weight"] = _wte };
        for (var i = 0; i < _blocks.Count; i++)
        {
            var b = _blocks[i];
            var n = $"transformer.h.{i}.";
            r[n + "ln_1.weight"] = b.Ln1.weight!; r[n + "ln_1.bias"] = b.Ln1.bias!;
            r[n + "attn.c_attn.weight"] = b.Qkv.weight; r[n + "attn.c_attn.bias"] = b.Qkv.bias!;
            r[n + "attn.c_proj.weight"] = b.Proj.weight; r[n + "attn.c_proj.bias"] = b.Proj.bias!;
            r[n + "ln_2.weight"] = b.Ln2.weight!; r[n + "ln_2.bias"] = b.Ln2.bias!;
            r[n + "mlp.c_fc.weight"] = b.Fc.weight; r[n + "mlp.c_fc.bias"] = b.Fc.bias!;
            r[n + "mlp.c_proj.weight"] = b.Out.weight; r[n + "mlp.c_proj.bias"] = b.Out.bias!;
        }
        r["transformer.ln_f.weight"] = _lnF.weight!;
        r["transformer.ln_f.bias"] = _lnF.bias!;
        return r;
    }

    private static Tensor RotateHalf(Tensor x)
    {
        var h = x.shape[^1] / 2;
        return cat([x.narrow(-1, h, h).neg(), x.narrow(-1, 0, h)], -1);
    }

    /// <summary>ids [B, T] (T = seq_len) → logits [B, T, V_padded].</summary>
    public Tensor Logits(Tensor ids)
    {
        long bsz = ids.shape[0], t = ids.shape[1], heads = _c.Heads, dh = _c.HeadDim, d = _c.Hidden;
        var h = _wte[ids] * _c.Mup.InputMult;
        foreach (var (ln1, qkv, proj, ln2, fc, output) in _blocks)
        {
            var x = qkv.forward(ln1.forward(h)).view(bsz, t, 3, heads, dh).permute(2, 0, 3, 1, 4);
            var q = (x[0] * _cos + RotateHalf(x[0]) * _sin) * _scale;
            var k = (x[1] * _cos + RotateHalf(x[1]) * _sin) / _scale;
            var a = nn.functional.scaled_dot_product_attention(q, k, x[2], null, 0.0, true);
            h = h + proj.forward(a.transpose(1, 2).reshape(bsz, t, d));
            h = h + output.forward(nn.functional.gelu(fc.forward(ln2.forward(h)), TorchSharp.Modules.GELU.Approximate.tanh));
        }
        return matmul(_lnF.forward(h), _wte.t()) * (_c.Mup.OutputMult / _c.WidthMult);
    }

    /// <summary>AdamW parameter groups under μP: matrices η/m and wd·m, embedding η and wd, the rest η and no decay.</summary>
    public AdamW CreateOptimizer(OptimizerConfig o)
    {
        var m = _c.WidthMult;
        var matrices = _blocks.SelectMany(b => new[] { b.Qkv.weight, b.Proj.weight, b.Fc.weight, b.Out.weight }).ToList();
        var rest = parameters().Where(p => !ReferenceEquals(p, _wte) && !matrices.Any(x => ReferenceEquals(x, p))).ToList();
        return optim.AdamW(
        [
            new AdamW.ParamGroup(matrices, o.Lr / m, o.Beta1, o.Beta2, o.Eps, o.WeightDecay * m, false, false),
            new AdamW.ParamGroup([_wte], o.Lr, o.Beta1, o.Beta2, o.Eps, o.WeightDecay, false, false),
            new AdamW.ParamGroup(rest, o.Lr, o.Beta1, o.Beta2, o.Eps, 0.0, false, false),
        ], o.Lr);
    }

    public void SetLearningRate(AdamW optimizer, double lr)
    {
        var groups = optimizer.ParamGroups.ToList();
        groups[0].LearningRate = lr / _c.WidthMult;
        groups[1].LearningRate = lr;
        groups[2].LearningRate = lr;
    }
}
