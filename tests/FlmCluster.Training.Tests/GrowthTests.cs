using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

public class GrowthTests
{
    private static ModelConfig Small(int layers, int heads, int headSize, int hidden, int ffn) => new()
    {
        Layers = layers, Heads = heads, HeadSize = headSize, Hidden = hidden, Ffn = ffn, SeqLen = 16,
        VocabSize = 257, VocabPadMultiple = 64, Mup = new MupConfig { BaseWidth = 8, OutputMult = 2.0, InitStd = 0.2 },
    };

    private static FlmModel Build(ModelConfig config, ScalarType dtype, IReadOnlyDictionary<string, Tensor>? values = null, GrowthShape? growth = null, ulong seed = 1)
    {
        var model = new FlmModel(config, dtype: dtype, growth: growth);
        ModelInitializer.Initialize(model, seed);
        if (values is not null)
            using (no_grad())
                foreach (var p in model.Parameters)
                    p.Tensor.copy_(values[p.Name]);
        model.eval();
        return model;
    }

    private static Dictionary<string, Tensor> State(FlmModel model) => model.Parameters.ToDictionary(p => p.Name, p => p.Tensor.detach().clone());

    /// <summary>Random growth cases: one per axis and combined, with random shapes and random new-weight seeds.</summary>
    public static TheoryData<string, int> Cases()
    {
        var data = new TheoryData<string, int>();
        foreach (var axis in new[] { "hidden", "heads", "ffn", "layers-stack-copy", "layers-interpolate-random", "combined" })
            for (var seed = 0; seed < 4; seed++)
                data.Add(axis, seed);
        return data;
    }

    private static (ModelConfig Small, ModelConfig Big, GrowthOptions Options) Shapes(string axis, int seed)
    {
        var rng = new Random(seed * 7 + axis.Length);
        var headSize = rng.Next(1, 3) * 4;
        var heads = rng.Next(1, 4);
        var small = Small(rng.Next(1, 4), heads, headSize, heads * headSize + (axis == "heads" ? 0 : rng.Next(0, 3) * 4), rng.Next(2, 6) * 8);
        var big = axis switch
        {
            "hidden" => small with { Hidden = small.Hidden + rng.Next(1, 4) * 4 },
            "heads" => small with { Heads = small.Heads + rng.Next(1, 3) },
            "ffn" => small with { Ffn = small.Ffn + rng.Next(1, 4) * 8 },
            "layers-stack-copy" or "layers-interpolate-random" => small with { Layers = small.Layers + rng.Next(1, 5) },
            _ => small with { Hidden = small.Hidden + 8, Heads = small.Heads + 1, Ffn = small.Ffn + 16, Layers = small.Layers + 2 },
        };
        var options = axis == "layers-interpolate-random" ? new GrowthOptions("interpolate", "random") : new GrowthOptions(seed % 2 == 0 ? "stack" : "interpolate");
        return (small, big, options);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Grown_model_at_mask_zero_computes_the_old_logits(string axis, int seed)
    {
        var (small, big, options) = Shapes(axis, seed);
        foreach (var (dtype, tolerance) in new[] { (ScalarType.Float64, 1e-12), (ScalarType.Float32, 1e-6) })
        {
            using var scope = NewDisposeScope();
            using var old = Build(small, dtype, seed: (ulong)seed + 100);
            var grown = ModelGrowth.Grow(small, big, State(old), null, options, seed: (ulong)seed * 31 + 5);
            using var model = Build(big, dtype, grown.Parameters, grown.Shape);
            var ids = randint(0, 257, [2, 16], dtype: ScalarType.Int64, generator: new Generator((ulong)seed + 1));
            var before = old.Forward(ids);

            model.SetMaskValue(0);
            var after = model.Forward(ids);
            var scale = before.to(ScalarType.Float64).abs().max().item<double>();
            var error = (after.to(ScalarType.Float64) - before.to(ScalarType.Float64)).abs().max().item<double>() / scale;
            Assert.True(error <= tolerance, $"{axis} {small.Layers}x{small.Hidden}/{small.Heads}h/{small.FfnSize} → {big.Layers}x{big.Hidden}/{big.Heads}h/{big.FfnSize} {dtype}: relative error {error:E2}");

            model.SetMaskValue(0.5);
            var half = model.Forward(ids);
            var moved = (half.to(ScalarType.Float64) - before.to(ScalarType.Float64)).abs().max().item<double>() / scale;
            Assert.True(moved > 1e-3, $"{axis}: with mask 0.5 the logits should move (moved {moved:E2})");
        }
    }

    [Fact]
    public void Masks_are_exactly_one_after_the_ramp_and_then_removed()
    {
        var ramp = new GrowthRamp(7);
        Assert.Equal(0.0, ramp.ValueAt(0));
        Assert.Equal(3.0 / 7, ramp.ValueAt(3));
        Assert.Equal(1.0, ramp.ValueAt(7));
        Assert.Equal(1.0, ramp.ValueAt(100));
        var (small, big, options) = Shapes("combined", 1);
        using var old = Build(small, ScalarType.Float64);
        var grown = ModelGrowth.Grow(small, big, State(old), null, options, 3);
        using var model = Build(big, ScalarType.Float64, grown.Parameters, grown.Shape);
        model.SetMaskValue(ramp.ValueAt(6));
        Assert.NotNull(model.Masks);
        // At c = 1 the masked model and the plain grown model agree; the masks are then dropped.
        using var plain = Build(big, ScalarType.Float64, grown.Parameters);
        var ids = randint(0, 257, [1, 16], dtype: ScalarType.Int64, generator: new Generator(2));
        var withMasks = new GrowthMasks(grown.Shape, 1.0, big, 0, 1, ScalarType.Float64, CPU);
        Assert.Equal(1.0, withMasks.Hidden!.min().item<double>());
        model.SetMaskValue(ramp.ValueAt(7));
        Assert.Null(model.Masks);
        Assert.True(model.Forward(ids).allclose(plain.Forward(ids), rtol: 1e-12, atol: 1e-12));
    }

    [Fact]
    public void Adam_moments_are_copied_into_the_old_block_and_zero_elsewhere()
    {
        var small = Small(2, 2, 4, 8, 16);
        var big = small with { Layers = 3, Hidden = 12, Heads = 3, Ffn = 24 };
        using var old = Build(small, ScalarType.Float32);
        var parameters = State(old);
        var moments = new Dictionary<string, Tensor>();
        foreach (var (name, t) in parameters)
        {
            moments["exp_avg." + name] = randn_like(t);
            moments["exp_avg_sq." + name] = rand_like(t);
        }
        var grown = ModelGrowth.Grow(small, big, parameters, moments, new GrowthOptions("stack", "copy"), 9);

        // c_fc.weight [ffn, d]: old [16, 8] block equal, the rest zero.
        var m = grown.Optimizer!["exp_avg.transformer.h.1.mlp.c_fc.weight"];
        Assert.Equal([24L, 12L], m.shape);
        Assert.True(m.narrow(0, 0, 16).narrow(1, 0, 8).equal(moments["exp_avg.transformer.h.1.mlp.c_fc.weight"]).all().item<bool>());
        Assert.Equal(0f, m.narrow(0, 16, 8).abs().sum().item<float>());
        Assert.Equal(0f, m.narrow(1, 8, 4).abs().sum().item<float>());
        // Packed QKV: the old block of each of Q, K, V is in place.
        var qkv = grown.Optimizer["exp_avg_sq.transformer.h.0.attn.c_attn.weight"].view(3, 12, 12);
        var oldQkv = moments["exp_avg_sq.transformer.h.0.attn.c_attn.weight"].view(3, 8, 8);
        Assert.True(qkv.narrow(1, 0, 8).narrow(2, 0, 8).equal(oldQkv).all().item<bool>());
        Assert.Equal(0f, qkv.narrow(1, 8, 4).abs().sum().item<float>());
        // The inserted layer (stack: copies layer 1) has its weights copied and its moments zero.
        Assert.Equal([2], grown.Shape.NewLayers);
        Assert.True(grown.Parameters["transformer.h.2.mlp.c_fc.weight"].narrow(0, 0, 16).narrow(1, 0, 8)
            .equal(parameters["transformer.h.1.mlp.c_fc.weight"]).all().item<bool>());
        Assert.Equal(0f, grown.Optimizer["exp_avg.transformer.h.2.mlp.c_fc.weight"].abs().sum().item<float>());
        // Embedding: new columns of moments zero.
        Assert.Equal(0f, grown.Optimizer["exp_avg.transformer.wte.weight"].narrow(1, 8, 4).abs().sum().item<float>());
    }

    [Theory]
    [InlineData(2, 5, "stack", new[] { 0, 1, 0, 1, 1 })]
    [InlineData(4, 6, "stack", new[] { 0, 1, 2, 3, 2, 3 })]
    [InlineData(4, 6, "interpolate", new[] { 0, 1, 2, 2, 3, 3 })]
    [InlineData(2, 5, "interpolate", new[] { 0, 0, 1, 1, 1 })]
    public void Depth_placement(int oldLayers, int newLayers, string placement, int[] sources)
    {
        var layers = ModelGrowth.LayerSources(oldLayers, newLayers, placement);
        Assert.Equal(sources, layers.Select(l => l.Source));
        Assert.Equal(newLayers - oldLayers, layers.Count(l => l.IsNew));
    }

    [Theory]
    [InlineData("layers", "model.layers shrinks from 2 to 1")]
    [InlineData("head", "head size would change from 4 to 6")]
    [InlineData("vocab", "vocabulary changes")]
    public void Unreachable_shapes_are_rejected(string what, string expected)
    {
        var small = Small(2, 2, 0, 8, 16);
        var big = what switch
        {
            "layers" => small with { Layers = 1 },
            "head" => small with { Hidden = 12 },
            _ => small with { VocabPadMultiple = 128 },
        };
        var ex = Assert.Throws<FlmUserException>(() => ModelGrowth.Validate(small, big, "stage 'b'"));
        Assert.Contains(expected, ex.Message);
    }
}

public class PowerLawTests
{
    [Theory]
    [InlineData(5.0, -0.3, 1.7)]
    [InlineData(12.0, -0.08, 2.2)]
    [InlineData(0.9, -0.5, 0.0)]
    public void Fit_recovers_known_parameters_from_exact_data(double a, double b, double c)
    {
        var n = new[] { 1e4, 3e4, 1e5, 3e5, 1e6, 3e6 };
        var loss = n.Select(x => a * Math.Pow(x, b) + c).ToArray();
        var fit = FlmCluster.Training.Scaling.PowerLaw.Fit(n, loss);
        Assert.Equal(a, fit.A, a * 1e-5);
        Assert.Equal(b, fit.B, 1e-6);
        Assert.Equal(c, fit.C, 1e-5);
        Assert.True(fit.Rmse < 1e-8);
    }

    [Fact]
    public void Noisy_data_still_predicts_a_held_out_point()
    {
        var rng = new Random(3);
        double Law(double x) => 8.0 * Math.Pow(x, -0.25) + 1.9;
        var n = new[] { 2e4, 5e4, 1e5, 2e5, 5e5 };
        var loss = n.Select(x => Law(x) * (1 + 0.001 * (rng.NextDouble() - 0.5))).ToArray();
        var fit = FlmCluster.Training.Scaling.PowerLaw.Fit(n, loss);
        Assert.InRange(fit.Predict(2e6) / Law(2e6), 0.99, 1.01);
    }
}
