using System.Diagnostics;
using FlmCluster.Reference;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Optim;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

[Collection("Training")]
public class TrainingTests
{
    internal static List<StepSummary> Train(LocalEngine engine, long steps) => Enumerable.Range(0, (int)steps).Select(_ => engine.RunStep()).ToList();

    [Fact]
    public void Engine_matches_a_plain_torchsharp_loop_with_builtin_adamw()
    {
        // Independent reference: built-in modules, full-logit cross-entropy, torch.optim.AdamW and
        // clip_grad_norm_, fed the same global samples.
        var job = TestJobs.Micro(steps: 6) with { Optimizer = TestJobs.Micro().Optimizer with { ClipGrad = 0.5 } };
        using var data = TestJobs.SharedBytes();
        using var engine = LocalEngine.Create(job, data);
        var initial = StateAssembler.GatherParameters(engine.Ranks);
        var engineLosses = Train(engine, 6).Select(s => s.Loss).ToList();
        var engineFinal = StateAssembler.GatherParameters(engine.Ranks);

        using var plain = new PlainFlm(job.Model);
        plain.Load(initial);
        using var optimizer = plain.CreateOptimizer(job.Optimizer);
        var schedule = new LrSchedule(job.Optimizer, job.Train.Steps);
        var order = new SampleOrder(data.TokenCount, job.Model.SeqLen, job.Data.Seed);
        var plainLosses = new List<double>();
        for (var step = 0; step < 6; step++)
        {
            using var scope = NewDisposeScope();
            var batch = new long[job.Train.GlobalBatch * (job.Model.SeqLen + 1)];
            for (var i = 0; i < job.Train.GlobalBatch; i++)
                data.CopyTokens(order.StartToken((long)step * job.Train.GlobalBatch + i), batch.AsSpan(i * (job.Model.SeqLen + 1), job.Model.SeqLen + 1));
            var windows = tensor(batch, [job.Train.GlobalBatch, job.Model.SeqLen + 1]);
            optimizer.zero_grad();
            plain.SetLearningRate(optimizer, schedule.At(step));
            var logits = plain.Logits(windows.narrow(1, 0, job.Model.SeqLen));
            var loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), windows.narrow(1, 1, job.Model.SeqLen).reshape(-1));
            loss.backward();
            nn.utils.clip_grad_norm_(plain.parameters(), job.Optimizer.ClipGrad);
            optimizer.step();
            plainLosses.Add(loss.item<float>());
        }

        for (var i = 0; i < 6; i++)
            Assert.Equal(plainLosses[i], engineLosses[i], 4e-5);
        var reference = plain.Export();
        foreach (var (name, tensor) in engineFinal)
            Assert.True(tensor.allclose(reference[name], rtol: 1e-3, atol: 2e-5), $"{name}: max diff {(tensor - reference[name]).abs().max().item<float>()}");
    }

    [Fact]
    public void Tiny_preset_loss_falls_clearly_on_the_bundled_corpus()
    {
        // The tiny preset's shape with the byte tokenizer (cl100k logits dominate CPU time).
        var job = JobConfigLoader.Load("tiny", ["tokenizer=bytes", "train.steps=300", "model.vocab_pad_multiple=128"]);
        using var engine = LocalEngine.Create(job);
        var steps = Train(engine, 300);
        var first = steps.Take(5).Average(s => s.Loss);
        var last = steps.TakeLast(20).Average(s => s.Loss);
        Assert.True(first > 5.0, $"mean loss of the first 5 steps {first:0.000}"); // uniform over 384 rows: ln 384 = 5.95
        Assert.True(last < 2.45, $"mean loss of the last 20 steps {last:0.000} (first 5: {first:0.000})");
        Assert.All(steps, s => Assert.False(s.Skipped));
    }

    [Fact]
    public void Gradient_accumulation_gives_the_same_steps_as_one_big_micro_batch()
    {
        using var data = TestJobs.SharedBytes();
        var job = TestJobs.Micro(steps: 4) with { Train = TestJobs.Micro().Train with { Precision = "fp64" } };
        using var whole = LocalEngine.Create(job, data);
        using var accumulated = LocalEngine.Create(job with { Layout = new LayoutConfig { MicroBatches = 4 } }, data);
        var a = Train(whole, 4);
        var b = Train(accumulated, 4);
        for (var i = 0; i < 4; i++)
            Assert.Equal(a[i].Loss, b[i].Loss, 1e-12);
        var pa = StateAssembler.GatherParameters(whole.Ranks);
        var pb = StateAssembler.GatherParameters(accumulated.Ranks);
        foreach (var (name, t) in pa)
            Assert.True(t.allclose(pb[name], rtol: 1e-10, atol: 1e-12), name);
    }

    [Fact]
    public void Lr_schedule_warms_up_linearly_and_decays_to_min()
    {
        var o = new OptimizerConfig { Lr = 1.0, MinLr = 0.1, WarmupSteps = 10, Decay = "cosine" };
        var s = new LrSchedule(o, 110);
        Assert.Equal(0.1, s.At(0), 12);
        Assert.Equal(1.0, s.At(9), 12);
        Assert.Equal(0.55, s.At(59), 12);       // halfway through the cosine
        Assert.Equal(0.1, s.At(109), 12);
        Assert.Equal(0.1, s.At(500), 12);
        var linear = new LrSchedule(o with { Decay = "linear" }, 110);
        Assert.Equal(0.55, linear.At(59), 12);
        Assert.Equal(1.0, new LrSchedule(o with { Decay = "constant" }, 110).At(80), 12);
    }
}

[Collection("Alone")]
public class MemoryTests
{
    [Fact]
    public void Memory_stays_flat_over_500_steps()
    {
        var job = TestJobs.Micro(steps: 500);
        using var data = TestJobs.SharedBytes();
        using var engine = LocalEngine.Create(job, data);
        var process = Process.GetCurrentProcess();
        // No forced garbage collection: the engine must stay flat on its own (flat buffers, scopes per step).
        TrainingTests.Train(engine, 100);
        process.Refresh();
        var after100 = process.WorkingSet64;
        TrainingTests.Train(engine, 400);
        process.Refresh();
        var growth = (process.WorkingSet64 - after100) / (1024.0 * 1024.0);
        Assert.True(growth < 24, $"resident memory grew {growth:0.0} MiB between step 100 and step 500");
    }
}
