using System.Diagnostics;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Scaling;

namespace FlmCluster.Bench;

/// <summary>
/// Growth vs training the final shape from scratch for the same compute on the bundled corpus (byte
/// vocabulary): held-out loss along cumulative training FLOPs, the loss each run ends at, and the FLOPs each
/// needs to reach a loss. FLOPs per token = 6·N + 6·L·S·a (N: matrix parameters incl. the head; a: attention
/// width), the usual forward + backward estimate.
/// </summary>
public static class GrowthBenchmark
{
    public static int Run(BenchArgs args)
    {
        var scale = args.Int("scale", 1);
        var evalEvery = args.Int("eval-every", 25);
        var job = JobValidator.Validate(new JobConfig
        {
            Name = "growth-bench",
            Tokenizer = TokenizerFactory.Bytes,
            Model = new ModelConfig { Layers = 2, Hidden = 64, Heads = 2, SeqLen = 128, VocabPadMultiple = 128, Mup = new MupConfig { BaseWidth = 64 } },
            Train = new TrainConfig { GlobalBatch = 16 },
            Optimizer = new OptimizerConfig { Lr = 3e-3, MinLr = 3e-4, WarmupSteps = 20 },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 300 * scale, Lr = 3e-3, WarmupSteps = 20 },
                new StageConfig { Name = "b", Layers = 3, Hidden = 96, Heads = 3, Steps = 150 * scale, Lr = 2.5e-3, WarmupSteps = 10, MaskRampSteps = 20 },
                new StageConfig { Name = "c", Layers = 4, Hidden = 128, Heads = 4, Steps = 150 * scale, Lr = 2e-3, WarmupSteps = 10, MaskRampSteps = 20 },
            ],
        });
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        var watch = Stopwatch.StartNew();
        var growth = RunGrowth(job, data, evalEvery);
        var growthSeconds = watch.Elapsed.TotalSeconds;
        var final = job.Stages[^1];
        var finalModel = job.Model with { Layers = final.Layers!.Value, Hidden = final.Hidden!.Value, Heads = final.Heads!.Value };
        var budget = growth[^1].Flops;
        var scratchSteps = (long)Math.Round(budget / FlopsPerStep(finalModel, job.Train.GlobalBatch));
        var scratchJob = job with
        {
            Model = finalModel,
            Stages = [],
            Train = job.Train with { Steps = scratchSteps },
            Optimizer = job.Optimizer with { Lr = 2e-3, MinLr = 2e-4, WarmupSteps = 20 },
        };
        watch.Restart();
        var scratch = RunScratch(scratchJob, data, evalEvery);
        var scratchSeconds = watch.Elapsed.TotalSeconds;

        Console.WriteLine($"growth: {string.Join(" → ", job.Stages.Select(s => s.Name))} ({job.Train.Steps} steps, {budget:0.00e+0} FLOPs, {growthSeconds:0} s); scratch: final shape for {scratchSteps} steps ({scratch[^1].Flops:0.00e+0} FLOPs, {scratchSeconds:0} s)");
        Console.WriteLine();
        Console.WriteLine("| run | steps | training FLOPs | final held-out loss | FLOPs to reach loss 2.60 | FLOPs to reach loss 2.45 | wall s |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (var (name, curve, seconds) in new[] { ("growth 2×64 → 3×96 → 4×128", growth, growthSeconds), ("scratch 4×128", scratch, scratchSeconds) })
            Console.WriteLine($"| {name} | {curve[^1].Step} | {curve[^1].Flops:0.00e+0} | {curve[^1].Loss:0.0000} | {Reach(curve, 2.60)} | {Reach(curve, 2.45)} | {seconds:0} |");
        Console.WriteLine();
        Console.WriteLine("held-out loss along compute (every evaluation):");
        Console.WriteLine("| FLOPs | growth | scratch |");
        Console.WriteLine("|---|---|---|");
        foreach (var point in growth)
        {
            var other = scratch.LastOrDefault(s => s.Flops <= point.Flops * 1.0001);
            Console.WriteLine($"| {point.Flops:0.00e+0} | {point.Loss:0.0000} | {(other.Step > 0 ? other.Loss.ToString("0.0000") : "")} |");
        }
        return 0;
    }

    private static string Reach(List<(long Step, double Flops, double Loss)> curve, double target) =>
        curve.FirstOrDefault(p => p.Loss <= target) is { Step: > 0 } hit ? hit.Flops.ToString("0.00e+0") : "not reached";

    /// <summary>Training FLOPs of one step: 6 × (matrix parameters incl. head) + 6·L·S·a attention, per token.</summary>
    public static double FlopsPerStep(ModelConfig m, int globalBatch)
    {
        var tokens = (double)globalBatch * m.SeqLen;
        var matrices = (double)m.Layers * (4.0 * m.AttentionWidth * m.Hidden + 2.0 * m.FfnSize * m.Hidden) + (double)m.PaddedVocab * m.Hidden;
        return tokens * (6 * matrices + 6.0 * m.Layers * m.SeqLen * m.AttentionWidth);
    }

    private static double Eval(LocalEngine engine, int batch) =>
        Enumerable.Range(0, 8).Average(i => engine.EvaluateLoss(ScalingExperiments.EvalStart + (long)i * batch));

    private static List<(long Step, double Flops, double Loss)> RunGrowth(JobConfig job, TokenDataset data, int evalEvery)
    {
        using var run = TrainingRun.Create(job, data);
        var curve = new List<(long Step, double Flops, double Loss)>();
        double flops = 0;
        while (!run.Finished)
        {
            if (run.AtStageEnd)
            {
                run.Grow();
                continue;
            }
            run.RunStep();
            flops += FlopsPerStep(run.Stage.Job.Model, run.Stage.Job.Train.GlobalBatch);
            if (run.NextStep % evalEvery == 0 || run.Finished)
                curve.Add((run.NextStep, flops, Eval(run.Engine, job.Train.GlobalBatch)));
        }
        return curve;
    }

    private static List<(long Step, double Flops, double Loss)> RunScratch(JobConfig job, TokenDataset data, int evalEvery)
    {
        using var engine = LocalEngine.Create(job, data);
        var curve = new List<(long Step, double Flops, double Loss)>();
        var perStep = FlopsPerStep(job.Model, job.Train.GlobalBatch);
        while (engine.NextStep < job.Train.Steps)
        {
            engine.RunStep();
            if (engine.NextStep % evalEvery == 0 || engine.NextStep == job.Train.Steps)
                curve.Add((engine.NextStep, engine.NextStep * perStep, Eval(engine, job.Train.GlobalBatch)));
        }
        return curve;
    }
}
