using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

[Collection("Training")]
public sealed class CheckpointTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("flm-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private JobConfig Job(int dp, int tp, int pp, int micro = 2, string precision = "fp32", long steps = 6, double dropout = 0) => TestJobs.Micro(steps: steps) with
    {
        Model = TestJobs.Micro().Model with { Dropout = dropout },
        Train = TestJobs.Micro().Train with { Precision = precision, Steps = steps },
        Layout = new LayoutConfig { Dp = dp, Tp = tp, Pp = pp, MicroBatches = micro },
        Checkpoint = new CheckpointConfig { Dir = Path.Combine(_root, $"{dp}{tp}{pp}{precision}-{dropout}"), KeepLast = 10 },
    };

    private static List<double> Steps(TrainingRun run, int n) => Enumerable.Range(0, n).Select(_ => run.RunStep().Loss).ToList();

    /// <summary>With dropout too: the resumed steps redraw the masks of the same global samples.</summary>
    [Theory]
    [InlineData(1, 1, 1, 0.0)]
    [InlineData(2, 2, 2, 0.0)]
    [InlineData(1, 1, 1, 0.1)]
    [InlineData(2, 2, 2, 0.1)]
    public void Resuming_in_the_same_layout_continues_bit_identically(int dp, int tp, int pp, double dropout)
    {
        using var data = TestJobs.SharedBytes();
        var job = Job(dp, tp, pp, dropout: dropout);
        using var straight = TrainingRun.Create(job, data);
        var expected = Steps(straight, 6);
        var expectedParams = StateAssembler.GatherParameters(straight.Engine.Ranks);

        using (var first = TrainingRun.Create(job, data))
        {
            Steps(first, 3);
            var stall = first.SaveCheckpoint();
            Steps(first, 1); // training goes on while the shards are written
            first.Checkpoints.WaitForPending();
            Assert.True(stall < TimeSpan.FromSeconds(5));
        }
        using var resumed = TrainingRun.Create(job, data);
        var reader = resumed.Restore(job.Checkpoint.Dir);
        Assert.EndsWith("step-00000003", reader.Directory);
        Assert.Equal(3, resumed.NextStep);
        Assert.Equal(expected.Skip(3), Steps(resumed, 3));
        foreach (var (name, t) in StateAssembler.GatherParameters(resumed.Engine.Ranks))
            Assert.True(t.equal(expectedParams[name]).all().item<bool>(), name);
    }

    /// <summary>Save under 2/2/2; load under other layouts (and save there, and come back): same logits, same training.</summary>
    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(2, 1, 1)]
    [InlineData(1, 2, 2)]
    [InlineData(4, 1, 1)]
    public void A_checkpoint_of_2_2_2_loads_into_other_layouts_and_back(int dp, int tp, int pp)
    {
        using var data = TestJobs.SharedBytes();
        var source = Job(2, 2, 2, precision: "fp64");
        using (var run = TrainingRun.Create(source, data))
        {
            Steps(run, 3);
            run.SaveCheckpoint();
        }
        var saved = CheckpointStore.Resolve(source.Checkpoint.Dir);

        // Reference: keep training under 2/2/2.
        using var reference = TrainingRun.Create(source, data);
        reference.Restore(source.Checkpoint.Dir);
        var referenceLosses = Steps(reference, 3);

        var target = Job(dp, tp, pp, micro: 2, precision: "fp64") with { Checkpoint = source.Checkpoint with { Dir = Path.Combine(_root, $"to-{dp}{tp}{pp}") } };
        using var moved = TrainingRun.Create(target, data);
        moved.Restore(source.Checkpoint.Dir);
        Assert.Equal(3, moved.NextStep);
        Assert.Equal(24, moved.Engine.SamplesConsumed); // the data cursor moves with the checkpoint
        // Same parameters and optimizer state, now sliced for the new layout.
        var loaded = StateAssembler.GatherParameters(moved.Engine.Ranks);
        foreach (var (name, t) in loaded)
        {
            using var whole = saved.ReadWhole("param", name);
            Assert.True(t.equal(whole).all().item<bool>(), name);
        }
        var loadedMoments = StateAssembler.GatherOptimizer(moved.Engine.Ranks);
        foreach (var name in loaded.Keys)
        {
            using var whole = saved.ReadWhole("exp_avg_sq", name);
            Assert.True(loadedMoments["exp_avg_sq." + name].equal(whole).all().item<bool>(), name);
        }
        // Same logits (through a whole model) and equivalent training.
        using (var model = new FlmModel(target.Model, dtype: ScalarType.Float64))
        {
            var ids = randint(0, 257, [2, 32], dtype: ScalarType.Int64, generator: new Generator(5));
            using var _ = no_grad();
            foreach (var p in model.Parameters) p.Tensor.copy_(loaded[p.Name]);
            var a = model.Forward(ids);
            foreach (var p in model.Parameters) { using var w = saved.ReadWhole("param", p.Name); p.Tensor.copy_(w); }
            Assert.True(a.equal(model.Forward(ids)).all().item<bool>());
        }
        var movedLosses = Steps(moved, 3);
        for (var i = 0; i < 3; i++)
            Assert.Equal(referenceLosses[i], movedLosses[i], 1e-12);

        // And back: save under the new layout, load under 2/2/2.
        moved.SaveCheckpoint();
        moved.Checkpoints.WaitForPending();
        using var back = TrainingRun.Create(source with { Checkpoint = target.Checkpoint }, data);
        back.Restore(target.Checkpoint.Dir);
        Assert.Equal(6, back.NextStep);
        var final = StateAssembler.GatherParameters(back.Engine.Ranks);
        var movedFinal = StateAssembler.GatherParameters(moved.Engine.Ranks);
        foreach (var (name, t) in final)
            Assert.True(t.equal(movedFinal[name]).all().item<bool>(), name);
    }

    [Fact]
    public void A_flipped_byte_or_a_missing_manifest_is_rejected_and_the_previous_checkpoint_is_used()
    {
        using var data = TestJobs.SharedBytes();
        var job = Job(2, 1, 1) with { Checkpoint = Job(2, 1, 1).Checkpoint with { Interval = 2, Async = false } };
        using (var run = TrainingRun.Create(job, data))
            while (run.NextStep < 6)
                run.RunStepAndCheckpoint();
        var root = job.Checkpoint.Dir;
        Assert.Equal([2L, 4L, 6L], CheckpointStore.List(root).Select(e => e.Step));

        // Flip one byte of a shard of the newest checkpoint.
        var newest = CheckpointStore.DirectoryFor(root, 6);
        var shard = Path.Combine(newest, ShardWriter.FileName(1));
        var bytes = File.ReadAllBytes(shard);
        bytes[^100] ^= 0x01;
        File.WriteAllBytes(shard, bytes);
        var problems = CheckpointReader.Open(newest).Verify();
        Assert.Contains(problems, p => p.Contains("shard-00001.safetensors: checksum"));

        // A half-written one after it: shards but no manifest.
        var partial = CheckpointStore.DirectoryFor(root, 8);
        Directory.CreateDirectory(partial);
        File.WriteAllBytes(Path.Combine(partial, ShardWriter.FileName(0)), [1, 2, 3]);

        var rejected = new List<string>();
        using var resumed = TrainingRun.Create(job, data);
        var reader = resumed.Restore(root, (dir, why) => rejected.Add($"{Path.GetFileName(dir)}: {why}"));
        Assert.EndsWith("step-00000004", reader.Directory);
        Assert.Equal(4, resumed.NextStep);
        Assert.Collection(rejected,
            r => Assert.Contains("step-00000008: ", r),
            r => Assert.Contains("shard-00001.safetensors: checksum", r));
        Assert.Throws<InvalidCheckpointException>(() => CheckpointStore.Resolve(newest));
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")] // separate fp32 master weights
    public void In_memory_replicas_are_checkpoint_shards_and_restore_into_the_same_layout_and_into_another(string precision)
    {
        using var data = TestJobs.SharedBytes();
        var job = Job(2, 1, 2, precision: precision) with { Checkpoint = new CheckpointConfig() };
        using var straight = LocalEngine.Create(job, data);
        for (var i = 0; i < 3; i++)
            straight.RunStep();
        // Each rank's shard in host memory (small chunks, so that tensors span several) and, from the same
        // snapshot, on disk: the same bytes.
        var disk = Path.Combine(_root, "same-state");
        Directory.CreateDirectory(disk);
        var held = straight.Fan(r =>
        {
            using var snapshot = RankSnapshot.Capture(straight.Ranks[r]);
            var written = ShardWriter.Write(snapshot, disk);
            var (bytes, shard) = ShardWriter.Serialize(snapshot, chunkSize: 64 << 10);
            Assert.Equal(written, shard with { Tensors = written.Tensors }); // same file, size and SHA-256
            Assert.Equal(written.Tensors.Select(t => t.Pieces.Single()), shard.Tensors.Select(t => t.Pieces.Single()));
            Assert.Equal(File.ReadAllBytes(Path.Combine(disk, shard.Shard.File)), bytes.Chunks.SelectMany(c => c).ToArray());
            return (Bytes: bytes, Shard: shard);
        });
        Assert.All(held, h => Assert.True(h.Bytes.Chunks.Count > 1));
        var manifest = straight.Progress.Manifest(straight.Cursor, RunIdentity.New(straight.Progress.Job), "job", straight.Data.Fingerprint, held.Select(h => h.Shard).ToList());
        CheckpointStore.Commit(disk, manifest);
        var byFile = held.ToDictionary(h => h.Shard.Shard.File, h => h.Bytes);
        var expected = Enumerable.Range(0, 3).Select(_ => straight.RunStep().Loss).ToList();
        var expectedParams = StateAssembler.GatherParameters(straight.Ranks);

        // The same layout: bit for bit, each rank fetching only the shards its slices are in (its own for the
        // moments, data-parallel rank 0's of its stage for the parameters).
        var fetched = new FetchedShards[4];
        using (var restored = LocalEngine.Create(job, data))
        {
            restored.Fan(r =>
            {
                fetched[r] = new FetchedShards(file => byFile[file]);
                CheckpointRestore.Load(restored.Ranks[r], CheckpointReader.InMemory("replicas", manifest, fetched[r]));
            });
            Assert.All(restored.Ranks, r => Assert.Equal(3, r.Optimizer.Step));
            restored.SetCursor(JobCursor.Of(manifest));
            Assert.Equal(expected, Enumerable.Range(0, 3).Select(_ => restored.RunStep().Loss));
            foreach (var (name, t) in StateAssembler.GatherParameters(restored.Ranks))
                Assert.True(t.equal(expectedParams[name]).all().item<bool>(), name);
        }
        var ranksOf = new[] { "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors", "shard-00003.safetensors" };
        var layout = new FlmCluster.Training.Parallel.ParallelLayout(2, 1, 2, 2);
        for (var r = 0; r < 4; r++)
        {
            var coords = layout.CoordsOf(r);
            var paramsFrom = layout.RankOf(coords with { Dp = 0 });
            // The last stage's output head is tied to the embedding, saved by the first stage: its values are in
            // data-parallel rank 0's shard there, its moments in the shard of the same data-parallel rank.
            var tiedFrom = coords.Pp == layout.Pp - 1 ? new[] { ranksOf[0], ranksOf[layout.RankOf(coords with { Pp = 0 })] } : [];
            Assert.Equal(new[] { ranksOf[r], ranksOf[paramsFrom] }.Concat(tiedFrom).Distinct().Order(StringComparer.Ordinal), fetched[r].Fetched);
        }

        // Another layout (tp = 2 on one pipeline stage): the same state as from the checkpoint on disk, bit for bit.
        var other = Job(1, 2, 1, precision: precision) with { Checkpoint = new CheckpointConfig() };
        using var fromMemory = LocalEngine.Create(other, data);
        using var fromDisk = LocalEngine.Create(other, data);
        fromMemory.Fan(r => CheckpointRestore.Load(fromMemory.Ranks[r], CheckpointReader.InMemory("replicas", manifest, new FetchedShards(file => byFile[file]))));
        fromDisk.Fan(r => CheckpointRestore.Load(fromDisk.Ranks[r], CheckpointReader.Open(disk)));
        foreach (var gather in new Func<IReadOnlyList<RankTrainer>, Dictionary<string, Tensor>>[] { StateAssembler.GatherParameters, StateAssembler.GatherOptimizer })
        {
            var (memory, onDisk) = (gather(fromMemory.Ranks), gather(fromDisk.Ranks));
            Assert.Equal(onDisk.Keys.Order(), memory.Keys.Order());
            foreach (var (name, t) in memory)
                Assert.True(t.equal(onDisk[name]).all().item<bool>(), name);
        }
        fromMemory.SetCursor(JobCursor.Of(manifest));
        fromDisk.SetCursor(JobCursor.Of(manifest));
        Assert.Equal(Enumerable.Range(0, 3).Select(_ => fromDisk.RunStep().Loss), Enumerable.Range(0, 3).Select(_ => fromMemory.RunStep().Loss));
    }

    [Fact]
    public void An_in_memory_checkpoint_missing_a_shard_or_with_a_bad_manifest_is_refused()
    {
        using var data = TestJobs.SharedBytes();
        var job = Job(2, 1, 1) with { Checkpoint = new CheckpointConfig() };
        using var engine = LocalEngine.Create(job, data);
        engine.RunStep();
        var held = engine.Fan(r =>
        {
            using var snapshot = RankSnapshot.Capture(engine.Ranks[r]);
            return ShardWriter.Serialize(snapshot, chunkSize: 64 << 10);
        });
        var manifest = engine.Progress.Manifest(engine.Cursor, RunIdentity.New(engine.Progress.Job), "job", engine.Data.Fingerprint, held.Select(h => h.Shard).ToList());
        var escaping = manifest with { Shards = [manifest.Shards[0] with { File = "../shard-00000.safetensors" }, manifest.Shards[1]] };
        Assert.Contains("not a plain file name", Assert.Throws<InvalidCheckpointException>(() =>
            CheckpointReader.InMemory("replicas", escaping, new FetchedShards(_ => held[0].Bytes))).Message);

        // A holder that answers with fewer bytes than the manifest says: refused before any tensor is touched.
        using var target = LocalEngine.Create(job, data);
        var truncated = new ChunkedBytes([held[1].Bytes.Chunks[0]]);
        var reader = CheckpointReader.InMemory("replicas", manifest, new FetchedShards(file => file == held[0].Shard.Shard.File ? held[0].Bytes : truncated));
        Assert.Throws<InvalidCheckpointException>(() => target.Fan(r => CheckpointRestore.Load(target.Ranks[r], reader)));
    }

    [Fact]
    public void Retention_keeps_the_last_k_and_every_nth()
    {
        using var data = TestJobs.SharedBytes();
        var job = Job(1, 1, 1, steps: 12) with { Checkpoint = new CheckpointConfig { Dir = Path.Combine(_root, "keep"), Interval = 1, KeepLast = 2, KeepEvery = 5, Async = false } };
        using var run = TrainingRun.Create(job, data);
        while (run.NextStep < 12)
            run.RunStepAndCheckpoint();
        // Checkpoints 1 … 12: every 5th (steps 5, 10) and the last two (11, 12).
        Assert.Equal([5L, 10L, 11L, 12L], CheckpointStore.List(job.Checkpoint.Dir).Select(e => e.Step));
    }

    [Fact]
    public void The_manifest_records_cursor_schedule_layout_and_every_piece()
    {
        using var data = TestJobs.SharedBytes();
        var job = Job(2, 2, 1, micro: 1);
        using var run = TrainingRun.Create(job, data);
        Steps(run, 2);
        run.SaveCheckpoint();
        run.Checkpoints.WaitForPending();
        var m = CheckpointStore.Resolve(job.Checkpoint.Dir).Manifest;
        Assert.Equal((2L, 16L, 2L), (m.Step, m.SamplesConsumed, m.AdamStep));
        Assert.Equal(run.Engine.Schedule.At(2), m.NextLr);
        Assert.Equal((2, 2, 1), (m.Layout.Dp, m.Layout.Tp, m.Layout.Pp));
        Assert.Equal(4, m.Shards.Count);
        Assert.All(m.Shards, s => Assert.Equal(64, s.Sha256.Length));
        // Parameters come from one data-parallel replica: two TP slices of the column-parallel c_fc.
        var fc = m.Tensors.Single(t => t.Kind == "param" && t.Name == "transformer.h.0.mlp.c_fc.weight");
        Assert.Equal([0, 1], fc.Pieces.Select(p => p.TpRank));
        // Moments come from every rank: each TP slice in two DP pieces.
        var moments = m.Tensors.Where(t => t.Kind == "exp_avg").ToList();
        Assert.Equal(m.Tensors.Count(t => t.Kind == "param"), moments.Count);
        Assert.Equal(job.Model.ParameterCount, m.Tensors.Where(t => t.Kind == "param").Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)));
    }

    [Fact]
    public void A_checkpoint_of_another_model_or_a_non_checkpoint_is_refused()
    {
        using var data = TestJobs.SharedBytes();
        var job = Job(1, 1, 1);
        using (var run = TrainingRun.Create(job, data))
        {
            Steps(run, 1);
            run.SaveCheckpoint();
        }
        var other = job with { Model = job.Model with { Hidden = 96, Heads = 6 } };
        using var wrong = TrainingRun.Create(other, data);
        var ex = Assert.Throws<FlmUserException>(() => wrong.Restore(job.Checkpoint.Dir));
        Assert.Contains("holds another model (hidden 64 in the checkpoint vs 96 in the job)", ex.Message);
        var notOne = Assert.Throws<FlmUserException>(() => wrong.Restore(_root));
        Assert.Contains("no manifest.json", notOne.Message);
    }
}

public sealed class HfFormatTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-hf-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Export_and_import_round_trip_preserves_logits()
    {
        var config = TestJobs.Micro().Model with { VocabSize = 257 };
        using var model = new FlmModel(config);
        ModelInitializer.Initialize(model, 21);
        var export = Path.Combine(_dir, "hf");
        HfFormat.Export(config, "bytes", name => model.Parameters.Single(p => p.Name == name && !p.IsTiedCopy).Tensor.detach(), export);
        Assert.True(HfFormat.IsExport(export));
        var (job, imported, tokenizer) = HfFormat.Import(export);
        using (imported)
        {
            Assert.Equal("bytes", tokenizer.Name);
            Assert.Equal(config.ParameterCount, job.Model.ParameterCount);
            using var _ = no_grad();
            var ids = randint(0, 257, [2, 16], dtype: ScalarType.Int64, generator: new Generator(8));
            Assert.True(model.Forward(ids).equal(imported.Forward(ids)).all().item<bool>());
        }
        // Conv1D layout on disk: c_fc is [in, out] = [hidden, ffn].
        var (entries, _) = SafeTensors.ReadHeader(Path.Combine(export, HfFormat.WeightsFile));
        Assert.Equal([64L, 256L], entries.Single(e => e.Name == "transformer.h.0.mlp.c_fc.weight").Shape);
    }

    [Fact]
    public void The_101b_export_has_flm_101b_names_and_shapes()
    {
        var shapes = HfFormat.Shapes(Presets.Model101B);
        // docs/model.md (parameter names), written out independently.
        Assert.Equal([100352L, 10240L], shapes["transformer.wte.weight"]);
        Assert.Equal([64L], shapes["transformer.wpe.inv_freq"]);
        Assert.Equal([64L], shapes["transformer.wpe.scale"]);
        for (var i = 0; i < 80; i++)
        {
            var h = $"transformer.h.{i}.";
            Assert.Equal([10240L], shapes[h + "ln_1.weight"]);
            Assert.Equal([10240L], shapes[h + "ln_1.bias"]);
            Assert.Equal([10240L, 30720L], shapes[h + "attn.c_attn.weight"]);
            Assert.Equal([30720L], shapes[h + "attn.c_attn.bias"]);
            Assert.Equal([10240L, 10240L], shapes[h + "attn.c_proj.weight"]);
            Assert.Equal([10240L], shapes[h + "attn.c_proj.bias"]);
            Assert.Equal([10240L], shapes[h + "ln_2.weight"]);
            Assert.Equal([10240L, 40960L], shapes[h + "mlp.c_fc.weight"]);
            Assert.Equal([40960L], shapes[h + "mlp.c_fc.bias"]);
            Assert.Equal([40960L, 10240L], shapes[h + "mlp.c_proj.weight"]);
            Assert.Equal([10240L], shapes[h + "mlp.c_proj.bias"]);
        }
        Assert.Equal([10240L], shapes["transformer.ln_f.weight"]);
        Assert.Equal(3 + 80 * 12 + 2, shapes.Count);
        Assert.False(shapes.ContainsKey("transformer.h.80.ln_1.weight"));
        var config = HfFormat.Config(Presets.Model101B, "cl100k", "bfloat16");
        Assert.Equal(40.0, config["mup_scale_factor"]!.GetValue<double>());
        Assert.Equal(100256, config["eos_token_id"]!.GetValue<int>());
    }
}
