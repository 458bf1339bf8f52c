using System.Diagnostics;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>kill -9 of a GPU server's silo while its shard of a checkpoint is being written.</summary>
[Trait("Category", "EndToEnd")]
public sealed class CheckpointCrashTests : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-crash-");

    public void Dispose() => _flm.Dispose();

    [Fact]
    public void Killing_a_silo_mid_write_leaves_no_manifest_and_the_previous_checkpoint_loads()
    {
        _flm.Up(nodes: 2, gpusPerNode: 1, basePort: 21211);
        var root = Path.Combine(_flm.Home, "ckpt");
        // A model whose shards take a moment to write (25 M parameters: ~200 MB on rank 0), a checkpoint every 2 steps.
        string[] job = ["--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128", "--set", "model.layers=8",
            "--set", "model.hidden=512", "--set", "model.heads=4", "--layout", "dp=2", "--steps", "200",
            "--set", $"checkpoint.dir={root}", "--set", "checkpoint.interval=2", "--set", "checkpoint.keep_last=50"];
        var submit = _flm.Run(["submit", .. job]);
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);

        // Wait for a committed checkpoint, then for the next one's shards to appear before its manifest: kill -9.
        string? killedDuring = null;
        var watch = Stopwatch.StartNew();
        while (killedDuring is null && watch.Elapsed < TimeSpan.FromMinutes(4))
        {
            var dirs = Directory.Exists(root) ? Directory.GetDirectories(root, "step-*").Order().ToList() : [];
            var committed = dirs.Where(d => File.Exists(Path.Combine(d, "manifest.json"))).ToList();
            var writing = dirs.FirstOrDefault(d => !File.Exists(Path.Combine(d, "manifest.json"))
                && Directory.GetFiles(d, "shard-*.safetensors").Length > 0);
            if (committed.Count > 0 && writing is not null && string.CompareOrdinal(writing, committed[^1]) > 0)
            {
                Process.GetProcessById(_flm.SiloPid("node1")).Kill(); // SIGKILL: no graceful anything
                killedDuring = writing;
            }
            else
                Thread.Sleep(5);
        }
        Assert.NotNull(killedDuring);
        Thread.Sleep(2000); // let anything still running finish (it must not produce a manifest)
        Assert.False(File.Exists(Path.Combine(killedDuring, "manifest.json")), $"{killedDuring} got a manifest after its writer was killed");
        // The cluster's job would go on saving into (and pruning) this folder; from here it belongs to the checks below.
        Assert.Equal(0, _flm.Run("cancel", submit.Output.Trim()).ExitCode);

        var list = _flm.Run("checkpoint", "list", root, "--checksums");
        Assert.Equal(0, list.ExitCode);
        Assert.Contains("has no manifest.json", list.Output);
        var previous = Directory.GetDirectories(root, "step-*").Order().Last(d => File.Exists(Path.Combine(d, "manifest.json")));
        Assert.Equal(0, _flm.Run("checkpoint", "verify", previous).ExitCode);

        // The previous checkpoint is the newest valid one and loads (here into the in-process engine, one rank).
        var resumed = _flm.Run("train", "--resume", root, "--engine", "local", "--layout", "dp=1", "--steps", $"{int.Parse(Path.GetFileName(previous)[5..]) + 1}");
        Assert.True(resumed.ExitCode == 0, resumed.Output + resumed.Error);
        Assert.Contains($"resumed from {previous}", resumed.Output);

        // A flipped byte in its shard: rejected.
        var shard = Path.Combine(previous, "shard-00001.safetensors");
        var bytes = File.ReadAllBytes(shard);
        bytes[bytes.Length / 2] ^= 0x10;
        File.WriteAllBytes(shard, bytes);
        var verify = _flm.Run("checkpoint", "verify", previous);
        Assert.Equal(1, verify.ExitCode);
        Assert.Contains("shard-00001.safetensors: checksum", verify.Error);
    }
}
