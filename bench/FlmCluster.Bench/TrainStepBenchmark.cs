using System.Diagnostics;
using FlmCluster.Reference;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Optim;
using static TorchSharp.torch;

namespace FlmCluster.Bench;

/// <summary>
/// Tokens/s of the engine's training step (layout 1/1/1) against a bare TorchSharp loop of the same math
/// (built-in modules, full-logit cross-entropy, torch.optim.AdamW, clip_grad_norm_) on the same batches,
/// alternating engine and baseline runs (both on a fresh dedicated compute thread) and taking medians.
/// </summary>
public static class TrainStepBenchmark
{
    public static int Run(BenchArgs args)
    {
        var repeats = args.Int("repeats", 3);
        var steps = args.Int("steps", 20);
        var warmup = args.Int("warmup", 5);
        var threads = args.Int("threads", Environment.ProcessorCount);
        Console.WriteLine($"train-step: {repeats} repeats × {steps} timed steps (after {warmup} warm-up steps), torch threads {threads}");
        Console.WriteLine();
        Console.WriteLine("| model | tokenizer (rows) | tokens/step | engine tok/s | bare loop tok/s | ratio engine/bare |");
        Console.WriteLine("|---|---|---|---|---|---|");
        var cases = new (string Name, JobConfig Job)[]
        {
            ("4 × 256, seq 256", Job("bytes", layers: 4, hidden: 256, heads: 4, seq: 256, threads)),
            ("tiny preset (4 × 128, seq 128)", JobConfigLoader.Load("tiny", [$"train.threads={threads}", "train.precision=fp32"])),
        };
        var only = args.Text("case", "all");
        foreach (var (name, job) in cases.Where(c => only == "all" || c.Job.Tokenizer == only))
        {
            using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
            var engineRates = new List<double>();
            var bareRates = new List<double>();
            for (var r = 0; r < repeats; r++)
            {
                engineRates.Add(EngineRate(job, data, warmup, steps));
                // The baseline also runs on a fresh dedicated thread, as each engine rank does, so the ratio
                // measures the engine's own overhead rather than thread warm-up.
                using var thread = new DeviceThread("bare-loop");
                bareRates.Add(thread.Run(() => BareRate(job, data, warmup, steps)).Result);
            }
            var ratios = engineRates.Zip(bareRates, (e, b) => e / b);
            var tokens = job.Train.GlobalBatch * job.Model.SeqLen;
            Console.WriteLine($"| {name} | {job.Tokenizer} ({job.Model.PaddedVocab:N0}) | {tokens:N0} | {Stats.Median(engineRates):N0} | {Stats.Median(bareRates):N0} | {Stats.Median(ratios):0.000} |");
        }
        return 0;
    }

    private static JobConfig Job(string tokenizer, int layers, int hidden, int heads, int seq, int threads) => JobValidator.Validate(new JobConfig
    {
        Name = "bench",
        Tokenizer = tokenizer,
        Model = new ModelConfig { Layers = layers, Hidden = hidden, Heads = heads, SeqLen = seq, VocabPadMultiple = 128, Mup = new MupConfig { BaseWidth = hidden } },
        Train = new TrainConfig { Steps = 1000, GlobalBatch = 8, Precision = "fp32", Threads = threads },
        Optimizer = new OptimizerConfig { Lr = 1e-3, WarmupSteps = 10 },
    });

    private static double EngineRate(JobConfig job, TokenDataset data, int warmup, int steps)
    {
        using var engine = LocalEngine.Create(job, data);
        for (var i = 0; i < warmup; i++)
            engine.RunStep();
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < steps; i++)
            engine.RunStep();
        return (double)steps * job.Train.GlobalBatch * job.Model.SeqLen / watch.Elapsed.TotalSeconds;
    }

    private static double BareRate(JobConfig job, TokenDataset data, int warmup, int steps)
    {
        TorchEnvironment.ConfigureThreads(job.Train.Threads, 1);
        using var model = new PlainFlm(job.Model);
        using (var init = LocalEngine.Create(job, data))
        {
            var parameters = StateAssembler.GatherParameters(init.Ranks);
            model.Load(parameters);
        }
        using var optimizer = model.CreateOptimizer(job.Optimizer);
        var schedule = new LrSchedule(job.Optimizer, job.Train.Steps);
        var order = new SampleOrder(data.TokenCount, job.Model.SeqLen, job.Data.Seed);
        int b = job.Train.GlobalBatch, s = job.Model.SeqLen;
        var watch = new Stopwatch();
        for (var step = 0; step < steps + warmup; step++)
        {
            if (step == warmup)
                watch.Start();
            using var scope = NewDisposeScope();
            var batch = new long[b * (s + 1)];
            for (var i = 0; i < b; i++)
                data.CopyTokens(order.StartToken((long)step * b + i), batch.AsSpan(i * (s + 1), s + 1));
            var windows = tensor(batch, [b, s + 1]);
            optimizer.zero_grad();
            model.SetLearningRate(optimizer, schedule.At(step));
            var logits = model.Logits(windows.narrow(1, 0, s));
            var loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), windows.narrow(1, 1, s).reshape(-1));
            loss.backward();
            nn.utils.clip_grad_norm_(model.parameters(), job.Optimizer.ClipGrad);
            optimizer.step();
            _ = loss.item<float>();
        }
        return (double)steps * b * s / watch.Elapsed.TotalSeconds;
    }
}
