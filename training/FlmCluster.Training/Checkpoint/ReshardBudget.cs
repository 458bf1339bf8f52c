using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// The temporary host memory a rank may use to restore or grow its slices, whatever the model's size: every
/// buffer beyond the rank's own state comes from here, and asking for more than is left is a bug, not a wait.
/// Keeps the peak, so tests and benchmarks can hold a restore to its budget.
/// </summary>
public sealed class ReshardBudget(long bytes)
{
    /// <summary>The default budget: 256 MiB (checkpoint.reshard_budget_mib).</summary>
    public const long DefaultBytes = 256L << 20;

    private long _inUse;

    public long Bytes { get; } = bytes > 0 ? bytes : throw new ArgumentOutOfRangeException(nameof(bytes), "a reshard budget must be positive");

    /// <summary>The most bytes held at once so far.</summary>
    public long Peak { get; private set; }

    public static ReshardBudget For(Config.CheckpointConfig checkpoint) => new((long)checkpoint.ReshardBudgetMiB << 20);

    /// <summary>Bytes not held now.</summary>
    public long Available
    {
        get
        {
            lock (this)
                return Bytes - _inUse;
        }
    }

    /// <summary>A host buffer of <paramref name="elements"/> elements, counted until <see cref="Lease.Dispose"/>.</summary>
    public Lease Take(long elements, ScalarType type)
    {
        var lease = Hold(elements * SafeTensors.ElementSize(type));
        lease.Tensor = empty(elements, dtype: type);
        return lease;
    }

    /// <summary>Counts <paramref name="bytes"/> of buffers made elsewhere (a generated piece) until <see cref="Lease.Dispose"/>.</summary>
    public Lease Hold(long bytes)
    {
        lock (this)
        {
            if (_inUse + bytes > Bytes)
                throw new InvalidOperationException($"a reshard buffer of {bytes:N0} bytes would exceed the budget of {Bytes:N0} ({_inUse:N0} in use)");
            _inUse += bytes;
            Peak = Math.Max(Peak, _inUse);
        }
        return new Lease(this, bytes);
    }

    private void Give(long bytes)
    {
        lock (this)
            _inUse -= bytes;
    }

    /// <summary>Counted bytes (and the buffer, when the budget made it); disposing frees the buffer and gives the bytes back.</summary>
    public sealed class Lease(ReshardBudget budget, long bytes) : IDisposable
    {
        public Tensor Tensor { get; internal set; } = null!;

        public void Dispose()
        {
            Tensor?.Dispose();
            budget.Give(bytes);
        }
    }
}
