using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Sim;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Training.Tests;

public class SimCostModelTests
{
    private static readonly SimCluster A800 = SimCluster.Default;

    [Fact]
    public void The_committed_constants_are_what_the_fit_to_the_card_gives_and_every_stage_is_within_5_percent()
    {
        var targets = CostModelFit.Flm101bTargets();
        Assert.Equal(["16b", "51b", "101b"], targets.Select(t => t.Name));
        var (constants, errors) = CostModelFit.Fit(targets, ClusterHardware.DgxA800);
        Assert.Equal(CostConstants.Fitted, constants);
        Assert.Equal(2, CostConstants.FittedCount);
        Assert.All(errors, e => Assert.InRange(e, -0.05, 0.05));
        Assert.Equal(errors, CostModelFit.Errors(targets, ClusterHardware.DgxA800, CostConstants.Fitted));
    }

    [Fact]
    public void Each_stage_s_steps_take_the_card_s_days_within_10_percent()
    {
        // A stage's days are its steps (the card's tokens ÷ (batch × 2048), rounded to hundreds) at the modelled step
        // time, with the 2 constants fitted to the card's throughput. The card's days are wall time with whatever else
        // happened in it (checkpoints, evaluations, restarts), so the steps alone take somewhat less — never more:
        // even at the card's own TFLOP/s the 51B stage's tokens take 4.84 of its 5.37 days.
        var stages = GrowthSchedule.Resolve(JobValidator.Validate(Presets.Get("flm-101b")));
        var days = new List<double>();
        foreach (var (stage, card) in stages.Zip(PublishedSchedule.Flm101b))
        {
            Assert.Equal(card.Name, stage.Name);
            var job = stage.Job;
            var cost = StepCostModel.For(job.Model, ParallelLayout.FromConfig(job.Layout), job.Train.GlobalBatch, "bf16", A800);
            Assert.Equal(card.Tokens, (double)job.Train.Steps * job.Train.GlobalBatch * job.Model.SeqLen, card.Tokens * 0.002);
            var modelled = job.Train.Steps * cost.Seconds / 86400;
            days.Add(modelled);
            Assert.InRange(modelled / card.Days - 1, -0.10, 0);
        }
        Assert.InRange(days.Sum() / PublishedSchedule.StageDays - 1, -0.10, 0);
    }

    [Fact]
    public void A_step_is_the_slowest_stage_and_each_stage_s_parts_add_up_to_its_time()
    {
        foreach (var t in CostModelFit.Flm101bTargets())
        {
            var cost = StepCostModel.For(t.Model, t.Layout, t.GlobalBatch, "bf16", A800);
            Assert.Equal(t.Layout.Pp, cost.Stages.Count);
            Assert.Equal(cost.Stages.Max(s => s.Total), cost.Seconds);
            foreach (var s in cost.Stages)
            {
                Assert.All(new[] { s.Compute, s.TensorParallel, s.PipelineSends, s.Bubble, s.DataParallel, s.Optimizer }, part => Assert.True(part >= -1e-9, $"{t.Name} stage {s.Stage}: {s}"));
                Assert.Equal(s.Total, s.Compute + s.TensorParallel + s.PipelineSends + s.Bubble + s.DataParallel + s.Optimizer, 12);
            }
            Assert.Equal(t.Layout.Tp > 1, cost.Critical.TensorParallel > 0);
            Assert.Equal(t.Layout.Pp > 1, cost.Critical.PipelineSends > 0);
            Assert.Equal(cost.ModelFlops / cost.Seconds / 192 / 1e12, cost.TflopsPerGpu, 9);
            Assert.Equal(cost.TflopsPerGpu * 1e12 / 312e12, cost.Mfu, 12);
        }
    }

    [Fact]
    public void Model_flops_follow_megatron_s_count_for_flm_101b()
    {
        // 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) for FFN 4h (Narayanan et al. 2021, without recomputation).
        var m = Presets.Model101B;
        double b = 2160, s = 2048, l = 80, h = 10240, v = 100352;
        var megatron = 72 * b * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h));
        Assert.Equal(1.0, ModelFlops.TrainingStep(m, 2160) / megatron, 12);
    }

    [Fact]
    public void The_executed_1f1b_schedule_of_equal_stages_idles_p_minus_1_over_m_plus_p_minus_1()
    {
        // Forward 1, backward 2, no sends: each stage is busy 3m of a makespan of 3(m + p − 1).
        foreach (var (p, m) in new[] { (2, 1), (4, 8), (4, 180), (8, 16) })
        {
            var run = PipelineTimeline.Run(Enumerable.Repeat(new StageTimes(1, 2, 0, 0), p).ToList(), m);
            Assert.Equal(3.0 * (m + p - 1), run.Makespan);
            for (var s = 0; s < p; s++)
                Assert.Equal(3.0 * m, run.Busy[s]);
            Assert.Equal(PipelineSchedule.IdealBubbleFraction(p, m), run.Idle(0) / run.Makespan, 12);
        }
    }

    [Fact]
    public void A_slower_last_stage_sets_the_pace_of_the_whole_pipeline()
    {
        var stages = new List<StageTimes> { new(1, 2, 0, 0), new(1, 2, 0, 0), new(1.5, 3, 0, 0) };
        var run = PipelineTimeline.Run(stages, 16);
        // The last stage is busy throughout its steady state; the others wait on it.
        Assert.Equal(16 * 4.5, run.Busy[2]);
        Assert.True(run.Idle(0) > (3 - 1.0) / (16 + 3 - 1) * run.Makespan);
    }

    [Fact]
    public void Ring_collectives_follow_alpha_beta()
    {
        var link = new Link(100e9, 5e-6);
        Assert.Equal(2 * 3 * 5e-6 + 2.0 * 3 / 4 * 1e9 / 100e9, Collective.AllReduce(1e9, 4, link), 15);
        Assert.Equal(11 * 5e-6 + 11.0 / 12 * 1e9 / 100e9, Collective.ReduceScatter(1e9, 12, link), 15);
        Assert.Equal(0, Collective.AllReduce(1e9, 1, link));
        Assert.Equal(5e-6 + 0.01, Collective.PointToPoint(1e9, link), 15);
    }

    [Fact]
    public void Data_parallel_rings_across_servers_get_the_adapters_their_members_bring()
    {
        var m = Presets.Model101B;
        // 101B at tp=4, pp=4: two members of each data-parallel ring per server; at dp=1 there is no ring at all.
        var wide = StepCostModel.For(m, new ParallelLayout(12, 4, 4, 180), 2160, "bf16", A800);
        var single = StepCostModel.For(m, new ParallelLayout(1, 4, 4, 180), 180, "bf16", A800);
        var gradients = MemoryPlanner.RankParameters(m, new ParallelLayout(12, 4, 4, 180), 1) * 2.0;
        var link = A800.Network(2);
        var expected = 2 * Collective.ReduceScatter(gradients, 12, link) + Collective.ScalarAllReduce(192, A800.Network());
        Assert.Equal(expected, wide.Stages[1].DataParallel, 9);
        Assert.Equal(Collective.ScalarAllReduce(16, A800.Network()), single.Stages[1].DataParallel, 12);
    }

    [Fact]
    public void Recomputation_runs_each_forward_again_in_backward()
    {
        var t = CostModelFit.Flm101bTargets()[0];
        var plain = StepCostModel.For(t.Model, t.Layout, t.GlobalBatch, "bf16", A800);
        var recomputed = StepCostModel.For(t.Model, t.Layout, t.GlobalBatch, "bf16", A800 with { Recompute = true });
        Assert.Equal(4.0 / 3, recomputed.Critical.Compute / plain.Critical.Compute, 9);
        Assert.Equal(plain.ModelFlops, recomputed.ModelFlops); // model FLOPs do not count the recomputation
    }

    [Fact]
    public void The_card_s_layouts_fit_an_a800_and_101b_without_model_parallelism_does_not()
    {
        foreach (var t in CostModelFit.Flm101bTargets())
            for (var s = 0; s < t.Layout.Pp; s++)
            {
                var bytes = MemoryPlanner.ForStage(t.Model, t.Layout, s, "bf16", "cuda").TotalDistributed
                    + MemoryPlanner.ActivationBytes(t.Model, t.Layout, s, t.Layout.MicroBatchSize(t.GlobalBatch), recompute: false);
                Assert.True(bytes < ClusterHardware.DgxA800.DeviceMemoryBytes, $"{t.Name} stage {s}: {bytes / 1e9:0.0} GB");
            }
        var alone = new ParallelLayout(192, 1, 1, 1);
        Assert.True(MemoryPlanner.ForStage(Presets.Model101B, alone, 0, "bf16", "cuda").TotalDistributed > ClusterHardware.DgxA800.DeviceMemoryBytes);
    }

    [Fact]
    public void Activations_in_flight_follow_1f1b_and_recomputation_keeps_only_layer_inputs()
    {
        var m = Presets.Model101B;
        var layout = new ParallelLayout(12, 4, 4, 180);
        double sbh = 2048.0 * 10240;
        Assert.Equal((long)Math.Ceiling(4 * 20 * sbh * 16), MemoryPlanner.ActivationBytes(m, layout, 0, 1, false));
        Assert.Equal((long)Math.Ceiling(1 * 20 * sbh * 16), MemoryPlanner.ActivationBytes(m, layout, 3, 1, false));
        Assert.Equal((long)Math.Ceiling(4 * 20 * 2 * sbh + sbh * 16), MemoryPlanner.ActivationBytes(m, layout, 0, 1, true));
    }

    [Fact]
    public void Hardware_comes_from_a_preset_or_a_file_whose_missing_fields_keep_the_a800_s()
    {
        Assert.Same(ClusterHardware.DgxH100, ClusterHardware.Load("dgx-h100"));
        var path = Path.Combine(Path.GetTempPath(), $"hw-{Guid.NewGuid():N}.json");
        try
        {
            File.WriteAllText(path, """{ "name": "mine", "peak_flops": 1e15, "network_bandwidth": 5e10 }""");
            var h = ClusterHardware.Load(path);
            Assert.Equal(ClusterHardware.DgxA800 with { Name = "mine", PeakFlops = 1e15, NetworkBandwidth = 5e10 }, h);
            File.WriteAllText(path, """{ "peak_flops": -1 }""");
            Assert.Contains("peak_flops", Assert.Throws<FlmUserException>(() => ClusterHardware.Load(path)).Message);
            File.WriteAllText(path, """{ "peak_flop": 1 }""");
            Assert.Throws<FlmUserException>(() => ClusterHardware.Load(path));
        }
        finally
        {
            File.Delete(path);
        }
        Assert.Throws<FlmUserException>(() => ClusterHardware.Load("no-such-cluster"));
    }
}

public class VirtualClockTests
{
    [Fact]
    public void Now_is_real_time_plus_modelled_time_and_modelled_time_only_rises()
    {
        var real = new ManualTime(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));
        using var clock = new VirtualClock(real: real);
        clock.ModelUntil(TimeSpan.FromHours(5));
        clock.ModelUntil(TimeSpan.FromHours(3)); // an operation that began earlier ended earlier: nothing changes
        real.Advance(TimeSpan.FromSeconds(7));
        Assert.Equal(TimeSpan.FromHours(5), clock.Modelled);
        Assert.Equal(real.GetUtcNow() + TimeSpan.FromHours(5), clock.GetUtcNow());
        var start = clock.GetTimestamp();
        real.Advance(TimeSpan.FromSeconds(3));
        clock.ModelUntil(TimeSpan.FromHours(6));
        Assert.Equal(TimeSpan.FromHours(1) + TimeSpan.FromSeconds(3), clock.GetElapsedTime(start));
    }

    [Fact]
    public async Task A_delay_on_the_clock_ends_when_modelled_time_passes_it_and_skipping_goes_to_the_next_due_timer()
    {
        using var clock = new VirtualClock();
        var cancel = TestContext.Current.CancellationToken;
        var day = Task.Delay(TimeSpan.FromDays(1), clock, cancel);
        var hour = Task.Delay(TimeSpan.FromHours(1), clock, cancel);
        await Task.Delay(50, cancel);
        Assert.False(hour.IsCompleted);
        Assert.True(clock.SkipToNextDue());
        await hour.WaitAsync(TimeSpan.FromSeconds(10), cancel);
        Assert.False(day.IsCompleted);
        clock.ModelUntil(TimeSpan.FromDays(2));
        await day.WaitAsync(TimeSpan.FromSeconds(10), cancel);
        Assert.False(clock.SkipToNextDue());
    }

    [Fact]
    public void Processes_share_modelled_time_through_a_mapped_file()
    {
        var path = Path.Combine(Path.GetTempPath(), $"clock-{Guid.NewGuid():N}");
        try
        {
            using var a = new SharedModelledTime(path);
            using var b = new SharedModelledTime(path);
            Assert.True(a.RaiseTo(1000));
            Assert.False(b.RaiseTo(999));
            Assert.Equal(1000, b.Ticks);
            Assert.True(b.RaiseTo(5000));
            Assert.Equal(5000, a.Ticks);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private sealed class ManualTime(DateTimeOffset start) : TimeProvider
    {
        private DateTimeOffset _now = start;
        public override DateTimeOffset GetUtcNow() => _now;
        public override long GetTimestamp() => _now.UtcTicks;
        public override long TimestampFrequency => TimeSpan.TicksPerSecond;
        public void Advance(TimeSpan by) => _now += by;
    }
}
