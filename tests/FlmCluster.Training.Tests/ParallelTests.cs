using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Tests;

public class LayoutTests
{
    [Theory]
    // Fewer replicas, more micro-batches of the same size: the global batch is kept.
    [InlineData(8, 4, 1, 1, 1, 2, 2, 2)]
    [InlineData(8, 4, 1, 1, 1, 3, 2, 2)] // 3 GPUs hold 2 replicas (8 is not split 3 ways)
    [InlineData(16, 4, 2, 1, 2, 6, 2, 4)]
    [InlineData(2304, 96, 2, 1, 24, 184, 72, 32)] // FLM-101B's first stage after losing one 8-GPU server
    [InlineData(8, 2, 4, 1, 1, 3, 0, 0)] // a tensor-parallel group of 4 does not fit in 3 GPUs
    public void A_layout_shrinks_to_fewer_replicas_keeping_the_global_batch_and_micro_batch_size(
        int globalBatch, int dp, int tp, int pp, int micro, int gpus, int expectedDp, int expectedMicro)
    {
        var layout = new LayoutConfig { Dp = dp, Tp = tp, Pp = pp, MicroBatches = micro };
        var fitted = ElasticLayout.Fit(layout, globalBatch, gpus);
        if (expectedDp == 0)
        {
            Assert.Null(fitted);
            return;
        }
        Assert.Equal(new LayoutConfig { Dp = expectedDp, Tp = tp, Pp = pp, MicroBatches = expectedMicro }, fitted);
        Assert.Equal(globalBatch / (dp * micro), globalBatch / (expectedDp * expectedMicro)); // same micro-batch size
    }

    [Fact]
    public void Every_growth_stage_is_fitted_or_none_is()
    {
        var job = TestJobs.Micro(layers: 2, hidden: 32, heads: 2) with
        {
            Layout = new LayoutConfig { Dp = 4 },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 2 },
                new StageConfig { Name = "b", Hidden = 64, Heads = 4, Steps = 2, MaskRampSteps = 2, Layout = new LayoutConfig { Dp = 2, Tp = 2 } },
            ],
        };
        var fitted = ElasticLayout.Fit(JobValidator.Validate(job), 2)!;
        Assert.Equal([new LayoutConfig { Dp = 2, MicroBatches = 2 }, new LayoutConfig { Dp = 1, Tp = 2, MicroBatches = 2 }], fitted.Stages.Select(s => s.Layout));
        Assert.Null(ElasticLayout.Fit(JobValidator.Validate(job), 1)); // stage b needs a TP pair
    }

    [Fact]
    public void Ranks_follow_megatron_order_tp_fastest_then_dp_then_pp()
    {
        var layout = new ParallelLayout(Dp: 3, Tp: 2, Pp: 2);
        Assert.Equal(12, layout.WorldSize);
        Assert.Equal(new RankCoords(0, 0, 0), layout.CoordsOf(0));
        Assert.Equal(new RankCoords(1, 0, 0), layout.CoordsOf(1));
        Assert.Equal(new RankCoords(0, 1, 0), layout.CoordsOf(2));
        Assert.Equal(new RankCoords(1, 2, 0), layout.CoordsOf(5));
        Assert.Equal(new RankCoords(0, 0, 1), layout.CoordsOf(6));
        for (var r = 0; r < 12; r++)
            Assert.Equal(r, layout.RankOf(layout.CoordsOf(r)));
        var groups = new RankGroups(layout, 7); // tp1 dp0 pp1
        Assert.Equal([6, 7], groups.Tensor.Ranks);
        Assert.Equal([1, 3, 5], new RankGroups(layout, 1).Data.Ranks);
        Assert.Equal([1, 7], new RankGroups(layout, 1).Pipeline.Ranks);
        Assert.Equal([1, 7], new RankGroups(layout, 1).Embedding!.Ranks);
        Assert.Null(new RankGroups(new ParallelLayout(2, 2, 1), 1).Embedding);
    }

    public static TheoryData<ParallelLayout, int, int?, string> BadLayouts => new()
    {
        { new ParallelLayout(1, 3, 1), 8, null, "tp=3 does not divide model.heads=4" },
        { new ParallelLayout(1, 1, 3), 8, null, "pp=3 exceeds model.layers=2" },
        { new ParallelLayout(3, 1, 1), 8, null, "train.global_batch=8 is not divisible by dp×micro_batches=3×1" },
        { new ParallelLayout(2, 1, 1, 3), 8, null, "not divisible by dp×micro_batches=2×3" },
        { new ParallelLayout(2, 2, 2), 8, 6, "dp×tp×pp = 2×2×2 = 8 ranks, but 6 workers are available" },
        { new ParallelLayout(0, 1, 1), 8, null, "every axis must be at least 1" },
    };

    [Theory]
    [MemberData(nameof(BadLayouts))]
    public void Bad_layouts_are_rejected_with_a_clear_message(ParallelLayout layout, int batch, int? available, string expected)
    {
        var model = TestJobs.Micro().Model with { VocabSize = 257 };
        var ex = Assert.Throws<FlmUserException>(() => layout.Validate(model, batch, available));
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void A_bad_layout_fails_before_any_rank_is_built()
    {
        var job = TestJobs.Micro() with { Layout = new LayoutConfig { Tp = 3 } };
        using var data = TestJobs.SharedBytes();
        var ex = Assert.Throws<FlmUserException>(() => LocalEngine.Create(job, data));
        Assert.Contains("tp=3", ex.Message);
    }

    [Fact]
    public void Vocabulary_padding_must_split_over_tp()
    {
        var model = TestJobs.Micro().Model with { VocabSize = 257, VocabPadMultiple = 2, Heads = 4 };
        Assert.Equal(258, model.PaddedVocab);
        var ex = Assert.Throws<FlmUserException>(() => new ParallelLayout(1, 4, 1).Validate(model, 8));
        Assert.Contains("padded vocabulary 258", ex.Message);
    }

    [Fact]
    public void Layout_strings_parse()
    {
        Assert.Equal(new LayoutConfig { Dp = 2, Tp = 4, Pp = 1, MicroBatches = 8 }, ParallelLayout.Parse("tp=4, dp=2, micro=8"));
        Assert.Throws<FlmUserException>(() => ParallelLayout.Parse("dp2"));
    }
}

public class PipelineScheduleTests
{
    [Theory]
    [InlineData(4, 8)]
    [InlineData(4, 2)]
    [InlineData(1, 3)]
    [InlineData(2, 1)]
    public void One_f_one_b_runs_each_micro_batch_forward_then_backward_with_bounded_memory(int stages, int micro)
    {
        for (var s = 0; s < stages; s++)
        {
            var actions = PipelineSchedule.OneForwardOneBackward(s, stages, micro);
            Assert.Equal(Enumerable.Range(0, micro), actions.Where(a => a.Op == PipelineOp.Forward).Select(a => a.MicroBatch));
            Assert.Equal(Enumerable.Range(0, micro), actions.Where(a => a.Op == PipelineOp.Backward).Select(a => a.MicroBatch));
            var inFlight = 0;
            var peak = 0;
            foreach (var a in actions)
            {
                inFlight += a.Op == PipelineOp.Forward ? 1 : -1;
                peak = Math.Max(peak, inFlight);
                Assert.True(inFlight >= 0);
            }
            Assert.Equal(Math.Min(stages - s, micro), peak);
        }
        Assert.Equal((stages - 1.0) / (micro + stages - 1.0), PipelineSchedule.IdealBubbleFraction(stages, micro), 12);
    }
}

[Collection("Training")]
public class DistributedOptimizerTests
{
    [Fact]
    public void Optimizer_state_per_rank_is_one_dp_th_of_the_replicated_state()
    {
        using var data = TestJobs.SharedBytes();
        var job = TestJobs.Micro(batch: 8);
        long Bytes(int dp)
        {
            using var engine = LocalEngine.Create(job with { Layout = new LayoutConfig { Dp = dp } }, data);
            var perRank = engine.Ranks.Select(r => r.Optimizer.StateBytes).ToList();
            Assert.All(perRank, b => Assert.Equal(perRank[0], b));
            return perRank[0];
        }
        var one = Bytes(1);
        foreach (var dp in new[] { 2, 4, 8 })
        {
            var sharded = Bytes(dp);
            // Exactly ⌈total/dp⌉ elements of two fp32 moments: 1/dp up to the padding of the last shard.
            Assert.InRange(sharded, one / dp, one / dp + 2 * 4 * dp);
        }
    }

    [Fact]
    public void Memory_planner_counts_what_each_rank_holds()
    {
        using var data = TestJobs.SharedBytes();
        var job = TestJobs.Micro(layers: 4) with { Layout = new LayoutConfig { Dp = 1, Tp = 2, Pp = 2, MicroBatches = 2 } };
        using var engine = LocalEngine.Create(job, data);
        foreach (var rank in engine.Ranks)
            Assert.Equal(MemoryPlanner.RankParameters(engine.Job.Model, engine.Layout, rank.Groups.Coords.Pp), rank.Flat.Total);
        var stage0 = MemoryPlanner.ForStage(engine.Job.Model, engine.Layout, 0, "bf16", "cuda");
        Assert.Equal(stage0.Parameters * 2, stage0.WeightBytes);
        Assert.Equal(stage0.Parameters * 12, stage0.OptimizerBytesReplicated); // fp32 master + 2 moments
    }
}
