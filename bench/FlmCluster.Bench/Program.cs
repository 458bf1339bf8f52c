using FlmCluster.Bench;

// Each benchmark measures the thing and its baseline in the same run and prints a markdown table.
var benchmarks = new Dictionary<string, Func<BenchArgs, int>>
{
    ["cluster"] = a => ClusterBenchmark.Run(a).GetAwaiter().GetResult(),
    ["dataplane"] = a => DataPlaneBenchmark.Run(a).GetAwaiter().GetResult(),
    ["security"] = a => SecurityBenchmark.Run(a).GetAwaiter().GetResult(),
    ["train-step"] = TrainStepBenchmark.Run,
    ["collectives"] = CollectivesBenchmark.Run,
    ["pipeline-bubble"] = PipelineBubbleBenchmark.Run,
    ["layouts"] = LayoutThroughputBenchmark.Run,
    ["growth"] = GrowthBenchmark.Run,
    ["checkpoint"] = CheckpointBenchmark.Run,
    ["sim"] = a => SimScheduleBenchmark.Run(a).GetAwaiter().GetResult(),
    ["sim-scale"] = a => SimScaleBenchmark.Run(a).GetAwaiter().GetResult(),
    ["reshard"] = ReshardBenchmark.Run,
    ["soak"] = a => SoakBenchmark.Run(a).GetAwaiter().GetResult(),
    ["telemetry"] = a => TelemetryBenchmark.Run(a).GetAwaiter().GetResult(),
};

if (args.Length == 0 || !benchmarks.TryGetValue(args[0], out var run))
{
    Console.Error.WriteLine($"usage: FlmCluster.Bench <{string.Join("|", benchmarks.Keys)}> [--key value ...]");
    return 2;
}
return run(BenchArgs.Parse(args[1..]));
