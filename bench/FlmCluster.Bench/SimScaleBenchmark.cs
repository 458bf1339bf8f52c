using System.Diagnostics;
using System.Diagnostics.Metrics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Sim;
using FlmCluster.Silo;
using FlmCluster.Training.Config;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Sim;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Bench;

/// <summary>
/// The control plane at scale: a job on 8 … 768 simulated GPUs (servers of 8, silos in this process), its steps
/// modelled, so that all the real time a step takes is the control plane's: the fan-out of the step to every rank
/// and the reports back, and the durable commit. Per step, against GPUs, and relative to the 8-GPU run of the same
/// invocation; and as a share of the modelled 101B step.
/// </summary>
public static class SimScaleBenchmark
{
    public static async Task<int> Run(BenchArgs args)
    {
        var steps = args.Int("steps", 1000);
        var sizes = args.Text("gpus", "8,32,64,192,384,768").Split(',').Select(int.Parse).ToList();
        var storage = args.Text("storage", Path.GetTempPath());
        Console.WriteLine($"control plane per step: {steps} steps of a 16B-shaped job (tp=2, dp=GPUs/2, batch 2304) on simulated 8-GPU servers; " +
            $"silos in this process on {Environment.ProcessorCount} cores; grain state in {storage}");
        Console.WriteLine();
        Console.WriteLine("| GPUs | servers | fan-out + fan-in ms | commit ms | real ms per step | CPU ms per step | real vs 8 GPUs | share of the modelled 101B step |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        var modelled101b = StepCostModel.For(Presets.Model101B, new ParallelLayout(12, 4, 4, 180), 2160, "bf16", SimCluster.Default).Seconds;
        double? baseline = null;
        foreach (var gpus in sizes)
        {
            var m = await Measure(gpus, steps, storage);
            baseline ??= m.PerStep;
            Console.WriteLine($"| {gpus} | {gpus / 8} | {m.FanOut:0.00} | {m.Commit:0.00} | {m.PerStep:0.00} | {m.Cpu:0.00} | {m.PerStep / baseline:0.0}× | {m.PerStep / 1000 / modelled101b:P4} |");
        }
        return 0;
    }

    private sealed record Measurement(double FanOut, double Commit, double PerStep, double Cpu);

    private static async Task<Measurement> Measure(int gpus, int steps, string storage)
    {
        using var clock = new VirtualClock();
        var dir = Directory.CreateDirectory(Path.Combine(storage, $"flm-scale-{Guid.NewGuid():N}")).FullName;
        try
        {
            await using var cluster = await LocalCluster.StartAsync(gpus / 8, 8, storageDir: dir, simulation: new FlmSimulation(SimCluster.Default, clock));
            var job = JobValidator.Validate(new JobConfig
            {
                Name = $"scale-{gpus}",
                Model = Presets.Model16B,
                Train = new TrainConfig { Steps = steps, GlobalBatch = 2304, Precision = "bf16", Device = JobValidator.SimDevice },
                Layout = new LayoutConfig { Dp = gpus / 2, Tp = 2, Pp = 1, MicroBatches = 2304 / (gpus / 2) },
            });
            var parts = new Dictionary<string, List<double>> { ["fan_out"] = [], ["commit"] = [] };
            using var listener = new MeterListener();
            listener.InstrumentPublished = (instrument, l) =>
            {
                // By name: the listener may see the instrument while FlmTelemetry's fields are still being set.
                if (instrument.Meter.Name == FlmTelemetry.Name && instrument.Name == "flm.job.step.control")
                    l.EnableMeasurementEvents(instrument);
            };
            listener.SetMeasurementEventCallback<double>((_, value, tags, _) =>
            {
                foreach (var tag in tags)
                    if (tag.Key == FlmTelemetry.Tags.Part && tag.Value is string part)
                        lock (parts)
                            parts[part].Add(value * 1000);
            });
            listener.Start();
            var grains = cluster.Grains(cluster.Nodes[0]);
            var id = await grains.GetGrain<IClusterSchedulerGrain>("cluster").Submit(new JobSubmission(JobConfigLoader.ToJson(job)));
            // From the first committed step to the last: the job's start-up (building the ranks) is not a step.
            var (first, watch, cpu) = (-1L, new Stopwatch(), TimeSpan.Zero);
            while (true)
            {
                var status = await grains.GetGrain<IJobCoordinatorGrain>(id).GetStatus();
                if (first < 0 && status.Step > 0)
                    (first, cpu) = (status.Step, Environment.CpuUsage.TotalTime);
                if (first >= 0 && !watch.IsRunning)
                    watch.Start();
                if (status.State.IsFinal())
                {
                    if (status.State != JobPhase.Completed)
                        throw new InvalidOperationException($"job {id} {status.State}: {status.Error}");
                    var counted = steps - first;
                    lock (parts)
                        return new Measurement(Stats.Median(parts["fan_out"]), Stats.Median(parts["commit"]), watch.Elapsed.TotalMilliseconds / counted,
                            (Environment.CpuUsage.TotalTime - cpu).TotalMilliseconds / counted);
                }
                await Task.Delay(20);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
