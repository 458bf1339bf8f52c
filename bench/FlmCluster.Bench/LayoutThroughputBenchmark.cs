using System.Diagnostics;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Bench;

/// <summary>
/// Tokens/s of layouts 2/1/1 and 1/1/2 against 1/1/1 at equal global batch, every rank a thread of this
/// process (torch threads split evenly: 2 for the single rank, 1 per rank otherwise), repeats alternated.
/// </summary>
public static class LayoutThroughputBenchmark
{
    public static int Run(BenchArgs args)
    {
        var repeats = args.Int("repeats", 3);
        var steps = args.Int("steps", 8);
        var job = BenchJobs.Bytes("bench-layouts", layers: 4, hidden: 256, heads: 4, seqLen: 256, globalBatch: 16);
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        var layouts = new (string Name, LayoutConfig Layout)[]
        {
            ("1/1/1, 1 micro-batch", new LayoutConfig()),
            ("2/1/1, 1 micro-batch per DP rank", new LayoutConfig { Dp = 2 }),
            ("1/1/2, 4 micro-batches (1F1B)", new LayoutConfig { Pp = 2, MicroBatches = 4 }),
            ("1/1/2, 8 micro-batches (1F1B)", new LayoutConfig { Pp = 2, MicroBatches = 8 }),
        };
        var rates = layouts.ToDictionary(l => l.Name, _ => new List<double>());
        for (var r = 0; r < repeats; r++)
            foreach (var (name, layout) in layouts)
                rates[name].Add(Rate(job with { Layout = layout }, data, steps));
        var baseline = Stats.Median(rates[layouts[0].Name]);
        Console.WriteLine($"layouts: 4 × 256 model, seq 256, global batch 16 ({16 * 256:N0} tokens/step), {repeats} repeats × {steps} steps, {Environment.ProcessorCount} cores");
        Console.WriteLine();
        Console.WriteLine("| layout dp/tp/pp | tokens/s | vs 1/1/1 |");
        Console.WriteLine("|---|---|---|");
        foreach (var (name, _) in layouts)
        {
            var median = Stats.Median(rates[name]);
            Console.WriteLine($"| {name} | {median:N0} | {median / baseline:0.00} |");
        }
        return 0;
    }

    private static double Rate(JobConfig job, TokenDataset data, int steps)
    {
        using var engine = LocalEngine.Create(job, data);
        engine.RunStep();
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < steps; i++)
            engine.RunStep();
        return (double)steps * job.Train.GlobalBatch * job.Model.SeqLen / watch.Elapsed.TotalSeconds;
    }
}
