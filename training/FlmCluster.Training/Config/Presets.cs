namespace FlmCluster.Training.Config;

/// <summary>
/// Named job presets. <c>16b</c>, <c>51b</c> and <c>101b</c> are the FLM-101B stages at full scale (for
/// sizing, planning and simulation); <c>tiny</c> and <c>small</c> train on a CPU in minutes.
/// The 101B shape is published (HF config); the 16B and 51B shapes are not, see docs/presets.md.
/// </summary>
public static class Presets
{
    private const int Cl100kVocab = 100257; // 100,256 ordinary ids + end-of-text at 100256

    private static readonly MupConfig FlmMup = new() { BaseWidth = 256, OutputMult = 2.0, InputMult = 1.0, InitStd = 0.02 };

    public static ModelConfig Model101B { get; } = new()
    {
        Layers = 80, Hidden = 10240, Heads = 80, Ffn = 40960, VocabSize = Cl100kVocab, VocabPadMultiple = 1024,
        SeqLen = 2048, Mup = FlmMup,
    };

    /// <summary>Our assumption: 72 layers × 7680 (60 heads of 128): 51.74B, grows to 101B in width and depth.</summary>
    public static ModelConfig Model51B { get; } = Model101B with { Layers = 72, Hidden = 7680, Heads = 60, Ffn = 30720 };

    /// <summary>Our assumption: 50 layers × 5120 (40 heads of 128): 16.25B, grows to 51B in width and depth.</summary>
    public static ModelConfig Model16B { get; } = Model101B with { Layers = 50, Hidden = 5120, Heads = 40, Ffn = 20480 };

    private static readonly IReadOnlyDictionary<string, JobConfig> Jobs = new Dictionary<string, JobConfig>(StringComparer.OrdinalIgnoreCase)
    {
        ["tiny"] = new JobConfig
        {
            Name = "tiny",
            Model = new ModelConfig
            {
                Layers = 4, Hidden = 128, Heads = 2, SeqLen = 128,
                Mup = new MupConfig { BaseWidth = 128, OutputMult = 1.0 },
            },
            Train = new TrainConfig { Steps = 200, GlobalBatch = 8, LogEvery = 10 },
            Optimizer = new OptimizerConfig { Lr = 3e-3, MinLr = 3e-4, WarmupSteps = 20 },
        },
        ["small"] = new JobConfig
        {
            Name = "small",
            Model = new ModelConfig
            {
                Layers = 6, Hidden = 256, Heads = 2, SeqLen = 256,
                Mup = new MupConfig { BaseWidth = 256, OutputMult = 1.0 },
            },
            Train = new TrainConfig { Steps = 300, GlobalBatch = 8, LogEvery = 10 },
            Optimizer = new OptimizerConfig { Lr = 2e-3, MinLr = 2e-4, WarmupSteps = 30 },
        },
        // μP proxy for sweeps and loss prediction: byte vocabulary, heads of 16, base width 64.
        ["mup-proxy"] = new JobConfig
        {
            Name = "mup-proxy",
            Tokenizer = "bytes",
            Model = new ModelConfig
            {
                Layers = 2, Hidden = 64, Heads = 4, SeqLen = 64, VocabPadMultiple = 128,
                Mup = new MupConfig { BaseWidth = 64, OutputMult = 1.0, InitStd = 0.02 },
            },
            Train = new TrainConfig { Steps = 500, GlobalBatch = 16, LogEvery = 50 },
            Optimizer = new OptimizerConfig { Lr = 3e-3, MinLr = 3e-4, WarmupSteps = 10 },
        },
        ["tiny-growth"] = new JobConfig
        {
            Name = "tiny-growth",
            Model = new ModelConfig
            {
                Layers = 2, Hidden = 64, Heads = 2, SeqLen = 128,
                Mup = new MupConfig { BaseWidth = 64, OutputMult = 1.0 },
            },
            Train = new TrainConfig { GlobalBatch = 8, LogEvery = 10 },
            Optimizer = new OptimizerConfig { Lr = 3e-3, MinLr = 3e-4, WarmupSteps = 10 },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 80, Lr = 3e-3, WarmupSteps = 10 },
                new StageConfig { Name = "b", Layers = 3, Hidden = 96, Heads = 3, Steps = 40, Lr = 2.5e-3, WarmupSteps = 5, MaskRampSteps = 10 },
                new StageConfig { Name = "c", Layers = 4, Hidden = 128, Heads = 4, Steps = 40, Lr = 2e-3, WarmupSteps = 5, MaskRampSteps = 10, DepthPlacement = "interpolate" },
            ],
        },
        ["flm-101b"] = new JobConfig
        {
            Name = "flm-101b",
            Model = Model16B,
            Train = new TrainConfig { GlobalBatch = 2304, Precision = "bf16", Device = "cuda", LogEvery = 1 },
            Optimizer = new OptimizerConfig { WeightDecay = 0.1, ClipGrad = 1.0 },
            // The card's three stages; mask ramp length and depth placement are not published (ours: 100 steps, stack).
            Stages =
            [
                FlmGrowthStage("16b", Model16B, 2304, 4e-4, 4_610_000, 52_000, new LayoutConfig { Dp = 96, Tp = 2, Pp = 1, MicroBatches = 24 }),
                FlmGrowthStage("51b", Model51B, 2304, 3.4e-4, 230_000, 8_400, new LayoutConfig { Dp = 24, Tp = 4, Pp = 2, MicroBatches = 96 }),
                FlmGrowthStage("101b", Model101B, 2160, 2e-4, 230_000, 6_000, new LayoutConfig { Dp = 12, Tp = 4, Pp = 4, MicroBatches = 180 }),
            ],
        },
        // FLM-101B stages: batch, peak LR and warmup from the model card; warmup samples / batch = steps.
        ["16b"] = FlmStage("16b", Model16B, batch: 2304, lr: 4e-4, warmupSamples: 4_610_000, steps: 52_000, dp: 96, tp: 2, pp: 1),
        ["51b"] = FlmStage("51b", Model51B, batch: 2304, lr: 3.4e-4, warmupSamples: 230_000, steps: 8_400, dp: 24, tp: 4, pp: 2),
        ["101b"] = FlmStage("101b", Model101B, batch: 2160, lr: 2e-4, warmupSamples: 230_000, steps: 6_000, dp: 12, tp: 4, pp: 4),
    };

    public static IReadOnlyCollection<string> Names => [.. Jobs.Keys];

    public static bool TryGet(string name, out JobConfig job) => Jobs.TryGetValue(name, out job!);

    public static JobConfig Get(string name) => TryGet(name, out var job)
        ? job
        : throw new FlmUserException($"unknown preset '{name}'; known presets: {string.Join(", ", Names)} (or give a path to a .json config file)");

    // Steps: the card's tokens (245.37B, 39.64B, 26.54B) are 52,000, 8,400 and 6,000 steps × batch × 2048, rounded.
    private static StageConfig FlmGrowthStage(string name, ModelConfig model, int batch, double lr, long warmupSamples, long steps, LayoutConfig layout) => new()
    {
        Name = name,
        Layers = model.Layers, Hidden = model.Hidden, Heads = model.Heads, Ffn = model.Ffn,
        Steps = steps, GlobalBatch = batch, Lr = lr, MinLr = lr / 10, WarmupSamples = warmupSamples,
        Layout = layout, MaskRampSteps = 100,
    };

    private static JobConfig FlmStage(string name, ModelConfig model, int batch, double lr, long warmupSamples, long steps, int dp, int tp, int pp)
    {
        return new JobConfig
        {
            Name = name,
            Model = model,
            Train = new TrainConfig { Steps = steps, GlobalBatch = batch, Precision = "bf16", Device = "cuda", LogEvery = 1 },
            Optimizer = new OptimizerConfig
            {
                Lr = lr, MinLr = lr / 10, WarmupSteps = (long)Math.Round((double)warmupSamples / batch), WeightDecay = 0.1, ClipGrad = 1.0,
            },
            Layout = new LayoutConfig { Dp = dp, Tp = tp, Pp = pp, MicroBatches = batch / dp },
        };
    }
}
