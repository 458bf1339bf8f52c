using FlmCluster.Training.Config;

namespace FlmCluster.Training.Sim;

/// <summary>
/// Forward FLOPs of the model's matrix products, counted as Megatron-LM counts them (Narayanan et al. 2021,
/// "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM"): 2 per multiply-add, the
/// full s × s attention scores, the vocabulary head over the padded vocabulary. A training step is three times its
/// forward (backward twice the forward); elementwise work is not counted.
/// </summary>
public static class ModelFlops
{
    /// <summary>One block's forward over <paramref name="sequences"/> sequences: c_attn, q·kᵀ, attention·v, attn.c_proj, c_fc, mlp.c_proj.</summary>
    public static double Layer(ModelConfig m, double sequences)
    {
        var tokens = sequences * m.SeqLen;
        var (h, a, f) = ((double)m.Hidden, (double)m.AttentionWidth, (double)m.FfnSize);
        return 2 * tokens * (h * 3 * a + a * h + 2 * h * f) + 4 * sequences * m.SeqLen * (double)m.SeqLen * a;
    }

    /// <summary>The output head's forward (the tied embedding as a matrix over the padded vocabulary).</summary>
    public static double Head(ModelConfig m, double sequences) => 2 * sequences * m.SeqLen * (double)m.Hidden * m.PaddedVocab;

    /// <summary>The whole model's forward.</summary>
    public static double Forward(ModelConfig m, double sequences) => m.Layers * Layer(m, sequences) + Head(m, sequences);

    /// <summary>A training step over <paramref name="globalBatch"/> sequences (forward and backward).</summary>
    public static double TrainingStep(ModelConfig m, int globalBatch) => 3 * Forward(m, globalBatch);
}
