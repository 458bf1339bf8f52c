using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>
/// Keys (before xPos) and values of past positions for incremental decoding. Keys are stored raw because
/// the xPos scale centre moves with the key length; they are rotated and scaled again at each step.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly LayerKvCache[] _layers;

    public KvCache(int layers)
    {
        _layers = new LayerKvCache[layers];
        for (var i = 0; i < layers; i++)
            _layers[i] = new LayerKvCache();
    }

    public LayerKvCache this[int layer] => _layers[layer];

    public long Length => _layers.Length == 0 ? 0 : _layers[0].Length;

    public void Dispose()
    {
        foreach (var layer in _layers)
            layer.Dispose();
    }
}

public sealed class LayerKvCache : IDisposable
{
    private Tensor? _keys;
    private Tensor? _values;

    public long Length => _keys?.shape[2] ?? 0;

    /// <summary>Appends this step's k, v [B,H,T,D] and returns the whole history.</summary>
    public (Tensor Keys, Tensor Values) Append(Tensor k, Tensor v)
    {
        var keys = _keys is null ? k.detach().clone() : cat([_keys, k.detach()], 2);
        var values = _values is null ? v.detach().clone() : cat([_values, v.detach()], 2);
        _keys?.Dispose();
        _values?.Dispose();
        // The cache outlives the step's dispose scope.
        _keys = keys.DetachFromDisposeScope();
        _values = values.DetachFromDisposeScope();
        return (_keys.alias(), _values.alias());
    }

    public void Dispose()
    {
        _keys?.Dispose();
        _values?.Dispose();
        _keys = _values = null;
    }
}
