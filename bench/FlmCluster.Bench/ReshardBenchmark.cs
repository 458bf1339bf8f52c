using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Model;

namespace FlmCluster.Bench;

/// <summary>
/// Memory of slice-wise restores: the `small` preset (cl100k vocabulary, 30 M parameters) saved under dp=2 and
/// loaded by each rank of tp=2, and grown from its stage checkpoint into 6 × 512 under tp=2, with the budget at
/// 16, 64 and 256 MiB. For each rank (loaded once before, so that its own state is resident): the budget's own
/// count of its buffers, and the process's peak resident memory above what it held before the load (the
/// kernel's high-water mark, reset before each load), next to the checkpoint's size and the largest whole
/// tensor a tensor-at-a-time load would hold.
/// </summary>
public static class ReshardBenchmark
{
    private static readonly long[] BudgetsMiB = [16, 64, 256];
    private const double Mi = 1 << 20;

    public static int Run(BenchArgs args)
    {
        var root = Path.Combine(args.Text("dir", Path.GetTempPath()), $"flm-reshard-bench-{Guid.NewGuid():N}");
        Directory.CreateDirectory(root);
        try
        {
            Console.WriteLine("slice-wise restore and growth of the small preset (6 × 256, cl100k vocabulary), one rank at a time; peak extra resident memory from the kernel's high-water mark (reset before each load)");
            Console.WriteLine();
            Console.WriteLine("| load | checkpoint | largest whole tensor | budget | budget's peak | peak extra resident memory |");
            Console.WriteLine("|---|---|---|---|---|---|");
            Restore(root);
            Grow(root);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        return 0;
    }

    private static JobConfig Small(string dir, LayoutConfig layout) => JobConfigLoader.Load("small", ["train.steps=1", "train.threads=1"],
        job => job with { Layout = layout, Checkpoint = new CheckpointConfig { Dir = dir, Async = false } });

    private static void Restore(string root)
    {
        var saved = Small(Path.Combine(root, "restore"), new LayoutConfig { Dp = 2 });
        using var data = TokenDataset.Load(saved.Data.Paths, TokenizerFactory.Create(saved.Tokenizer), saved.Model.PaddedVocab);
        using (var run = TrainingRun.Create(saved, data))
        {
            run.RunStep();
            run.SaveCheckpoint();
        }
        var reader = CheckpointStore.Resolve(saved.Checkpoint.Dir);
        foreach (var precision in new[] { "fp32", "bf16" })
        {
            // bf16 parameters (with fp32 master weights) take the checkpoint's fp32 values through the staging buffer.
            using var engine = LocalEngine.Create(saved with { Layout = new LayoutConfig { Tp = 2 }, Train = saved.Train with { Precision = precision } }, data);
            foreach (var mib in BudgetsMiB)
                Report($"restore dp=2 → tp=2, {precision} parameters", reader, Largest(ParamCatalog.Whole(saved.Model)), mib,
                    engine.Ranks.Select<RankTrainer, Action<ReshardBudget>>(rank => budget => CheckpointRestore.Load(rank, reader, budget)));
        }
    }

    private static void Grow(string root)
    {
        var job = JobValidator.Validate(Small(Path.Combine(root, "grow"), new LayoutConfig()) with
        {
            Stages =
            [
                new StageConfig { Name = "a", Steps = 1 },
                new StageConfig { Name = "b", Hidden = 512, Heads = 4, Steps = 1, MaskRampSteps = 1, Layout = new LayoutConfig { Tp = 2 } },
            ],
        });
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        var run = TrainingRun.Create(job, data);
        while (!run.AtStageEnd)
            run.RunStep();
        run.SaveCheckpoint();
        var (progress, stages, next) = (run.Progress, run.Stages, run.Engine.Cursor.IntoNextStage());
        run.Dispose();
        var reader = CheckpointStore.Resolve(job.Checkpoint.Dir);
        using var grown = LocalEngine.ForStage(progress, next, data);
        foreach (var mib in BudgetsMiB)
            Report("grow 6 × 256 → 6 × 512, 1 rank → tp=2", reader, Largest(ParamCatalog.Whole(stages[1].Job.Model)), mib,
                grown.Ranks.Select<RankTrainer, Action<ReshardBudget>>(rank => budget => CheckpointRestore.LoadGrown(rank, reader, job, stages, 1, budget)));
    }

    private static long Largest(IEnumerable<ParamSpec> specs) => specs.Max(s => s.GlobalElements) * 4;

    /// <summary>Loads each rank under a fresh budget; prints the largest peaks over the ranks.</summary>
    private static void Report(string what, CheckpointReader reader, long largestTensor, long mib, IEnumerable<Action<ReshardBudget>> loads)
    {
        long counted = 0, resident = 0;
        foreach (var load in loads.ToList())
        {
            // Once unmeasured: the first write into the rank's own (freshly allocated) state makes its pages resident.
            load(new ReshardBudget(mib << 20));
            var budget = new ReshardBudget(mib << 20);
            GC.Collect();
            GC.WaitForPendingFinalizers();
            var before = ResidentMemory.ResetPeak();
            load(budget);
            resident = Math.Max(resident, ResidentMemory.Peak() - before);
            counted = Math.Max(counted, budget.Peak);
        }
        var size = reader.Manifest.Shards.Sum(s => s.Bytes);
        Console.WriteLine($"| {what} | {size / Mi:0} MiB | {largestTensor / Mi:0} MiB | {mib} MiB | {counted / Mi:0.0} MiB | {resident / Mi:0.0} MiB |");
    }
}

/// <summary>This process's resident memory from /proc (Linux): current, and the high-water mark since the last reset.</summary>
public static class ResidentMemory
{
    /// <summary>Resets the high-water mark to the current resident size (writing 5 to /proc/self/clear_refs); returns that size in bytes.</summary>
    public static long ResetPeak()
    {
        File.WriteAllText("/proc/self/clear_refs", "5");
        return Read("VmRSS:");
    }

    public static long Peak() => Read("VmHWM:");

    private static long Read(string field) =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(field, StringComparison.Ordinal))[field.Length..].Trim().Split(' ')[0],
            System.Globalization.CultureInfo.InvariantCulture) * 1024;
}
