using System.Diagnostics;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Bench;

/// <summary>
/// Sharded checkpoints of a 25 M-parameter model (dp = 2, two shards): persistent save throughput against the
/// disk's sequential write bandwidth measured in the same run (1 GiB, fsync), the training stall per async
/// checkpoint as a fraction of a step, load time (with and without checksum verification), and the peak
/// extra resident memory while saving.
/// </summary>
public static class CheckpointBenchmark
{
    public static int Run(BenchArgs args)
    {
        var saves = args.Int("saves", 4);
        var root = Path.Combine(args.Text("dir", Path.GetTempPath()), $"flm-ckpt-bench-{Guid.NewGuid():N}");
        Directory.CreateDirectory(root);
        try
        {
            // The disk's own rate varies from run to run (host caches): measured before, between and after the saves.
            var diskRates = new List<double> { DiskWrite(root, 1L << 30) };
            var job = BenchJobs.Bytes("bench-ckpt", layers: 8, hidden: 512, heads: 4, seqLen: 128, globalBatch: 8, new LayoutConfig { Dp = 2 })
                with { Checkpoint = new CheckpointConfig { Dir = root, KeepLast = 2, Async = true } };
            using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
            double stepMs;
            var stalls = new List<double>();
            var persistRates = new List<double>();
            var stepsDuringPersist = new List<double>();
            long peakExtra = 0, bytes = 0;
            using (var run = TrainingRun.Create(job, data))
            {
                for (var i = 0; i < 3; i++) run.RunStep();
                // Steps allocate activations; the baseline is the peak while training without a save.
                var trainingPeak = Rss();
                using (new Timer(_ => trainingPeak = Math.Max(trainingPeak, Rss()), null, 0, 5))
                    stepMs = Stats.Median(Enumerable.Range(0, 5).Select(_ => run.RunStep().Elapsed.TotalMilliseconds));
                for (var s = 0; s < saves; s++)
                {
                    var peak = Rss();
                    using var sampler = new Timer(_ => peak = Math.Max(peak, Rss()), null, 0, 5);
                    var stall = run.SaveCheckpoint();
                    stalls.Add(stall.TotalMilliseconds);
                    // Train while the shards are written.
                    while (run.Checkpoints.Writing)
                        stepsDuringPersist.Add(run.RunStep().Elapsed.TotalMilliseconds);
                    run.Checkpoints.WaitForPending();
                    var report = run.Checkpoints.LastCommitted!;
                    bytes = report.Bytes;
                    persistRates.Add(report.Bytes / report.Persist.TotalSeconds / 1e9);
                    peakExtra = Math.Max(peakExtra, peak - trainingPeak);
                    run.RunStep();
                }
            }
            diskRates.Add(DiskWrite(root, 1L << 30));
            // The in-memory tier: each rank's whole state copied and serialized into host memory (what a worker
            // keeps and sends to its peer), both ranks in parallel.
            var replicaSeconds = new List<double>();
            long replicaBytes = 0;
            using (var run = TrainingRun.Create(job, data))
            {
                run.RunStep();
                for (var s = 0; s < saves; s++)
                {
                    var watch = Stopwatch.StartNew();
                    var replicas = run.Engine.Fan(r =>
                    {
                        using var snapshot = RankSnapshot.Capture(run.Engine.Ranks[r]);
                        return ShardWriter.Serialize(snapshot, 4 << 20).Bytes;
                    });
                    replicaSeconds.Add(watch.Elapsed.TotalSeconds);
                    replicaBytes = replicas.Sum(b => b.Length);
                }
            }
            diskRates.Add(DiskWrite(root, 1L << 30));
            var disk = Stats.Median(diskRates);
            var newest = CheckpointStore.List(root).Last(e => e.Valid).Directory;
            var (loadMs, verifyMs) = Load(job, data, newest);
            Console.WriteLine($"checkpoint: 25.4 M-parameter model (8 × 512, byte vocabulary), dp = 2 (two shards), fp32; {saves} saves; step {stepMs:0} ms");
            Console.WriteLine();
            Console.WriteLine("| measure | value |");
            Console.WriteLine("|---|---|");
            Console.WriteLine($"| disk sequential write, 1 GiB with fsync (dd conv=fsync equivalent), median of 3 | {disk:0.00} GB/s ({string.Join(", ", diskRates.Select(r => r.ToString("0.00")))}) |");
            Console.WriteLine($"| checkpoint size (params once + fp32 moments) | {bytes / 1e6:0.0} MB |");
            Console.WriteLine($"| persistent save throughput (shards written in parallel, fsynced, manifest committed), median | {Stats.Median(persistRates):0.00} GB/s |");
            Console.WriteLine($"| save throughput / disk bandwidth | {Stats.Median(persistRates) / disk:0.00} |");
            Console.WriteLine($"| training stall per async checkpoint (snapshot to host memory), median | {Stats.Median(stalls):0.0} ms = {Stats.Median(stalls) / stepMs:P1} of a step |");
            Console.WriteLine($"| step time while shards are written, median | {(stepsDuringPersist.Count > 0 ? Stats.Median(stepsDuringPersist) : double.NaN):0} ms (vs {stepMs:0} ms) |");
            Console.WriteLine($"| peak resident memory while saving and training, above the peak of training alone | {peakExtra / 1e6:0} MB ({peakExtra / (double)bytes:0.00} × checkpoint size) |");
            Console.WriteLine($"| load into a new engine (dp=2), without / with checksum verification | {loadMs:0} ms / {loadMs + verifyMs:0} ms |");
            var persistSeconds = bytes / (Stats.Median(persistRates) * 1e9);
            Console.WriteLine($"| in-memory replicas of both ranks (checkpoint shards in host memory: parameters once + moments), median | {replicaBytes / 1e6:0.0} MB in {Stats.Median(replicaSeconds) * 1e3:0} ms = {replicaBytes / Stats.Median(replicaSeconds) / 1e9:0.00} GB/s |");
            Console.WriteLine($"| persistent save time / in-memory replica time | {persistSeconds / Stats.Median(replicaSeconds):0.0} |");
            return 0;
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static (double LoadMs, double VerifyMs) Load(JobConfig job, TokenDataset data, string checkpoint)
    {
        using var run = TrainingRun.Create(job, data);
        var watch = Stopwatch.StartNew();
        var reader = CheckpointReader.Open(checkpoint);
        run.Engine.Fan(r => CheckpointRestore.Load(run.Engine.Ranks[r], reader));
        var load = watch.Elapsed.TotalMilliseconds;
        watch.Restart();
        var problems = reader.Verify();
        if (problems.Count > 0)
            throw new InvalidOperationException(string.Join("; ", problems));
        return (load, watch.Elapsed.TotalMilliseconds);
    }

    private static double DiskWrite(string directory, long total)
    {
        var path = Path.Combine(directory, "disk-probe.bin");
        var block = new byte[8 << 20];
        Random.Shared.NextBytes(block);
        var watch = Stopwatch.StartNew();
        using (var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            for (long written = 0; written < total; written += block.Length)
                stream.Write(block);
            stream.Flush(flushToDisk: true);
        }
        var rate = total / watch.Elapsed.TotalSeconds / 1e9;
        File.Delete(path);
        return rate;
    }

    private static long Rss()
    {
        using var p = Process.GetCurrentProcess();
        p.Refresh();
        return p.WorkingSet64;
    }
}
