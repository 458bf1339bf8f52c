using System.Diagnostics;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Bench;

/// <summary>
/// Bubble fraction of the 1F1B schedule as the engine executes it (PipelineSchedule + point-to-point
/// messages over the in-process fabric), with each stage's work replaced by a fixed busy time (forward t,
/// backward 2t) so that p stages never compete for this machine's cores. Bubble = 1 − busy ÷ (p × wall).
/// The formula for equal stage times is (p − 1)/(m + p − 1).
/// </summary>
public static class PipelineBubbleBenchmark
{
    public static int Run(BenchArgs args)
    {
        var forwardMs = args.Int("forward-ms", 4);
        Console.WriteLine($"pipeline bubble: forward {forwardMs} ms, backward {2 * forwardMs} ms per micro-batch and stage, activations of 64 KiB");
        Console.WriteLine();
        Console.WriteLine("| stages p | micro-batches m | measured bubble | (p−1)/(m+p−1) | difference |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (var p in new[] { 2, 4, 8 })
        {
            foreach (var m in new[] { 1, 4, 8, 16, 32 })
            {
                Measure(p, m, 1); // warm-up: thread pool, JIT of the message path
                var measured = Stats.Median(Enumerable.Range(0, 3).Select(_ => Measure(p, m, forwardMs)));
                var ideal = PipelineSchedule.IdealBubbleFraction(p, m);
                Console.WriteLine($"| {p} | {m} | {measured:0.000} | {ideal:0.000} | {measured - ideal:+0.000;-0.000} |");
            }
        }
        return 0;
    }

    private static double Measure(int stages, int micro, int forwardMs)
    {
        using var fabric = new InProcessFabric(stages);
        var busy = new double[stages];
        var ended = new long[stages];
        long started = 0;
        // Time starts when every stage is ready, not while threads are being created.
        using var start = new Barrier(stages, _ => started = Stopwatch.GetTimestamp());
        var threads = Enumerable.Range(0, stages).Select(s => new Thread(() =>
        {
            var comm = fabric.ForRank(s);
            using var activation = zeros(16 * 1024);
            start.SignalAndWait();
            foreach (var action in PipelineSchedule.OneForwardOneBackward(s, stages, micro))
            {
                var k = action.MicroBatch;
                if (action.Op == PipelineOp.Forward)
                {
                    if (s > 0) comm.Recv(activation, s - 1, 2 * k);
                    busy[s] += Work(forwardMs);
                    if (s < stages - 1) comm.Send(activation, s + 1, 2 * k);
                }
                else
                {
                    if (s < stages - 1) comm.Recv(activation, s + 1, 2 * k + 1);
                    busy[s] += Work(2 * forwardMs);
                    if (s > 0) comm.Send(activation, s - 1, 2 * k + 1);
                }
            }
            ended[s] = Stopwatch.GetTimestamp();
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        var total = Stopwatch.GetElapsedTime(started, ended.Max()).TotalMilliseconds;
        return 1 - busy.Sum() / (stages * total);
    }

    /// <summary>Occupies the stage for the given time without using a core (the stage's device would be busy).</summary>
    private static double Work(int milliseconds)
    {
        var watch = Stopwatch.StartNew();
        Thread.Sleep(milliseconds);
        return watch.Elapsed.TotalMilliseconds;
    }
}
