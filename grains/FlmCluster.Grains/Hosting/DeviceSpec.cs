using System.Globalization;

namespace FlmCluster.Grains;

/// <summary>A server's device list: "cpu:N", "cuda:N" (GPU builds) or "sim:N" (simulated GPUs whose work is modelled: <c>flm sim</c>).</summary>
public readonly record struct DeviceSpec(string Kind, int Count)
{
    public static bool TryParse(string text, out DeviceSpec spec)
    {
        spec = default;
        var colon = text.IndexOf(':');
        if (colon <= 0 || !int.TryParse(text[(colon + 1)..], NumberStyles.Integer, CultureInfo.InvariantCulture, out var count) || count < 0)
            return false;
        spec = new DeviceSpec(text[..colon].Trim().ToLowerInvariant(), count);
        return spec.Kind is "cpu" or "cuda" or "sim";
    }

    public static DeviceSpec Parse(string text) =>
        TryParse(text, out var spec) ? spec : throw new ArgumentException($"devices '{text}' is not cpu:N, cuda:N or sim:N");

    /// <summary>The kind of device a job's <c>train.device</c> asks for: cuda for "cuda" and "cuda:N", sim for "sim", else cpu.</summary>
    public static string KindOf(string torchDevice) =>
        torchDevice.StartsWith("cuda", StringComparison.Ordinal) ? "cuda" : torchDevice == "sim" ? "sim" : "cpu";

    /// <summary>The job's device on GPU k of this server.</summary>
    public string TorchDevice(int index) => Kind switch
    {
        "cuda" => $"cuda:{index}",
        "sim" => "sim",
        _ => "cpu",
    };

    public override string ToString() => $"{Kind}:{Count}";
}
