using FlmCluster.Training.Config;
using FlmCluster.Training.Data;

namespace FlmCluster.Bench;

/// <summary>The benchmarks' jobs: a byte vocabulary (no tokenizer cost), fp32, μP base width = width.</summary>
public static class BenchJobs
{
    public static JobConfig Bytes(string name, int layers, int hidden, int heads, int seqLen, int globalBatch, LayoutConfig? layout = null, int threads = 0) =>
        JobValidator.Validate(new JobConfig
        {
            Name = name,
            Tokenizer = TokenizerFactory.Bytes,
            Model = new ModelConfig { Layers = layers, Hidden = hidden, Heads = heads, SeqLen = seqLen, VocabPadMultiple = 128, Mup = new MupConfig { BaseWidth = hidden } },
            Train = new TrainConfig { Steps = 1000, GlobalBatch = globalBatch, Precision = "fp32", Threads = threads },
            Layout = layout ?? new LayoutConfig(),
        });
}
