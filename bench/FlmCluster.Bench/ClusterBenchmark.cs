using System.Diagnostics;
using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Silo;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Bench;

/// <summary>
/// The cluster's costs, on a local cluster of silos in this process (TCP over loopback between silos):
/// (a) fan-out/fan-in of an empty step to 4, 16 and 64 workers over 4 silos; (b) all-reduce bandwidth
/// between two silos against raw loopback TCP measured in the same run; (c) tokens/s of a 2-silo job against
/// the in-process engine with the same layout.
/// </summary>
public static class ClusterBenchmark
{
    public static async Task<int> Run(BenchArgs args)
    {
        var rounds = args.Int("rounds", 200);
        Console.WriteLine($"cluster benchmarks on {Environment.ProcessorCount} cores; silos in this process, loopback TCP between them");
        Console.WriteLine();
        await ControlPlane(rounds);
        Console.WriteLine();
        await Bandwidth(args.Int("mib", 64), args.Int("repeats", 5));
        Console.WriteLine();
        await Throughput(args.Int("steps", 20));
        return 0;
    }

    private static async Task<(LocalCluster, FlmClusterClient)> Start(int nodes, int gpus)
    {
        var cluster = await LocalCluster.StartAsync(nodes, gpus, torchThreads: 1, observe: false);
        var client = await FlmClusterClient.ConnectAsync(new ClusterProfile { GatewayPorts = cluster.GatewayPorts, ClusterId = cluster.ClusterId });
        return (cluster, client);
    }

    private static async Task ControlPlane(int rounds)
    {
        Console.WriteLine($"(a) empty step: one call to every worker (dispatched to its device thread and back), awaited together; {rounds} rounds, after 20 warm-up");
        Console.WriteLine();
        Console.WriteLine("| workers | silos | median ms | p90 ms |");
        Console.WriteLine("|---|---|---|---|");
        var (cluster, client) = await Start(4, 16);
        await using (cluster)
        await using (client)
        {
            foreach (var perSilo in new[] { 1, 4, 16 })
            {
                var workers = Enumerable.Range(0, 4).SelectMany(n => Enumerable.Range(0, perSilo).Select(g => $"node{n}/gpu{g}")).ToList();
                var grains = workers.Select(w => client.Grains.GetGrain<IGpuWorkerGrain>(w)).ToList();
                var times = new List<double>();
                for (var round = 0; round < rounds + 20; round++)
                {
                    var id = $"empty-{perSilo}-{round}";
                    var watch = Stopwatch.StartNew();
                    await Task.WhenAll(grains.Select((g, rank) => g.Probe(new ProbeRequest(id, rank, workers, [], 1, false))));
                    if (round >= 20)
                        times.Add(watch.Elapsed.TotalMilliseconds);
                }
                times.Sort();
                Console.WriteLine($"| {workers.Count} | 4 | {Stats.Median(times):0.00} | {times[(int)(times.Count * 0.9)]:0.00} |");
            }
        }
    }

    private static async Task Bandwidth(int mib, int repeats)
    {
        var bytes = (long)mib << 20;
        var (cluster, client) = await Start(2, 1);
        double allReduce;
        await using (cluster)
        await using (client)
        {
            string[] workers = ["node0/gpu0", "node1/gpu0"];
            ProbeOp[] ops = [new("all-reduce", bytes / 4, "f32", 0, repeats)];
            await Probe(client, workers, [new("all-reduce", 1 << 20)]); // warm-up
            var results = await Probe(client, workers, ops);
            allReduce = bytes * repeats / (results.Max(r => r.Milliseconds[0]) / 1000) / 1e9;
        }
        var tcp = LoopbackTcp.Stream(bytes * repeats);
        Console.WriteLine($"(b) all-reduce of {mib} MiB between two silos (ranks on different silos: every byte crosses by grain calls in 4 MiB chunks), {repeats} repeats");
        Console.WriteLine();
        Console.WriteLine("| measure | GB/s |");
        Console.WriteLine("|---|---|");
        Console.WriteLine($"| raw loopback TCP, one stream, 4 MiB writes | {tcp:0.00} |");
        Console.WriteLine($"| all-reduce algorithm bandwidth (bytes per rank ÷ time) | {allReduce:0.00} |");
        Console.WriteLine($"| all-reduce bus bandwidth (× 2(n−1)/n = × 1 for n = 2) | {allReduce:0.00} |");
        Console.WriteLine($"| bus / TCP | {allReduce / tcp:0.00} |");
    }

    private static Task<ProbeResult[]> Probe(FlmClusterClient client, string[] workers, ProbeOp[] ops)
    {
        var id = $"bw-{Guid.NewGuid():N}";
        return Task.WhenAll(workers.Select((w, rank) => client.Grains.GetGrain<IGpuWorkerGrain>(w).Probe(new ProbeRequest(id, rank, workers, ops, 3, false))));
    }

    private static async Task Throughput(int steps)
    {
        var job = BenchJobs.Bytes("bench-cluster", layers: 4, hidden: 256, heads: 4, seqLen: 256, globalBatch: 16, new LayoutConfig { Dp = 2 }, threads: 1);
        job = job with { Train = job.Train with { Steps = steps } };
        double local;
        using (var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab))
        using (var engine = LocalEngine.Create(job, data))
        {
            engine.RunStep();
            var watch = Stopwatch.StartNew();
            for (var i = 1; i < steps; i++)
                engine.RunStep();
            local = (steps - 1.0) * job.Train.GlobalBatch * job.Model.SeqLen / watch.Elapsed.TotalSeconds;
        }
        double clustered;
        var (cluster, client) = await Start(2, 1);
        await using (cluster)
        await using (client)
        {
            var id = await client.Submit(new JobSubmission(JobConfigLoader.ToJson(job)));
            JobStatus status;
            do
            {
                await Task.Delay(100);
                status = await client.Status(id);
            }
            while (!status.State.IsFinal());
            // Steady state: the steps after the first, from the coordinator's per-step wall time.
            var points = (await client.History(id, 1, 0)).Steps.Select(s => s.Point).ToList();
            clustered = points.Sum(p => p.Tokens) / points.Sum(p => p.StepMs / 1000);
        }
        Console.WriteLine($"(c) 4 × 256 model, byte vocabulary, seq 256, global batch 16, layout dp=2 (one rank per silo on the cluster), {steps} steps, 1 torch thread per rank");
        Console.WriteLine();
        Console.WriteLine("| engine | tokens/s | vs in-process |");
        Console.WriteLine("|---|---|---|");
        Console.WriteLine($"| in-process (2 ranks as threads) | {local:N0} | 1.00 |");
        Console.WriteLine($"| 2 silos (gradients cross by grain calls) | {clustered:N0} | {clustered / local:0.00} |");
    }
}
