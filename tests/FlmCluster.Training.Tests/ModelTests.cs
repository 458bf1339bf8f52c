using FlmCluster.Training.Config;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

public class ModelTests
{
    private static FlmModel NewModel(ModelConfig config, ScalarType dtype = ScalarType.Float32, ulong seed = 3)
    {
        var model = new FlmModel(config, dtype: dtype);
        ModelInitializer.Initialize(model, seed);
        return model;
    }

    /// <summary>Parameters of a tied GPT block stack written out from the shapes, separately from ModelConfig.</summary>
    private static long Formula(long layers, long d, long ffn, long vocab) =>
        layers * (d * 3 * d + 3 * d      // c_attn
                  + d * d + d            // attn.c_proj
                  + d * ffn + ffn        // mlp.c_fc
                  + ffn * d + d          // mlp.c_proj
                  + 2 * 2 * d)           // ln_1, ln_2
        + vocab * d + 2 * d;             // tied embedding, ln_f

    [Fact]
    public void Flm101b_counts_101_7_billion_tied_parameters()
    {
        var m = Presets.Model101B;
        Assert.Equal(100352, m.PaddedVocab);
        Assert.Equal(128, m.HeadDim);
        Assert.Equal(101_701_570_560L, m.ParameterCount);
        Assert.Equal(Formula(80, 10240, 40960, 100352), m.ParameterCount);
        Assert.Equal("101.70", (m.ParameterCount / 1e9).ToString("0.00", System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void Growth_stage_presets_are_near_16b_and_51b_and_reachable_by_growth()
    {
        Assert.Equal(Formula(50, 5120, 20480, 100352), Presets.Model16B.ParameterCount);
        Assert.Equal(Formula(72, 7680, 30720, 100352), Presets.Model51B.ParameterCount);
        Assert.InRange(Presets.Model16B.ParameterCount / 1e9, 15.5, 16.5);
        Assert.InRange(Presets.Model51B.ParameterCount / 1e9, 50.5, 52.0);
        var stages = new[] { Presets.Model16B, Presets.Model51B, Presets.Model101B };
        for (var i = 1; i < stages.Length; i++)
        {
            Assert.True(stages[i].Layers >= stages[i - 1].Layers);
            Assert.True(stages[i].Hidden >= stages[i - 1].Hidden);
            Assert.True(stages[i].FfnSize >= stages[i - 1].FfnSize);
            Assert.Equal(stages[i - 1].HeadDim, stages[i].HeadDim);
        }
        // Card layouts: TP2/PP1 at 16B, TP4/PP2 at 51B, TP4/PP4 at 101B.
        Assert.Equal(0, Presets.Model16B.Heads % 2);
        Assert.Equal(0, Presets.Model51B.Heads % 4);
        Assert.Equal(0, Presets.Model51B.Layers % 2);
        Assert.Equal(0, Presets.Model101B.Layers % 4);
    }

    [Theory]
    [InlineData("tiny")]
    [InlineData("small")]
    public void Cpu_presets_build_models_with_the_counted_parameters(string preset)
    {
        var job = JobConfigLoader.Load(preset);
        using var model = new FlmModel(job.Model);
        Assert.Equal(job.Model.ParameterCount, model.Parameters.Sum(p => p.Tensor.NumberOfElements));
        Assert.Equal(Formula(job.Model.Layers, job.Model.Hidden, job.Model.FfnSize, job.Model.PaddedVocab), job.Model.ParameterCount);
        Assert.Equal(100352, job.Model.PaddedVocab);
    }

    [Fact]
    public void Logits_at_a_position_do_not_depend_on_later_tokens()
    {
        var config = TestJobs.Micro().Model;
        using var model = NewModel(config);
        model.eval();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = randint(0, 257, [2, 20], dtype: ScalarType.Int64, generator: new Generator(9));
        var changed = ids.clone();
        changed[TensorIndex.Colon, TensorIndex.Slice(12, null)] = randint(0, 257, [2, 8], dtype: ScalarType.Int64, generator: new Generator(10));
        var a = model.Forward(ids);
        var b = model.Forward(changed);
        Assert.True(a[TensorIndex.Colon, TensorIndex.Slice(0, 12)].allclose(b[TensorIndex.Colon, TensorIndex.Slice(0, 12)], rtol: 0, atol: 1e-6));
        Assert.False(a[TensorIndex.Colon, TensorIndex.Slice(12, null)].allclose(b[TensorIndex.Colon, TensorIndex.Slice(12, null)], rtol: 0, atol: 1e-3));
    }

    [Fact]
    public void Fused_loss_and_its_gradients_equal_the_full_logits_cross_entropy_in_fp64()
    {
        var config = TestJobs.Micro().Model with { VocabPadMultiple = 1024 };
        using var model = NewModel(config, ScalarType.Float64);
        using var scope = NewDisposeScope();
        var ids = randint(0, 257, [3, 32], dtype: ScalarType.Int64, generator: new Generator(1));
        var targets = randint(0, 257, [3, 32], dtype: ScalarType.Int64, generator: new Generator(2));

        var fused = model.LossSum(model.RunBlocks(model.Embed(ids)), targets);
        fused.backward();
        var fusedGrads = model.Parameters.Select(p => p.Tensor.grad!.clone()).ToList();
        foreach (var p in model.Parameters) p.Tensor.grad!.zero_();

        var logits = model.Forward(ids);
        var reference = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), targets.reshape(-1), reduction: nn.Reduction.Sum);
        reference.backward();
        Assert.Equal(reference.item<double>(), fused.item<double>(), 1e-9);
        for (var i = 0; i < fusedGrads.Count; i++)
            Assert.True(fusedGrads[i].allclose(model.Parameters[i].Tensor.grad!, rtol: 1e-9, atol: 1e-12), model.Parameters[i].Name);
    }

    [Fact]
    public void Mup_initialisation_and_readout_follow_the_width_multiplier()
    {
        var config = TestJobs.Micro(hidden: 128, heads: 4).Model with { Mup = new MupConfig { BaseWidth = 32, InitStd = 0.04, OutputMult = 2.0 } };
        using var model = NewModel(config);
        var m = config.WidthMult; // 4
        Assert.Equal(2.0 / 4, model.OutputScale, 12);
        double Std(string name) => model.Parameters.Single(p => p.Name == name).Tensor.std().item<float>();
        Assert.Equal(0.04 / Math.Sqrt(m), Std("transformer.h.0.mlp.c_fc.weight"), 0.002);
        Assert.Equal(0.04 / Math.Sqrt(m), Std("transformer.h.1.attn.c_attn.weight"), 0.002);
        Assert.Equal(0.04 / Math.Sqrt(2 * config.Layers * m), Std("transformer.h.0.mlp.c_proj.weight"), 0.002);
        Assert.Equal(0.04, Std("transformer.wte.weight"), 0.002);
        Assert.Equal(1.0f, model.Parameters.Single(p => p.Name == "transformer.ln_f.weight").Tensor.mean().item<float>());
        Assert.Equal(0.0f, model.Parameters.Single(p => p.Name == "transformer.h.0.attn.c_proj.bias").Tensor.abs().max().item<float>());
    }

    [Fact]
    public void Initialisation_is_a_function_of_seed_and_name()
    {
        var config = TestJobs.Micro().Model;
        using var a = NewModel(config, seed: 5);
        using var b = NewModel(config, seed: 5);
        using var c = NewModel(config, seed: 6);
        var name = "transformer.h.1.attn.c_attn.weight";
        Tensor Of(FlmModel m) => m.Parameters.Single(p => p.Name == name).Tensor;
        Assert.True(Of(a).equal(Of(b)).all().item<bool>());
        Assert.False(Of(a).allclose(Of(c)));
        // Two tensors of the same shape get different values.
        var fc0 = a.Parameters.Single(p => p.Name == "transformer.h.0.mlp.c_fc.weight").Tensor;
        var fc1 = a.Parameters.Single(p => p.Name == "transformer.h.1.mlp.c_fc.weight").Tensor;
        Assert.False(fc0.allclose(fc1));
    }
}

public class FusedLossTests
{
    [Theory]
    [InlineData(1L)]          // one token per chunk
    [InlineData(3 * 500L)]    // three tokens per chunk, a ragged last chunk
    [InlineData(1L << 22)]    // everything in one chunk
    public void Chunked_loss_and_gradients_equal_full_cross_entropy(long chunkElements)
    {
        using var scope = NewDisposeScope();
        var g = new Generator(4);
        var hidden = randn([37, 24], dtype: ScalarType.Float64, generator: g).requires_grad_(true);
        var weight = randn([500, 24], dtype: ScalarType.Float64, generator: g).requires_grad_(true);
        var targets = randint(0, 480, [37], dtype: ScalarType.Int64, generator: g);
        var fused = FusedLinearCrossEntropy.LossSum(hidden, weight, targets, 0.7, Parallel.TensorParallelContext.None, 0, chunkElements);
        (fused * 2.5).backward();
        var gh = hidden.grad!.clone();
        var gw = weight.grad!.clone();
        hidden.grad!.zero_();
        weight.grad!.zero_();
        var reference = nn.functional.cross_entropy(matmul(hidden, weight.t()) * 0.7, targets, reduction: nn.Reduction.Sum);
        (reference * 2.5).backward();
        Assert.Equal(reference.item<double>(), fused.item<double>(), 1e-10);
        Assert.True(gh.allclose(hidden.grad!, rtol: 1e-10, atol: 1e-12), $"hidden grad max diff {(gh - hidden.grad!).abs().max().item<double>()}");
        Assert.True(gw.allclose(weight.grad!, rtol: 1e-10, atol: 1e-12), $"weight grad max diff {(gw - weight.grad!).abs().max().item<double>()}");
    }
}
