using System.Diagnostics;
using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Bench;

/// <summary>
/// In-process all-reduce and all-gather bandwidth against plain memcpy bandwidth of the same buffer size,
/// measured in the same run. Algorithm bandwidth = bytes per member ÷ time; bus bandwidth (NCCL's
/// convention) = algorithm bandwidth × 2(n−1)/n for all-reduce and × (n−1)/n for all-gather.
/// </summary>
public static class CollectivesBenchmark
{
    public static int Run(BenchArgs args)
    {
        var repeats = args.Int("repeats", 5);
        var iterations = args.Int("iterations", 10);
        Console.WriteLine($"collectives: {repeats} repeats × {iterations} operations, median; {Environment.ProcessorCount} cores");
        Console.WriteLine();
        Console.WriteLine("| operation | ranks | MiB per rank | memcpy GB/s | algorithm GB/s | bus GB/s | bus / memcpy |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (var mib in new[] { 4, 64 })
        {
            var bytes = (long)mib << 20;
            var memcpy = Stats.Median(Enumerable.Range(0, repeats).Select(_ => MemcpyRate(bytes, iterations)));
            foreach (var ranks in new[] { 2, 4, 8 })
            {
                var allReduce = Stats.Median(Enumerable.Range(0, repeats).Select(_ => CollectiveRate(ranks, bytes, iterations, gather: false)));
                var bus = allReduce * 2 * (ranks - 1) / ranks;
                Console.WriteLine($"| all-reduce | {ranks} | {mib} | {memcpy:0.00} | {allReduce:0.00} | {bus:0.00} | {bus / memcpy:0.00} |");
                var allGather = Stats.Median(Enumerable.Range(0, repeats).Select(_ => CollectiveRate(ranks, bytes, iterations, gather: true)));
                var gatherBus = allGather * (ranks - 1) / ranks;
                Console.WriteLine($"| all-gather | {ranks} | {mib} | {memcpy:0.00} | {allGather:0.00} | {gatherBus:0.00} | {gatherBus / memcpy:0.00} |");
            }
        }
        return 0;
    }

    private static unsafe double MemcpyRate(long bytes, int iterations)
    {
        var source = new byte[bytes];
        var destination = new byte[bytes];
        Random.Shared.NextBytes(source);
        source.AsSpan().CopyTo(destination);
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < iterations; i++)
            source.AsSpan().CopyTo(destination);
        return bytes * (double)iterations / watch.Elapsed.TotalSeconds / 1e9;
    }

    /// <summary>GB/s of bytes per member: all-reduce of a buffer of that size, or all-gather into n × that size.</summary>
    private static double CollectiveRate(int ranks, long bytes, int iterations, bool gather)
    {
        using var fabric = new InProcessFabric(ranks);
        var group = new ProcessGroup("all", Enumerable.Range(0, ranks).ToArray());
        var elements = bytes / 4;
        var elapsed = new TimeSpan[ranks];
        var threads = Enumerable.Range(0, ranks).Select(r => new Thread(() =>
        {
            var comm = fabric.ForRank(r);
            using var buffer = gather ? zeros(elements * ranks) : ones(elements);
            using var input = ones(elements);
            void Op()
            {
                if (gather)
                    comm.AllGather(group, input, buffer);
                else
                    comm.AllReduce(group, buffer);
            }
            Op();
            comm.Barrier(group);
            var watch = Stopwatch.StartNew();
            for (var i = 0; i < iterations; i++)
                Op();
            elapsed[r] = watch.Elapsed;
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        return bytes * (double)iterations / elapsed.Max().TotalSeconds / 1e9;
    }
}
