using System.Collections.Concurrent;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// Token datasets loaded on this silo, shared read-only by its workers: a server tokenizes (or maps) a
/// job's data once, whatever number of GPUs it trains on.
/// </summary>
public sealed class SiloDatasets : IDisposable
{
    private readonly ConcurrentDictionary<string, Lazy<TokenDataset>> _datasets = new();

    public TokenDataset For(JobConfig job)
    {
        var key = $"{job.Tokenizer}|{job.Model.PaddedVocab}|{string.Join("|", job.Data.Paths)}";
        var lazy = _datasets.GetOrAdd(key, _ => new Lazy<TokenDataset>(
            () => TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab),
            LazyThreadSafetyMode.ExecutionAndPublication));
        try
        {
            return lazy.Value;
        }
        catch
        {
            _datasets.TryRemove(key, out _);
            throw;
        }
    }

    public void Dispose()
    {
        foreach (var lazy in _datasets.Values.Where(l => l.IsValueCreated))
            lazy.Value.Dispose();
    }
}
