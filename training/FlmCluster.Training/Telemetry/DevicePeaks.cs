namespace FlmCluster.Training.Telemetry;

/// <summary>
/// Peak dense bf16 FLOP/s of accelerator models, for MFU: A100 and A800 312 TFLOP/s (NVIDIA A100 datasheet),
/// H100 and H200 SXM 989 TFLOP/s (NVIDIA H100 and H200 datasheets, without sparsity). CPU devices have no
/// entry: their peak is configured (Flm:PeakTflops).
/// </summary>
public static class DevicePeaks
{
    private static readonly (string Model, double Tflops)[] Table =
    [
        ("A800", 312), ("A100", 312), ("H100", 989), ("H200", 989),
    ];

    /// <summary>Peak FLOP/s of a device model by name ("NVIDIA H100 80GB HBM3" → H100); null when not in the table.</summary>
    public static double? Of(string deviceName)
    {
        foreach (var (model, tflops) in Table)
            if (deviceName.Contains(model, StringComparison.OrdinalIgnoreCase))
                return tflops * 1e12;
        return null;
    }

    public static IReadOnlyList<string> Models => Table.Select(t => t.Model).ToList();
}
