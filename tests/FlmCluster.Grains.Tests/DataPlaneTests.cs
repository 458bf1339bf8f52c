using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.DataPlane;
using static TorchSharp.torch;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// A data plane's collectives between workers of two silos against plain references: the Orleans data plane (in
/// process within a silo, chunked grain calls across silos) and the socket data plane (in memory within a silo,
/// TCP across).
/// </summary>
public abstract class DataPlaneTests(string dataPlane) : ClusterTestClass(TimeSpan.FromMinutes(5), dataPlane, 2, 2)
{
    // Ranks alternate between the two silos, so every collective mixes in-process and cross-silo messages.
    private static readonly string[] Workers = ["Silo_0/gpu0", "Silo_1/gpu0", "Silo_0/gpu1", "Silo_1/gpu1"];

    private async Task<ProbeResult[]> Probe(IReadOnlyList<ProbeOp> ops, ulong seed)
    {
        var key = SessionKeys.New();
        return await Task.WhenAll(Workers.Select((w, rank) =>
            Cluster.Client.GetGrain<IGpuWorkerGrain>(w).Probe(new ProbeRequest($"probe-{seed}", rank, Workers, ops, seed, ReturnOutputs: true, key))));
    }

    private static Tensor Out(ProbeResult r, int op, string dtype)
    {
        var bytes = r.Outputs[op];
        var t = empty(bytes.Length / ProbeElement(dtype), dtype: ProbeRunner.DType(dtype));
        bytes.CopyTo(t.bytes);
        return t;
    }

    private static int ProbeElement(string dtype) => dtype switch { "f64" or "i64" => 8, "bf16" => 2, _ => 4 };

    [Fact]
    public async Task Every_collective_equals_its_reference_including_odd_and_multi_chunk_sizes()
    {
        ProbeOp[] ops =
        [
            new("all-reduce", 1), new("all-reduce", 7), new("all-reduce", 1001, "f64"),
            new("all-reduce", 3_000_001),                 // 12 MB: several 4 MiB chunks per cross-silo message
            new("all-reduce", 33, "bf16"), new("all-reduce", 17, "i64"), new("all-reduce-max", 999),
            new("reduce-scatter", 5), new("reduce-scatter", 1_100_003), new("all-gather", 3), new("all-gather", 1_500_001),
            new("broadcast", 13, "f32", Root: 2), new("send-recv", 101), new("send-recv", 1_200_000), new("barrier", 1),
        ];
        const ulong seed = 5;
        var results = await Probe(ops, seed);
        Tensor In(int rank, int op) => ProbeRunner.Input(seed, rank, op, ops[op].Kind == "reduce-scatter" ? ops[op].Elements * 4 : ops[op].Elements, ops[op].DType);

        for (var op = 0; op < ops.Length; op++)
        {
            var o = ops[op];
            using var scope = NewDisposeScope();
            for (var rank = 0; rank < 4; rank++)
            {
                var actual = Out(results[rank], op, o.DType);
                Tensor expected = o.Kind switch
                {
                    "all-reduce" => ((In(0, op) + In(1, op)) + In(2, op)) + In(3, op),        // member order
                    "all-reduce-max" => maximum(maximum(maximum(In(0, op), In(1, op)), In(2, op)), In(3, op)),
                    "reduce-scatter" => (((In(0, op) + In(1, op)) + In(2, op)) + In(3, op)).narrow(0, rank * o.Elements, o.Elements),
                    "all-gather" => cat(Enumerable.Range(0, 4).Select(r => In(r, op)).ToArray(), 0),
                    "broadcast" => In(o.Root, op),
                    "send-recv" => In((rank + 3) % 4, op),
                    _ => In(rank, op),
                };
                Assert.True(actual.equal(expected).all().item<bool>(), $"op {op} ({o.Kind} {o.Elements} {o.DType}) differs on rank {rank}");
            }
        }
        Assert.Equal(["Silo_0", "Silo_1", "Silo_0", "Silo_1"], results.Select(r => SiloName(r.Silo)));
    }

    private string SiloName(string silo) =>
        Cluster.Silos.Single(s => silo.Contains(s.SiloAddress.ToString())).Name;

    [Fact]
    public async Task A_busy_or_misaddressed_worker_refuses_a_probe()
    {
        var ex = await Assert.ThrowsAsync<ClusterRequestException>(() =>
            Cluster.Client.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0").Probe(new ProbeRequest("p", 1, Workers, [], 1, false)));
        Assert.Contains("does not give rank 1", ex.Message);
    }

    [Fact]
    public async Task A_worker_refuses_replica_chunks_it_could_not_hold()
    {
        var worker = Cluster.Client.GetGrain<IGpuWorkerGrain>(Workers[1]);
        await Assert.ThrowsAsync<ClusterRequestException>(() => worker.HoldReplica(new ReplicaChunk("j", 0, 1, 0, 1, new byte[TensorChunk.MaxBytes + 1], "x")));
        await Assert.ThrowsAsync<ClusterRequestException>(() => worker.HoldReplica(new ReplicaChunk("j", 0, 1, 0, int.MaxValue, new byte[8], "x")));
        Assert.Null(await worker.FetchReplica("j", 0, 1, 0));
    }
}

public sealed class OrleansDataPlaneTests() : DataPlaneTests("orleans");

public sealed class SocketDataPlaneClusterTests() : DataPlaneTests("socket");
