using FlmCluster.Tests.Process;
namespace FlmCluster.Cli.Tests;

public sealed class CliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string OutDir => Path.Combine(_dir, "out");

    [Fact]
    public void Malformed_config_file_is_rejected_with_its_position()
    {
        var config = Path.Combine(_dir, "job.json");
        File.WriteAllText(config, "{ \"base\": \"tiny\", \"train\": { \"steps\": 5, } ,, }");
        var r = FlmProcess.Run(_dir, "train", "--config", config, "--out", OutDir);
        Assert.Equal(2, r.ExitCode);
        var line = Assert.Single(r.ErrorLines);
        Assert.Contains("is malformed JSON", line);
        Assert.Contains("LineNumber: 0", line);
        Assert.False(Directory.Exists(OutDir));
    }

    [Fact]
    public void Config_file_extends_a_preset_and_set_overrides_it()
    {
        var config = Path.Combine(_dir, "job.json");
        File.WriteAllText(config, """
            // a job file: starts from the tiny preset
            { "base": "tiny", "tokenizer": "bytes", "model": { "vocab_pad_multiple": 128 }, "train": { "steps": 2, "global_batch": 4 } }
            """);
        var r = FlmProcess.Run(_dir, "train", "--config", config, "--set", "train.log_every=1", "--set", "model.seq_len=64");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("seq 64, tokenizer bytes", r.Output);
        Assert.Contains("global batch 4 × 64 tokens", r.Output);
        Assert.Contains("step      2/2", r.Output);
        Assert.Matches(@"dashboard: http://127\.0\.0\.1:\d+/ \(live while the job runs\)", r.Output);
    }

    /// <summary>The README's line: --out is the checkpoint folder that checkpoint.interval needs.</summary>
    [Fact]
    public void Out_is_the_checkpoint_folder_of_checkpoint_interval()
    {
        var r = FlmProcess.Run(_dir, "train", "--config", "tiny", "--out", "out", "--set", "checkpoint.interval=1", "--set", "tokenizer=bytes", "--steps", "2");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.True(File.Exists(Path.Combine(OutDir, "step-00000001", "manifest.json")));
        Assert.True(File.Exists(Path.Combine(OutDir, "step-00000002", "manifest.json")));
    }

    [Fact]
    public void Train_then_generate_with_the_card_prompt()
    {
        var train = FlmProcess.Run(_dir, "train", "--config", "tiny", "--set", "tokenizer=bytes", "--steps", "3", "--out", OutDir);
        Assert.Equal(0, train.ExitCode);
        Assert.Contains("saved model and optimizer state at step 3", train.Output);
        foreach (var file in new[] { "manifest.json", "shard-00000.safetensors" })
            Assert.True(File.Exists(Path.Combine(OutDir, "step-00000003", file)), file);

        const string prompt = "A house without books is like a body without a soul;";
        var generate = FlmProcess.Run(_dir, "generate", "--model", OutDir, "--prompt", prompt, "--max-new-tokens", "16", "--repetition-penalty", "1.1");
        Assert.Equal(0, generate.ExitCode);
        Assert.StartsWith(prompt, generate.Output);
        Assert.True(generate.Output.Trim().Length > prompt.Length);

        var resumed = FlmProcess.Run(_dir, "train", "--resume", OutDir, "--steps", "5", "--out", OutDir);
        Assert.Equal(0, resumed.ExitCode);
        Assert.Contains("resumed from", resumed.Output);
        Assert.Contains("step      5/5", resumed.Output);

        // Checkpoint tools.
        var step5 = Path.Combine(OutDir, "step-00000005");
        var verify = FlmProcess.Run(_dir, "checkpoint", "verify", step5);
        Assert.Equal(0, verify.ExitCode);
        Assert.Contains("manifest and 1 shard checksum(s) good (step 5)", verify.Output);
        var list = FlmProcess.Run(_dir, "checkpoint", "list", OutDir, "--checksums");
        Assert.Equal(0, list.ExitCode);
        Assert.Contains("step-00000003", list.Output);
        Assert.Contains("step-00000005", list.Output);
        var inspect = FlmProcess.Run(_dir, "checkpoint", "inspect", step5);
        Assert.Equal(0, inspect.ExitCode);
        Assert.Contains("next step 5, samples consumed 40", inspect.Output);

        // Export to the Hugging Face layout, import back, generate from both.
        var hf = Path.Combine(_dir, "hf");
        Assert.Equal(0, FlmProcess.Run(_dir, "export", "--hf", OutDir, hf).ExitCode);
        var fromExport = FlmProcess.Run(_dir, "generate", "--model", hf, "--prompt", prompt, "--max-new-tokens", "16");
        var fromCheckpoint = FlmProcess.Run(_dir, "generate", "--model", OutDir, "--prompt", prompt, "--max-new-tokens", "16");
        Assert.Equal(0, fromExport.ExitCode);
        Assert.Equal(fromCheckpoint.Output, fromExport.Output);
        var imported = Path.Combine(_dir, "imported");
        Assert.Equal(0, FlmProcess.Run(_dir, "import", "--hf", hf, "--out", imported).ExitCode);
        Assert.Equal(fromCheckpoint.Output, FlmProcess.Run(_dir, "generate", "--model", imported, "--prompt", prompt, "--max-new-tokens", "16").Output);

        // A flipped byte: verify fails (exit 1), and resuming skips to the previous checkpoint.
        var shard = Path.Combine(step5, "shard-00000.safetensors");
        var bytes = File.ReadAllBytes(shard);
        bytes[^10] ^= 0x20;
        File.WriteAllBytes(shard, bytes);
        var bad = FlmProcess.Run(_dir, "checkpoint", "verify", step5);
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("checksum", bad.Error);
        var fallback = FlmProcess.Run(_dir, "train", "--resume", OutDir, "--steps", "4");
        Assert.Equal(0, fallback.ExitCode);
        Assert.Contains("resumed from", fallback.Output);
        Assert.Contains("step-00000003 at step 3", fallback.Output);
        Assert.Contains("step-00000005", fallback.Error + fallback.Output);

        // Resuming into a layout that cannot hold the model, as another model, or with no steps left: one
        // error line before anything starts, and the checkpoints are untouched.
        var step4 = Path.Combine(OutDir, "step-00000004");
        var before = Listing(OutDir);
        foreach (var (args, expected) in new (string[] Args, string Expected)[]
        {
            (["--layout", "tp=3"], "tp=3 does not divide model.heads=2"),
            (["--set", "model.hidden=96"], "holds another model (hidden 128 in the checkpoint vs 96 in the job)"),
            (["--steps", "4"], "the checkpoint is at step 4 and the job has 4 steps"),
            (["--config", "small"], "resuming takes the job config from the checkpoint"),
        })
        {
            var refused = FlmProcess.Run(_dir, ["train", "--resume", step4, .. args]);
            Assert.Equal(2, refused.ExitCode);
            Assert.Contains(expected, Assert.Single(refused.ErrorLines));
            Assert.Equal("", refused.Output);
        }
        Assert.Equal(before, Listing(OutDir));
    }

    [Fact]
    public void Two_runs_never_share_a_checkpoint_folder_and_a_resume_continues_its_own_run()
    {
        string[] Tiny(params string[] more) => ["train", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.seq_len=64", "--out", OutDir, .. more];
        string RunOf(long step) => System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(OutDir, $"step-{step:D8}", "manifest.json"))).RootElement.GetProperty("run_id").GetString()!;
        string Owner() => System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(OutDir, "run.json"))).RootElement.GetProperty("run_id").GetString()!;

        // Run A: checkpoints at steps 2 and 4, on the embedded cluster.
        var a = FlmProcess.Run(_dir, Tiny("--steps", "4", "--set", "checkpoint.interval=2"));
        Assert.Equal(0, a.ExitCode);
        var runA = Owner();
        Assert.Equal(runA, RunOf(2));
        Assert.Equal(runA, RunOf(4));
        var listing = Listing(OutDir);

        // Run B into the same folder: refused before anything starts; A's checkpoints are untouched.
        var b = FlmProcess.Run(_dir, Tiny("--steps", "2"));
        Assert.Equal(2, b.ExitCode);
        var line = Assert.Single(b.ErrorLines);
        Assert.StartsWith($"error: checkpoint folder '{OutDir}' belongs to run {runA}", line);
        Assert.Contains("newest step 4", line);
        Assert.Contains("--overwrite", line);
        Assert.Equal("", b.Output);
        Assert.Equal(listing, Listing(OutDir));

        // Resuming continues run A, in its folder (the local engine this time).
        var resumed = FlmProcess.Run(_dir, ["train", "--resume", OutDir, "--steps", "6", "--engine", "local"]);
        Assert.Equal(0, resumed.ExitCode);
        Assert.Contains($"run {runA}", resumed.Output);
        Assert.Equal(runA, RunOf(6));

        // Resuming from an older checkpoint of A into the folder would fork the run there: refused.
        var fork = FlmProcess.Run(_dir, ["train", "--resume", Path.Combine(OutDir, "step-00000002"), "--steps", "8", "--out", OutDir]);
        Assert.Equal(2, fork.ExitCode);
        Assert.Contains("already holds step 6 of this run, newer than the checkpoint it resumes from (step 2)", Assert.Single(fork.ErrorLines));

        // Asked to, run B takes the folder: A's checkpoints go, and a resume of the folder is B's.
        var overwrite = FlmProcess.Run(_dir, Tiny("--steps", "2", "--overwrite", "--engine", "local"));
        Assert.Equal(0, overwrite.ExitCode);
        var runB = Owner();
        Assert.NotEqual(runA, runB);
        Assert.Equal(["step-00000002"], Directory.EnumerateDirectories(OutDir).Select(Path.GetFileName).Order());
        Assert.Equal(runB, RunOf(2));
        var resumedB = FlmProcess.Run(_dir, ["train", "--resume", OutDir, "--steps", "3"]);
        Assert.Equal(0, resumedB.ExitCode);
        Assert.Equal(runB, RunOf(3));
    }

    /// <summary>Every file under a folder with its size and last write time.</summary>
    private static List<string> Listing(string root) =>
        Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(f => $"{f} {new FileInfo(f).Length} {File.GetLastWriteTimeUtc(f):O}").ToList();

    [Fact]
    public void Params_reports_101b_count_and_memory_with_and_without_the_distributed_optimizer()
    {
        var r = FlmProcess.Run(_dir, "params", "--preset", "101b");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("101,701,570,560", r.Output);
        Assert.Contains("dp=12,tp=4,pp=4", r.Output);
        Assert.Contains("optimizer (distributed)", r.Output);
    }

    [Fact]
    public void Data_prepare_writes_a_token_file_that_training_reads()
    {
        var prefix = Path.Combine(_dir, "tokens", "bilingual");
        var prepare = FlmProcess.Run(_dir, "data", "prepare", "--input", "bundled", "--out", prefix, "--tokenizer", "bytes");
        Assert.Equal(0, prepare.ExitCode);
        Assert.True(File.Exists(prefix + ".bin") && File.Exists(prefix + ".idx"));
        var train = FlmProcess.Run(_dir, "train", "--config", "tiny", "--set", "tokenizer=bytes", "--set", $"data.paths=[\"{prefix}\"]", "--steps", "2");
        Assert.Equal(0, train.ExitCode);
        Assert.Contains("completed at step 2/2", train.Output);
    }

    [Fact]
    public void Help_lists_the_commands()
    {
        var r = FlmProcess.Run(_dir, "--help");
        Assert.Equal(0, r.ExitCode);
        foreach (var command in new[] { "train", "generate", "params", "data" })
            Assert.Contains(command, r.Output);
    }
}

public sealed class ScalingCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-scaling-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Predict_loss_writes_data_fit_plot_and_the_predicted_curve()
    {
        // Four small trainings one after another: minutes when the machine also runs the other test projects.
        var r = FlmProcess.Run(_dir, new Dictionary<string, string>(), TimeSpan.FromMinutes(12),
            "predict-loss", "--widths", "16,32,48", "--holdout", "64", "--steps", "40", "--eval-every", "20", "--eval-batches", "1", "--out", "pl");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("predicted", r.Output);
        Assert.Matches(@"error [+-]\d+\.\d\d%", r.Output);
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "pl", "prediction.json"))).RootElement;
        Assert.Equal(2, json.GetProperty("predicted_loss_curve").GetArrayLength());
        Assert.Equal(3, json.GetProperty("ladder").GetArrayLength());
        Assert.True(json.GetProperty("fit").GetProperty("c").GetDouble() >= 0);
        Assert.StartsWith("<svg", File.ReadAllText(Path.Combine(_dir, "pl", "prediction.svg")));
        Assert.Equal(1 + 4 * 2, File.ReadAllLines(Path.Combine(_dir, "pl", "ladder.csv")).Length);
    }

    [Fact]
    public void Mup_sweep_reports_an_optimum_per_width()
    {
        var r = FlmProcess.Run(_dir, "mup", "sweep", "--lrs", "1e-3,1e-2", "--widths", "32", "--steps", "20", "--eval-every", "20", "--eval-batches", "1", "--out", "sweep");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("optimum at width 32: lr", r.Output);
        Assert.Equal(3, File.ReadAllLines(Path.Combine(_dir, "sweep", "sweep.csv")).Length);
    }
}
