using System.Diagnostics;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>kill -9 of a GPU server's silo for good: the job goes on by itself on the server that remains.</summary>
[Trait("Category", "EndToEnd")]
public sealed class ElasticEndToEndTests : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-elastic-");

    public void Dispose() => _flm.Dispose();

    [Fact]
    public void A_job_whose_server_dies_for_good_finishes_on_the_other_one_without_anyone_stepping_in()
    {
        _flm.Environment["Flm__WorkerWaitSeconds"] = "3"; // how long the job waits for the dead server
        _flm.Up(nodes: 2, gpusPerNode: 1, basePort: 21311);
        var root = Path.Combine(_flm.Home, "ckpt");
        var submit = _flm.Run("submit", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128",
            "--layout", "dp=2", "--steps", "16", "--set", $"checkpoint.dir={root}", "--set", "checkpoint.interval=4");
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Trim();

        // Once a checkpoint is committed, node1 dies and does not come back.
        var watch = Stopwatch.StartNew();
        while (!(Directory.Exists(root) && Directory.GetFiles(root, "manifest.json", SearchOption.AllDirectories).Length > 0) && watch.Elapsed < TimeSpan.FromMinutes(3))
            Thread.Sleep(20);
        Process.GetProcessById(_flm.SiloPid("node1")).Kill();

        var follow = _flm.Run("status", jobId, "--watch");
        Assert.True(follow.ExitCode == 0, follow.Output + follow.Error);
        Assert.Contains("shrunk: servers gone for more than 3 s", follow.Error); // events are progress: standard error
        Assert.Contains("→ 1 GPUs, layout dp=1,tp=1,pp=1,micro=2; global batch kept", follow.Error);
        Assert.Contains($"{jobId}: completed at step 16/16", follow.Output);

        var status = _flm.Run("status", jobId);
        Assert.Contains("layout dp=1,tp=1,pp=1", status.Output);
        Assert.Contains("node0: rank 0 on gpu0", status.Output);
        Assert.DoesNotContain("node1:", status.Output);
    }
}
