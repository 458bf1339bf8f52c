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
        // FLM-101B stages: batch, peak LR and warmup from the model card; warmup samples / batch = steps.
        ["16b"] = FlmStage("16b", Model16B, batch: 2304, lr: 4e-4, warmupSamples: 4_610_000, tokens: 245.37e9, dp: 96, tp: 2, pp: 1),
        ["51b"] = FlmStage("51b", Model51B, batch: 2304, lr: 3.4e-4, warmupSamples: 230_000, tokens: 39.64e9, dp: 24, tp: 4, pp: 2),
        ["101b"] = FlmStage("101b", Model101B, batch: 2160, lr: 2e-4, warmupSamples: 230_000, tokens: 26.54e9, dp: 12, tp: 4, pp: 4),
    };

    public static IReadOnlyCollection<string> Names => [.. Jobs.Keys];

    public static bool TryGet(string name, out JobConfig job) => Jobs.TryGetValue(name, out job!);

    public static JobConfig Get(string name) => TryGet(name, out var job)
        ? job
        : throw new FlmUserException($"unknown preset '{name}'; known presets: {string.Join(", ", Names)} (or give a path to a .json config file)");

    private static JobConfig FlmStage(string name, ModelConfig model, int batch, double lr, long warmupSamples, double tokens, int dp, int tp, int pp)
    {
        var steps = (long)Math.Round(tokens / ((double)batch * model.SeqLen));
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
