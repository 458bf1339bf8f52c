using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Growth;

namespace FlmCluster.Training.Tests;

[Collection("Training")]
public class GrowthScheduleTests
{
    /// <summary>The tiny-growth preset with the byte vocabulary and short stages.</summary>
    private static JobConfig TinyGrowth(params string[] extra) => JobConfigLoader.Load("tiny-growth",
        ["tokenizer=bytes", "model.vocab_pad_multiple=128", "model.seq_len=64", "stages.0.steps=30", "stages.1.steps=15", "stages.2.steps=15", .. extra]);

    private static List<(StepSummary Step, string Stage)> RunAll(TrainingRun run, List<TransitionReport> transitions)
    {
        var steps = new List<(StepSummary, string)>();
        while (!run.Finished)
        {
            if (run.AtStageEnd)
                transitions.Add(run.Grow());
            else
                steps.Add((run.RunStep(), run.Stage.Name));
        }
        return steps;
    }

    [Fact]
    public void Tiny_growth_trains_all_stages_and_each_transition_keeps_the_loss()
    {
        using var run = TrainingRun.Create(TinyGrowth());
        var transitions = new List<TransitionReport>();
        var steps = RunAll(run, transitions);
        Assert.Equal(60, steps.Count);
        Assert.Equal(2, transitions.Count);
        Assert.Equal(["a", "b", "c"], steps.Select(s => s.Stage).Distinct());
        foreach (var t in transitions)
        {
            // Function preserved: the same batch has the same loss just before and just after growth (fp32 rounding).
            Assert.True(Math.Abs(t.LossAfter - t.LossBefore) <= 1e-5 * t.LossBefore, $"{t.FromStage}→{t.ToStage}: {t.LossBefore} vs {t.LossAfter}");
            Assert.True(t.After.ParameterCount > t.Before.ParameterCount);
        }
        Assert.Equal((4, 128, 4), (run.Stage.Job.Model.Layers, run.Stage.Job.Model.Hidden, run.Stage.Job.Model.Heads));
        // Adam's step count continues across growth, the data cursor too.
        Assert.Equal(60, run.Engine.Ranks[0].Optimizer.Step);
        Assert.Equal(60 * 8, run.Engine.SamplesConsumed);
        // No spike: the first steps after a growth stay near the last steps before it.
        foreach (var boundary in new[] { 30, 45 })
        {
            var before = steps.Skip(boundary - 3).Take(3).Average(s => s.Step.Loss);
            var after = steps.Skip(boundary).Take(3).Average(s => s.Step.Loss);
            Assert.True(after < before + 0.25, $"step {boundary}: {before:0.000} before, {after:0.000} after");
        }
    }

    [Fact]
    public void Growth_across_a_layout_change_keeps_the_function_with_sharded_masks()
    {
        // 2 → 4 heads and 2 → 4 layers while moving from 1/1/1 to dp=2,tp=2 and then to tp=2,pp=2.
        var job = TestJobs.Micro(layers: 2, hidden: 32, heads: 2) with
        {
            Train = TestJobs.Micro().Train with { Precision = "fp64" },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 4 },
                new StageConfig { Name = "b", Hidden = 64, Heads = 4, Ffn = 192, Steps = 4, MaskRampSteps = 2, Layout = new LayoutConfig { Dp = 2, Tp = 2 } },
                new StageConfig { Name = "c", Layers = 4, Steps = 3, MaskRampSteps = 3, Layout = new LayoutConfig { Tp = 2, Pp = 2, MicroBatches = 2 }, DepthPlacement = "interpolate" },
            ],
        };
        using var data = TestJobs.SharedBytes();
        using var run = TrainingRun.Create(job, data);
        var transitions = new List<TransitionReport>();
        RunAll(run, transitions);
        Assert.Equal(2, transitions.Count);
        foreach (var t in transitions)
            Assert.True(Math.Abs(t.LossAfter - t.LossBefore) <= 1e-12 * t.LossBefore, $"{t.FromStage}→{t.ToStage}: {t.LossBefore:R} vs {t.LossAfter:R}");
        Assert.Equal(8, run.Engine.Layout.WorldSize / 2 * 2 * 2);
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")] // separate fp32 master weights
    public void A_rank_grown_tensor_by_tensor_from_the_stage_checkpoint_equals_the_whole_state_growth(string precision)
    {
        // 2 → 4 heads and 2 → 3 layers while moving from one rank to dp=2,tp=2 (optimizer shards split over DP).
        var dir = Path.Combine(Path.GetTempPath(), $"flm-grow-ckpt-{Guid.NewGuid():N}");
        var job = JobValidator.Validate(TestJobs.Micro(layers: 2, hidden: 32, heads: 2) with
        {
            Train = TestJobs.Micro().Train with { Precision = precision },
            Checkpoint = new CheckpointConfig { Dir = dir, Async = false },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 3 },
                new StageConfig { Name = "b", Layers = 3, Hidden = 64, Heads = 4, Ffn = 192, Steps = 2, MaskRampSteps = 2, Layout = new LayoutConfig { Dp = 2, Tp = 2 } },
            ],
        });
        try
        {
            using var data = TestJobs.SharedBytes();
            using var run = TrainingRun.Create(job, data);
            while (!run.AtStageEnd)
                run.RunStep();
            run.SaveCheckpoint();
            run.Grow();
            var reader = CheckpointStore.Resolve(dir);
            using var grown = LocalEngine.ForStage(run.Progress, run.Engine.Cursor, data);
            grown.Fan(r => CheckpointRestore.LoadGrown(grown.Ranks[r], reader, job, run.Stages, 1));
            for (var r = 0; r < 4; r++)
            {
                var (expected, actual) = (run.Engine.Ranks[r], grown.Ranks[r]);
                Assert.True(actual.Flat.Params.equal(expected.Flat.Params).all().item<bool>(), $"rank {r} parameters");
                Assert.True(actual.Optimizer.ExpAvg.equal(expected.Optimizer.ExpAvg).all().item<bool>(), $"rank {r} exp_avg");
                Assert.True(actual.Optimizer.ExpAvgSq.equal(expected.Optimizer.ExpAvgSq).all().item<bool>(), $"rank {r} exp_avg_sq");
                Assert.True(actual.Optimizer.Master.equal(expected.Optimizer.Master).all().item<bool>(), $"rank {r} master");
                Assert.Equal(expected.Optimizer.Step, actual.Optimizer.Step);
            }
            Assert.True(run.Engine.Ranks[0].Optimizer.Step > 0);
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Resuming_inside_a_mask_ramp_continues_exactly()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"flm-growth-resume-{Guid.NewGuid():N}");
        var job = TinyGrowth("stages.1.mask_ramp_steps=10", $"checkpoint.dir={dir}");
        try
        {
            using var data = TestJobs.SharedBytes();
            List<double> Tail(TrainingRun run) => RunAll(run, []).Select(s => s.Step.Loss).ToList();
            List<double> straight;
            using (var run = TrainingRun.Create(job, data))
                straight = Tail(run);
            using (var first = TrainingRun.Create(job, data))
            {
                while (first.NextStep < 35)
                {
                    if (first.AtStageEnd) first.Grow(); else first.RunStep();
                }
                Assert.Equal(1, first.StageIndex);
                Assert.True(first.Engine.NextMaskValue is > 0 and < 1);
                first.SaveCheckpoint();
            }
            Assert.NotNull(CheckpointStore.Resolve(dir).Manifest.Growth);
            using var resumed = TrainingRun.Create(job, data);
            resumed.Restore(dir);
            Assert.Equal(35, resumed.NextStep);
            Assert.Equal(0.5, resumed.Engine.NextMaskValue);
            var rest = Tail(resumed);
            Assert.Equal(straight.Skip(35), rest);
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Flm101b_preset_has_the_cards_three_stages()
    {
        var job = JobConfigLoader.Load("flm-101b");
        var stages = GrowthSchedule.Resolve(job);
        Assert.Equal(["16b", "51b", "101b"], stages.Select(s => s.Name));
        Assert.Equal([52_000L, 8_400L, 6_000L], stages.Select(s => s.Job.Train.Steps));
        Assert.Equal([2001L, 100L, 106L], stages.Select(s => s.Job.Optimizer.WarmupSteps));
        Assert.Equal([4e-4, 3.4e-4, 2e-4], stages.Select(s => s.Job.Optimizer.Lr));
        Assert.Equal([2304, 2304, 2160], stages.Select(s => s.Job.Train.GlobalBatch));
        Assert.Equal(["dp=96,tp=2,pp=1", "dp=24,tp=4,pp=2", "dp=12,tp=4,pp=4"],
            stages.Select(s => $"dp={s.Job.Layout.Dp},tp={s.Job.Layout.Tp},pp={s.Job.Layout.Pp}"));
        Assert.Equal([16_245_780_480L, 51_738_700_800L, 101_701_570_560L], stages.Select(s => s.Job.Model.ParameterCount));
        Assert.Equal(66_400, job.Train.Steps);
    }

    [Theory]
    [InlineData("stages.1.hidden=32,stages.1.heads=1", "model.hidden shrinks from 64 to 32")]
    [InlineData("stages.1.layers=1", "model.layers shrinks from 2 to 1")]
    [InlineData("stages.2.heads=8", "head size would change from 32 to 16")]
    [InlineData("stages.1.lr=0", "lr must be positive")]
    [InlineData("stages.1.lr=-1e-3", "lr must be positive")]
    [InlineData("stages.1.mask_ramp_steps=500", "mask_ramp_steps (500) is longer than the stage")]
    [InlineData("stages.2.depth_placement=middle", "depth_placement 'middle'")]
    [InlineData("stages.1.layout={\"tp\":4}", "tp=4 does not divide model.heads=3")]
    public void Bad_growth_specs_fail_at_config_load(string change, string expected)
    {
        var ex = Assert.Throws<FlmUserException>(() => TinyGrowth(change.Split(',')));
        Assert.Contains(expected, ex.Message);
    }
}
