using FlmCluster.Training.Config;

namespace FlmCluster.Training.Telemetry;

/// <summary>
/// Model FLOPs of training, the numerator of MFU: per token 6·N for the forward and backward matmuls of N
/// parameters plus 12·L·a·S for attention scores and values (L layers, attention width a, sequence S), as in
/// PaLM's appendix B (Chowdhery et al., 2022, arXiv:2204.02311). N counts the tied embedding once: its
/// lookup costs nothing but the output head's matmul costs 2·V·d forward. Recomputation and padding do not count.
/// The simulator's cost model splits the same work by layer and head, as Megatron-LM counts it (<see cref="Layer"/>).
/// </summary>
public static class ModelFlops
{
    public static double PerToken(ModelConfig m) =>
        6.0 * m.ParameterCount + 12.0 * m.Layers * m.AttentionWidth * m.SeqLen;

    public static double PerStep(ModelConfig m, long tokens) => PerToken(m) * tokens;

    /// <summary>Model FLOPs utilization: achieved model FLOP/s over the summed peak of the devices; null when a peak is unknown.</summary>
    public static double? Utilization(double modelFlops, TimeSpan elapsed, IReadOnlyCollection<double> devicePeaks) =>
        devicePeaks.Count == 0 || devicePeaks.Any(p => !(p > 0)) || elapsed <= TimeSpan.Zero
            ? null
            : modelFlops / elapsed.TotalSeconds / devicePeaks.Sum();

    /// <summary>
    /// One block's forward over <paramref name="sequences"/> sequences, as Megatron-LM counts it (Narayanan et al.
    /// 2021, arXiv:2104.04473): 2 per multiply-add of c_attn, q·kᵀ, attention·v, attn.c_proj, c_fc and mlp.c_proj.
    /// </summary>
    public static double Layer(ModelConfig m, double sequences)
    {
        var tokens = sequences * m.SeqLen;
        var (h, a, f) = ((double)m.Hidden, (double)m.AttentionWidth, (double)m.FfnSize);
        return 2 * tokens * (h * 3 * a + a * h + 2 * h * f) + 4 * sequences * m.SeqLen * (double)m.SeqLen * a;
    }

    /// <summary>The output head's forward (the tied embedding as a matrix over the padded vocabulary), as Megatron-LM counts it.</summary>
    public static double Head(ModelConfig m, double sequences) => 2 * sequences * m.SeqLen * (double)m.Hidden * m.PaddedVocab;

    /// <summary>The whole model's forward, as Megatron-LM counts it.</summary>
    public static double Forward(ModelConfig m, double sequences) => m.Layers * Layer(m, sequences) + Head(m, sequences);

    /// <summary>A training step over <paramref name="globalBatch"/> sequences as Megatron-LM counts it: three forwards (backward is twice the forward).</summary>
    public static double TrainingStep(ModelConfig m, int globalBatch) => 3 * Forward(m, globalBatch);
}
