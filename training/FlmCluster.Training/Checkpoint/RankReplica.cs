using System.Globalization;
using FlmCluster.Training.Engine;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// The in-memory checkpoint tier: one rank's whole state (flat parameters, optimizer shard, Adam step) as
/// safetensors bytes in transport-sized chunks, kept in host memory by the rank and by a peer on another
/// server. It restores exactly this rank of the same layout, bit for bit; a different layout needs a
/// persistent checkpoint.
/// </summary>
public static class RankReplica
{
    /// <summary>Serializes a snapshot taken with all parameters (<see cref="RankSnapshot.Capture"/>) at the start of <paramref name="step"/>.</summary>
    public static ChunkedBytes Serialize(RankSnapshot snapshot, long step, int chunkSize)
    {
        var parameters = snapshot.Params ?? throw new ArgumentException("a replica needs a snapshot with all parameters", nameof(snapshot));
        var tensors = new Dictionary<string, Tensor>(snapshot.Optimizer) { ["params"] = parameters };
        var meta = new Dictionary<string, string>
        {
            ["format"] = "flmcluster-replica",
            ["rank"] = Invariant(snapshot.Rank),
            ["layout"] = snapshot.Layout,
            ["step"] = Invariant(step),
            ["adam_step"] = Invariant(snapshot.AdamStep),
            ["shard_start"] = Invariant(snapshot.ShardStart),
        };
        using var writer = new ChunkedBytes.Writer(chunkSize);
        SafeTensors.Write(writer, tensors, meta, hash: false); // host memory and TCP: nothing to check a checksum against
        return writer.ToBytes();
    }

    /// <summary>Puts a replica back into the rank it was taken from (call on the rank's device thread); returns its step.</summary>
    public static long Restore(RankTrainer rank, ChunkedBytes replica)
    {
        using var stream = replica.OpenRead();
        var tensors = SafeTensors.Read(stream, "replica", out var meta);
        try
        {
            void Expect(string key, string actual)
            {
                if (!meta.TryGetValue(key, out var saved) || saved != actual)
                    throw new InvalidDataException($"the replica is of {key} {saved ?? "(none)"}, this rank is {actual}");
            }
            Expect("format", "flmcluster-replica");
            Expect("rank", Invariant(rank.Groups.Rank));
            Expect("layout", rank.Layout.ToString());
            Expect("shard_start", Invariant(rank.Optimizer.ShardStart));
            var opt = rank.Optimizer;
            using var _ = no_grad();
            Copy(tensors, "params", rank.Flat.Params);
            Copy(tensors, "exp_avg", opt.ExpAvg);
            Copy(tensors, "exp_avg_sq", opt.ExpAvgSq);
            if (rank.Flat.Params.dtype != opt.Master.dtype)
                Copy(tensors, "master", opt.Master);
            opt.Step = long.Parse(meta["adam_step"], CultureInfo.InvariantCulture);
            return long.Parse(meta["step"], CultureInfo.InvariantCulture);
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
    }

    private static void Copy(Dictionary<string, Tensor> tensors, string name, Tensor target)
    {
        if (!tensors.TryGetValue(name, out var source) || source.NumberOfElements != target.NumberOfElements || source.dtype != target.dtype)
            throw new InvalidDataException($"the replica's '{name}' does not match this rank's ({target.NumberOfElements} × {target.dtype})");
        target.copy_(source.view(target.shape));
    }

    private static string Invariant(long value) => value.ToString(CultureInfo.InvariantCulture);
}
