using FlmCluster.Training.Config;

namespace FlmCluster.Training.Telemetry;

/// <summary>
/// Model FLOPs of training, the numerator of MFU: per token 6·N for the forward and backward matmuls of N
/// parameters plus 12·L·a·S for attention scores and values (L layers, attention width a, sequence S), as in
/// PaLM's appendix B (Chowdhery et al., 2022, arXiv:2204.02311). N counts the tied embedding once: its
/// lookup costs nothing but the output head's matmul costs 2·V·d forward. Recomputation and padding do not count.
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
}
