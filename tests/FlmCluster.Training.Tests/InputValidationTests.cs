using System.Text.Json.Nodes;
using FlmCluster.Tests.Fixtures;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Generation;
using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

/// <summary>
/// Validators that refuse bad input before anything runs or is allocated: typed exceptions, never a crash
/// further in, and (for files) no allocation sized by what a corrupt header claims.
/// </summary>
public sealed class InputValidationTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-validation-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly byte[] OneTerabyteClaim = CheckpointFiles.SafeTensorsFile(
        new JsonObject { ["w"] = CheckpointFiles.Entry([1L << 18, 1L << 20], 0, 1L << 40) }, dataBytes: 64);

    [Fact]
    public void A_header_claiming_1_TB_is_refused_before_any_tensor_data_is_read_or_allocated()
    {
        using var stream = new MemoryStream(OneTerabyteClaim);
        var dataStart = OneTerabyteClaim.Length - 64;
        var allocated = GC.GetTotalAllocatedBytes(precise: true);
        var ex = Assert.Throws<InvalidCheckpointException>(() => SafeTensors.Read(stream, "claim", out _));
        Assert.True(GC.GetTotalAllocatedBytes(precise: true) - allocated < 1 << 20);
        Assert.Contains("ends at byte 1099511627776 of the data, but the file holds 64", ex.Message);
        Assert.Equal(dataStart, stream.Position); // the header only
        var file = Path.Combine(_dir, "claim.safetensors");
        File.WriteAllBytes(file, OneTerabyteClaim);
        Assert.Throws<InvalidCheckpointException>(() => SafeTensors.ReadHeaderWithOffset(file));
        Assert.Throws<InvalidCheckpointException>(() => SafeTensors.Read(file));
    }

    /// <summary>An entry handed to ReadTensor is checked against its shape before the tensor exists.</summary>
    [Fact]
    public void Reading_an_entry_whose_bytes_do_not_match_its_shape_is_refused_before_allocating()
    {
        var file = Path.Combine(_dir, "small.safetensors");
        File.WriteAllBytes(file, CheckpointFiles.SafeTensorsFile(new JsonObject { ["w"] = CheckpointFiles.Entry([4], 0, 16) }, dataBytes: 16));
        var entry = new SafeTensors.Entry("w", ScalarType.Float32, [1L << 40], 0, 16);
        var ex = Assert.Throws<InvalidCheckpointException>(() => SafeTensors.ReadTensor(file, entry, 8));
        Assert.Contains("has 16 bytes for shape [1099511627776]", ex.Message);
    }

    public static TheoryData<string, byte[], string> BadSafeTensors => new()
    {
        { "too short", [1, 2, 3], "too short for a safetensors file" },
        { "header length beyond the file", [0, 0, 0, 0, 0, 1, 0, 0], "not a safetensors file" },
        { "header not an object", CheckpointFiles.SafeTensorsFile("null", 0), "is not a JSON object" },
        { "header malformed", CheckpointFiles.SafeTensorsFile("{\"w\": ", 0), "unreadable safetensors header" },
        { "a key twice", CheckpointFiles.SafeTensorsFile("{\"w\":{},\"w\":{}}", 0), "unreadable safetensors header" },
        { "unknown dtype", CheckpointFiles.SafeTensorsFile("{\"w\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "needs a known dtype" },
        { "negative dimension", CheckpointFiles.SafeTensorsFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4), "needs a known dtype, a shape of non-negative integers" },
        { "offsets reversed", CheckpointFiles.SafeTensorsFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4), "has data_offsets [4, 0]" },
        { "bytes not matching the shape", CheckpointFiles.SafeTensorsFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8), "has data_offsets [0, 4] for shape [2]" },
        { "shape product overflowing", CheckpointFiles.SafeTensorsFile("{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0), "for shape [4294967296,4294967296]" },
        { "metadata not strings", CheckpointFiles.SafeTensorsFile("{\"__metadata__\":{\"a\":1}}", 0), "metadata 'a' is not a string" },
    };

    [Theory]
    [MemberData(nameof(BadSafeTensors))]
    public void A_malformed_safetensors_file_is_an_invalid_checkpoint(string what, byte[] bytes, string expected)
    {
        var file = Path.Combine(_dir, "bad.safetensors");
        File.WriteAllBytes(file, bytes);
        var ex = Assert.Throws<InvalidCheckpointException>(() => SafeTensors.ReadHeaderWithOffset(file));
        Assert.True(ex.Message.Contains(expected, StringComparison.Ordinal), $"{what}: {ex.Message}");
    }

    private static JsonNode Tensor0(JsonObject m) => m["tensors"]![0]!;

    private static JsonNode Piece0(JsonObject m) => Tensor0(m)["pieces"]![0]!;

    public static TheoryData<string, Action<JsonObject>> CorruptManifests => new()
    {
        { "sha256 malformed", m => m["shards"]![0]!["sha256"] = "xyz" },
        { "shards null", m => m["shards"] = null },
        { "tensors null", m => m["tensors"] = null },
        { "pieces missing", m => Tensor0(m).AsObject().Remove("pieces") },
        { "negative shard size", m => m["shards"]![0]!["bytes"] = -1 },
        { "negative offset", m => Piece0(m)["flat_start"] = -1 },
        { "gap in a slice", m => Piece0(m)["flat_length"] = 3 },
        { "unknown dtype", m => Tensor0(m)["d_type"] = "F7" },
        { "shard name with ..", m => m["shards"]![0]!["file"] = "../x" },
        { "shard name with /", m => m["shards"]![0]!["file"] = "a/b" },
        { "piece in a file that is no shard", m => Piece0(m)["file"] = "other.safetensors" },
        { "piece of a tp rank outside the tensor", m => Piece0(m)["tp_rank"] = 3 },
        { "split not a split", m => Tensor0(m)["split"] = 7 },
        { "layout axis 0", m => m["layout"]!["tp"] = 0 },
        { "mask value above 1", m => m["mask_value"] = 2 },
        { "pieces claiming 1 TB", m =>
            {
                Tensor0(m)["shape"] = new JsonArray(1L << 38);
                Piece0(m)["flat_length"] = 1L << 38;
            }
        },
    };

    [Theory]
    [MemberData(nameof(CorruptManifests))]
    public void A_corrupt_manifest_is_an_invalid_checkpoint(string what, Action<JsonObject> corrupt)
    {
        var ex = Assert.Throws<InvalidCheckpointException>(() => CheckpointReader.Open(CheckpointFiles.Checkpoint(_dir, corrupt)));
        Assert.True(ex.Message.Contains("is corrupt", StringComparison.Ordinal), $"{what}: {ex.Message}");
    }

    [Fact]
    public void The_uncorrupted_fixture_opens() =>
        Assert.Equal(1, CheckpointReader.Open(CheckpointFiles.Checkpoint(_dir)).Manifest.Step);

    public static TheoryData<string, Func<JobConfig, JobConfig>, string> NonFiniteValues => new()
    {
        { "lr NaN", j => j with { Optimizer = j.Optimizer with { Lr = double.NaN } }, "optimizer.lr" },
        { "lr +∞", j => j with { Optimizer = j.Optimizer with { Lr = double.PositiveInfinity } }, "optimizer.lr" },
        { "min_lr NaN", j => j with { Optimizer = j.Optimizer with { MinLr = double.NaN } }, "optimizer.min_lr" },
        { "weight_decay +∞", j => j with { Optimizer = j.Optimizer with { WeightDecay = double.PositiveInfinity } }, "optimizer.weight_decay" },
        { "beta1 NaN", j => j with { Optimizer = j.Optimizer with { Beta1 = double.NaN } }, "optimizer.beta1" },
        { "beta2 −∞", j => j with { Optimizer = j.Optimizer with { Beta2 = double.NegativeInfinity } }, "optimizer.beta2" },
        { "eps +∞", j => j with { Optimizer = j.Optimizer with { Eps = double.PositiveInfinity } }, "optimizer.eps" },
        { "eps NaN", j => j with { Optimizer = j.Optimizer with { Eps = double.NaN } }, "optimizer.eps" },
        { "clip_grad +∞", j => j with { Optimizer = j.Optimizer with { ClipGrad = double.PositiveInfinity } }, "optimizer.clip_grad" },
        { "ln_eps NaN", j => j with { Model = j.Model with { LnEps = double.NaN } }, "model.ln_eps" },
        { "dropout NaN", j => j with { Model = j.Model with { Dropout = double.NaN } }, "model.dropout" },
        { "output_mult +∞", j => j with { Model = j.Model with { Mup = j.Model.Mup with { OutputMult = double.PositiveInfinity } } }, "model.mup.output_mult" },
        { "input_mult NaN", j => j with { Model = j.Model with { Mup = j.Model.Mup with { InputMult = double.NaN } } }, "model.mup.input_mult" },
        { "init_std +∞", j => j with { Model = j.Model with { Mup = j.Model.Mup with { InitStd = double.PositiveInfinity } } }, "model.mup.init_std" },
        { "scale_base +∞", j => j with { Model = j.Model with { Xpos = j.Model.Xpos with { ScaleBase = double.PositiveInfinity } } }, "model.xpos.scale_base" },
        { "theta NaN", j => j with { Model = j.Model with { Xpos = j.Model.Xpos with { Theta = double.NaN } } }, "model.xpos.theta" },
        { "gamma +∞", j => j with { Model = j.Model with { Xpos = j.Model.Xpos with { Gamma = double.PositiveInfinity } } }, "model.xpos.gamma" },
        { "stage tokens NaN", j => WithStage(j, new StageConfig { Tokens = double.NaN }), ".tokens" },
        { "stage tokens +∞", j => WithStage(j, new StageConfig { Tokens = double.PositiveInfinity }), ".tokens" },
        { "stage lr NaN", j => WithStage(j, new StageConfig { Steps = 2, Lr = double.NaN }), ".lr" },
        { "stage min_lr +∞", j => WithStage(j, new StageConfig { Steps = 2, MinLr = double.PositiveInfinity }), ".min_lr" },
        { "stage warmup_samples negative", j => WithStage(j, new StageConfig { Steps = 2, WarmupSamples = -8 }), ".warmup_samples" },
        { "stage steps negative", j => WithStage(j, new StageConfig { Steps = -2, Tokens = 1e6 }), ".steps" },
        { "steps × batch × seq overflow", j => j with { Train = j.Train with { Steps = long.MaxValue / 2 } }, "overflows a 64-bit count" },
        { "micro-batch beyond an array", j => j with { Train = j.Train with { GlobalBatch = int.MaxValue } }, "is too large" },
        { "device cuda:x", j => j with { Train = j.Train with { Device = "cuda:x" } }, "train.device 'cuda:x'" },
        { "layers beyond the maximum", j => j with { Model = j.Model with { Layers = ModelConfig.MaxLayers + 1 } }, "model.layers" },
        { "heads × head size overflow", j => j with { Model = j.Model with { Heads = 1 << 16, HeadSize = 1 << 16 } }, "heads × head size" },
        { "vocabulary padding overflow", j => j with { Model = j.Model with { VocabSize = int.MaxValue - 10 } }, "model.vocab_size" },
        { "parameters beyond the maximum", j => j with { Model = j.Model with { Hidden = 1 << 24, Heads = 1 << 12, Layers = 1 << 10 } }, "parameters, more than" },
    };

    private static JobConfig WithStage(JobConfig job, StageConfig stage) => job with { Stages = [stage] };

    [Theory]
    [MemberData(nameof(NonFiniteValues))]
    public void Non_finite_and_out_of_range_config_values_are_user_errors(string what, Func<JobConfig, JobConfig> change, string key)
    {
        var ex = Assert.Throws<FlmUserException>(() => JobValidator.Validate(change(TestJobs.Micro())));
        Assert.True(ex.Message.Contains(key, StringComparison.Ordinal), $"{what}: {ex.Message}");
    }

    [Fact]
    public void The_base_job_of_those_cases_is_valid() => JobValidator.Validate(TestJobs.Micro());

    [Fact]
    public void Layout_products_are_checked_in_64_bits()
    {
        var model = TestJobs.Micro().Model with { Heads = 1 << 16, HeadSize = 2, Hidden = 1 << 17 };
        var ex = Assert.Throws<FlmUserException>(() => new ParallelLayout(1 << 16, 1 << 16, 1).Validate(model, 8));
        Assert.Contains("4294967296 ranks", ex.Message);
        var micro = Assert.Throws<FlmUserException>(() => new ParallelLayout(1 << 16, 1, 1, 1 << 16).Validate(model, 8));
        Assert.Contains("dp×micro_batches=65536×65536=4294967296", micro.Message);
        Assert.Equal(0, new ParallelLayout(1 << 16, 1, 1, 1 << 16).MicroBatchSize(8)); // no division by a wrapped zero
    }

    [Theory]
    [InlineData("data.paths.0.x=1", "'data.paths.0' is a value")]
    [InlineData("train.steps.x=1", "'train.steps' is a value")]
    [InlineData("stages.0.steps=1", "'0' is not an index of the 0 entries")]
    [InlineData("model=null", "config key 'model' is null")]
    [InlineData("data.paths=[\"a\", null]", "config key 'data.paths.1' is null")]
    [InlineData("model={\"layers\": 1, \"layers\": 2}", "'model' has a value of the wrong type")]
    [InlineData("model.nope=1", "unknown config key 'model.nope'")]
    public void Overrides_that_do_not_fit_the_config_are_user_errors(string assignment, string expected)
    {
        var ex = Assert.Throws<FlmUserException>(() => JobConfigLoader.Load("tiny", [assignment]));
        Assert.Contains(expected, ex.Message);
    }

    [Theory]
    [InlineData(double.NaN, 1.0, 1.0, 8, "--temperature")]
    [InlineData(double.PositiveInfinity, 1.0, 1.0, 8, "--temperature")]
    [InlineData(0.0, double.NaN, 1.0, 8, "--top-p")]
    [InlineData(0.0, 1.0, double.NaN, 8, "--repetition-penalty")]
    [InlineData(0.0, 1.0, double.PositiveInfinity, 8, "--repetition-penalty")]
    [InlineData(0.0, 1.0, 1.0, 0, "--max-new-tokens")]
    [InlineData(0.0, 1.0, 1.0, 17, "beyond the model's context of 16")]
    public void Generation_options_are_finite_and_fit_the_context(double temperature, double topP, double penalty, int maxNew, string expected)
    {
        var options = new GenerationOptions { Temperature = temperature, TopP = topP, RepetitionPenalty = penalty, MaxNewTokens = maxNew };
        var ex = Assert.Throws<FlmUserException>(() => options.Validate(CheckpointFiles.Micro));
        Assert.Contains(expected, ex.Message);
    }
}
