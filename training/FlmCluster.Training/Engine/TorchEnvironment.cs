using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Engine;

/// <summary>Device, precision and thread settings shared by every rank of a process.</summary>
public static class TorchEnvironment
{
    private static readonly Lock Gate = new();
    private static int _threads = -1;

    public static Device ResolveDevice(string device)
    {
        RequireDevice(device);
        return device == "cpu" ? CPU : device == "cuda" ? CUDA : new Device(device);
    }

    /// <summary>Refuses a device this process cannot use (a CUDA device on a CPU build or a machine without it) before anything starts.</summary>
    public static void RequireDevice(string device)
    {
        if (device == Config.JobValidator.SimDevice)
            throw new FlmUserException("train.device 'sim' runs only on simulated servers ('flm sim'); use --set train.device=cpu or cuda to train");
        if (!Config.JobValidator.TryParseDevice(device, out var index))
            throw new FlmUserException($"train.device '{device}' is not cpu, cuda or cuda:N");
        if (index < 0)
            return;
        if (!cuda.is_available())
            throw new FlmUserException($"train.device '{device}' needs a CUDA build and a GPU, and this build or machine has none; use --set train.device=cpu (or build with -p:FlmDevice=cuda on a GPU server)");
        if (index >= cuda.device_count())
            throw new FlmUserException($"train.device '{device}': this machine has {cuda.device_count()} CUDA device(s); use cuda:0 … cuda:{cuda.device_count() - 1}");
    }

    /// <summary>Parameter dtype: <c>auto</c> is bf16 (with fp32 master weights) on CUDA and fp32 on CPU.</summary>
    public static ScalarType ResolvePrecision(string precision, string device) => precision switch
    {
        "fp32" => ScalarType.Float32,
        "fp64" => ScalarType.Float64,
        "bf16" => ScalarType.BFloat16,
        "auto" => device.StartsWith("cuda", StringComparison.Ordinal) ? ScalarType.BFloat16 : ScalarType.Float32,
        _ => throw new FlmUserException($"train.precision '{precision}' is not auto, fp32, bf16 or fp64"),
    };

    /// <summary>Sets torch's intra-op threads once per process (the pool is process-wide).</summary>
    public static int ConfigureThreads(int requested, int ranksInProcess)
    {
        var threads = requested > 0 ? requested : Math.Max(1, Environment.ProcessorCount / Math.Max(1, ranksInProcess));
        lock (Gate)
        {
            if (_threads != threads)
            {
                set_num_threads(threads);
                _threads = threads;
            }
        }
        return threads;
    }
}
