using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

/// <summary>Restores that read only the bytes of a rank's slices, and growth that makes only a rank's slices, within a budget.</summary>
[Collection("Training")]
public sealed class SliceRestoreTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("flm-slices-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Theory]
    [InlineData(TpSplit.Replicated, new long[] { 12 }, 2)]
    [InlineData(TpSplit.Dim0, new long[] { 12, 5 }, 4)]
    [InlineData(TpSplit.Dim0, new long[] { 8 }, 2)]
    [InlineData(TpSplit.Dim1, new long[] { 6, 8 }, 4)]
    [InlineData(TpSplit.PackedQkvDim0, new long[] { 24, 3 }, 4)]
    [InlineData(TpSplit.PackedQkvDim0, new long[] { 12 }, 2)]
    public void The_slice_geometry_picks_the_elements_of_the_parameters_slice(TpSplit split, long[] shape, int tp)
    {
        var spec = new ParamSpec("t", shape, split, ParamGroup.NoDecay, 0);
        var geometry = new SliceGeometry(shape, split, tp);
        using var whole = arange(spec.GlobalElements, dtype: ScalarType.Int64).reshape(shape);
        for (var slice = 0; slice < tp; slice++)
        {
            // Each element of the slice, as the model's own slicing takes it, sits where the geometry says.
            var expected = spec.Slice(whole, slice, tp).reshape(-1).data<long>().ToArray();
            Assert.Equal(geometry.SliceElements, expected.Length);
            for (var at = 0; at < expected.Length; at++)
            {
                Assert.Equal(expected[at], geometry.GlobalFlat(slice, at));
                // Every slice of a replicated tensor holds all of it; reads take it from the first.
                Assert.Equal((split == TpSplit.Replicated ? 0 : slice, (long)at), geometry.Locate(expected[at]));
            }
            // Runs of any part of the slice cover it in order, each contiguous both ways.
            var from = expected.Length / 3;
            var covered = geometry.Runs(slice, from, expected.Length).SelectMany(r => Enumerable.Range(0, (int)r.Length).Select(i => (r.Global + i, r.At + i))).ToList();
            Assert.Equal(Enumerable.Range(from, expected.Length - from).Select(at => (expected[at], (long)at)), covered);
        }
    }

    [Fact]
    public void Initialisation_streamed_in_pieces_equals_the_whole_tensor_bit_for_bit()
    {
        var model = TestJobs.Micro(layers: 2, hidden: 48, heads: 3).Model with { Mup = TestJobs.Micro().Model.Mup with { QueryZeroInit = true } };
        foreach (var spec in ParamCatalog.Whole(JobValidator.Validate(TestJobs.Micro() with { Model = model }).Model))
        {
            using var whole = ModelInitializer.Generate(spec, 1234, queryZeroInit: true);
            var flat = whole.reshape(-1);
            foreach (var room in new long[] { 31, 48, 1000, 1 << 20 })
            {
                var pieces = new List<Tensor>();
                using var buffer = empty(room);
                ModelInitializer.Stream(spec, 1234, true, buffer, long.MaxValue, (start, piece) =>
                {
                    Assert.Equal(pieces.Sum(p => p.NumberOfElements), start);
                    pieces.Add(piece.clone());
                });
                using var joined = cat(pieces.ToArray(), 0);
                Assert.True(joined.bytes.SequenceEqual(flat.bytes), $"{spec.Name} through a buffer of {room}");
                pieces.ForEach(p => p.Dispose());
            }
        }
    }

    private JobConfig Job(int dp, int tp, int pp, string precision, string dir) => JobValidator.Validate(TestJobs.Micro(hidden: 64, heads: 4, steps: 2) with
    {
        Train = TestJobs.Micro().Train with { Precision = precision, Steps = 2 },
        Layout = new LayoutConfig { Dp = dp, Tp = tp, Pp = pp, MicroBatches = 2 },
        Checkpoint = new CheckpointConfig { Dir = Path.Combine(_root, dir), Async = false },
    });

    /// <summary>The expected state of a rank: its slices of the checkpoint's whole tensors, in its dtypes.</summary>
    private static void AssertHoldsItsSlices(RankTrainer rank, CheckpointReader saved)
    {
        var tp = rank.Model.Tp;
        foreach (var p in rank.Model.Parameters)
        {
            using var whole = saved.ReadWhole("param", p.Name);
            using var expected = p.Spec.Slice(whole, tp.Rank, tp.Size).to(p.Tensor.dtype).contiguous();
            Assert.True(expected.bytes.SequenceEqual(p.Tensor.contiguous().bytes), $"rank {rank.Groups.Rank}: {p.Name}");
        }
        var opt = rank.Optimizer;
        foreach (var entry in rank.Flat.Entries)
        {
            var lo = Math.Max(entry.Offset, opt.ShardStart);
            var hi = Math.Min(entry.Offset + entry.Count, opt.ShardStart + opt.ShardLength);
            if (hi <= lo)
                continue;
            foreach (var (kind, shard) in new[] { ("exp_avg", opt.ExpAvg), ("exp_avg_sq", opt.ExpAvgSq), ("master", opt.Master) })
            {
                var source = saved.Has(kind, entry.Parameter.Name) ? kind : "param";
                using var whole = saved.ReadWhole(source, entry.Parameter.Name);
                using var expected = entry.Parameter.Spec.Slice(whole, tp.Rank, tp.Size).reshape(-1).narrow(0, lo - entry.Offset, hi - lo).to(shard.dtype).contiguous();
                using var actual = shard.narrow(0, lo - opt.ShardStart, hi - lo).contiguous();
                Assert.True(expected.bytes.SequenceEqual(actual.bytes), $"rank {rank.Groups.Rank}: {kind} of {entry.Parameter.Name}");
            }
        }
    }

    [Theory]
    [InlineData(2, 2, 2, 1, 2, 1, "fp32")] // every tensor re-cut: TP 2 → 2 over other slices' optimizer shards, PP 2 → 1
    [InlineData(1, 1, 1, 2, 4, 1, "bf16")] // fp32 checkpoint into bf16 parameters: bytes go through the staging buffer
    [InlineData(4, 1, 2, 1, 2, 2, "fp32")]
    public void A_rank_restores_its_slices_from_byte_ranges_within_a_budget_much_smaller_than_a_tensor(int dp, int tp, int pp, int toDp, int toTp, int toPp, string precision)
    {
        using var data = TestJobs.SharedBytes();
        var source = Job(dp, tp, pp, "fp32", "from");
        using (var run = TrainingRun.Create(source, data))
        {
            run.RunStep();
            run.SaveCheckpoint();
        }
        var saved = CheckpointStore.Resolve(source.Checkpoint.Dir);
        var largest = saved.Records("param").Max(r => r.Shape.Aggregate(4L, (a, b) => a * b));
        var target = Job(toDp, toTp, toPp, precision, "to");
        using var engine = LocalEngine.Create(target, data);
        foreach (var rank in engine.Ranks)
        {
            var budget = new ReshardBudget(4 << 10); // 4 KiB: the embedding alone is 24 KiB and more
            CheckpointRestore.Load(rank, saved, budget);
            AssertHoldsItsSlices(rank, saved);
            Assert.InRange(budget.Peak, precision == "bf16" ? 1 : 0, budget.Bytes);
        }
        Assert.True(largest > 4 * (4 << 10), $"the largest tensor has {largest} bytes");
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")] // fp32 master weights grown apart from the bf16 values
    public void Growth_makes_only_each_ranks_slices_within_a_small_budget_and_equals_the_whole_state_growth(string precision)
    {
        // 2 → 4 heads, 64 → 128 wide, 2 → 3 layers, from one rank into dp=2,tp=2.
        var dir = Path.Combine(_root, $"grow-{precision}");
        var job = JobValidator.Validate(TestJobs.Micro(layers: 2, hidden: 64, heads: 2) with
        {
            Train = TestJobs.Micro().Train with { Precision = precision },
            Checkpoint = new CheckpointConfig { Dir = dir, Async = false },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 2 },
                new StageConfig { Name = "b", Layers = 3, Hidden = 128, Heads = 4, Steps = 2, MaskRampSteps = 2, Layout = new LayoutConfig { Dp = 2, Tp = 2 } },
            ],
        });
        using var data = TestJobs.SharedBytes();
        using var run = TrainingRun.Create(job, data);
        while (!run.AtStageEnd)
            run.RunStep();
        run.SaveCheckpoint();
        run.Grow(); // the whole-state growth: every tensor grown whole, then sliced
        var reader = CheckpointStore.Resolve(dir);
        using var grown = LocalEngine.ForStage(run.Progress, run.Engine.Cursor, data);
        for (var r = 0; r < grown.Ranks.Count; r++)
        {
            var budget = new ReshardBudget(8 << 10); // a tenth of the grown embedding's slice (160 × 128 fp32: 80 KiB)
            CheckpointRestore.LoadGrown(grown.Ranks[r], reader, job, run.Stages, 1, budget);
            var (expected, actual) = (run.Engine.Ranks[r], grown.Ranks[r]);
            Assert.True(actual.Flat.Params.contiguous().bytes.SequenceEqual(expected.Flat.Params.contiguous().bytes), $"rank {r} parameters");
            Assert.True(actual.Optimizer.ExpAvg.contiguous().bytes.SequenceEqual(expected.Optimizer.ExpAvg.contiguous().bytes), $"rank {r} exp_avg");
            Assert.True(actual.Optimizer.ExpAvgSq.contiguous().bytes.SequenceEqual(expected.Optimizer.ExpAvgSq.contiguous().bytes), $"rank {r} exp_avg_sq");
            Assert.True(actual.Optimizer.Master.contiguous().bytes.SequenceEqual(expected.Optimizer.Master.contiguous().bytes), $"rank {r} master");
            Assert.InRange(budget.Peak, 1, budget.Bytes);
        }
    }
}
