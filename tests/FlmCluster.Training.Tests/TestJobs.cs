using FlmCluster.Training.Config;
using FlmCluster.Training.Data;

namespace FlmCluster.Training.Tests;

/// <summary>Small jobs that train in milliseconds per step, for tests.</summary>
public static class TestJobs
{
    /// <summary>A byte-level model: 2 layers × 64, 4 heads of 16, seq 32, global batch 8.</summary>
    public static JobConfig Micro(int layers = 2, int hidden = 64, int heads = 4, int seq = 32, int batch = 8, long steps = 10) => new()
    {
        Name = "micro",
        Tokenizer = TokenizerFactory.Bytes,
        Model = new ModelConfig
        {
            Layers = layers, Hidden = hidden, Heads = heads, SeqLen = seq, VocabSize = ByteTokenizer.Vocab, VocabPadMultiple = 64,
            Mup = new MupConfig { BaseWidth = 32, OutputMult = 2.0, InitStd = 0.05 },
        },
        Data = new DataConfig { Paths = [Corpus.Bundled], Seed = 7 },
        Train = new TrainConfig { Steps = steps, GlobalBatch = batch, Seed = 11, Precision = "fp32", Threads = 1 },
        Optimizer = new OptimizerConfig { Lr = 3e-3, MinLr = 3e-4, WarmupSteps = 3 },
    };

    private static readonly Lazy<int[]> BundledBytes = new(() =>
    {
        using var data = TokenDataset.Load([Corpus.Bundled], new ByteTokenizer(), 320);
        var tokens = new long[Math.Min(400_000, data.TokenCount)];
        data.CopyTokens(0, tokens);
        return tokens.Select(t => (int)t).ToArray();
    });

    /// <summary>The first 400k byte tokens of the bundled corpus, shared by tests (read once).</summary>
    public static TokenDataset SharedBytes() => TokenDataset.FromTokens(BundledBytes.Value, TokenizerFactory.Bytes);
}
