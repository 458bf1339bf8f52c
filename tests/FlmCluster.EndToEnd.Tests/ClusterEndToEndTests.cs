using System.Diagnostics;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// Three silo processes (two GPU servers with two CPU devices each, one control-plane node) with Redis
/// membership, grain storage and reminders; the CLI submits jobs and watches them finish.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class ClusterEndToEndTests : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-");

    public void Dispose() => _flm.Dispose();

    [Fact]
    public void Cli_submits_to_a_redis_cluster_of_three_silo_processes_and_watches_the_job_finish()
    {
        var up = _flm.Up(nodes: 2, gpusPerNode: 2, basePort: 21111);
        Assert.Contains("2 server(s) × 2 GPU(s) + control node, Redis", up.Output);
        Assert.Contains("dashboard: http://127.0.0.1:23111/", up.Output); // the first silo's web port: base + 2000

        var nodes = _flm.Run("nodes");
        Assert.Equal(0, nodes.ExitCode);
        Assert.Contains("4 of 4 GPUs free", nodes.Output);
        Assert.Contains("control plane", nodes.Output);

        var watch = Stopwatch.StartNew();
        var submit = _flm.Run("submit", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128",
            "--steps", "20", "--layout", "dp=2,tp=2", "--watch");
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Split('\n')[0].Trim();
        Assert.Contains($"{jobId}: completed at step 20/20", submit.Output);
        Assert.Contains("step     20/20", submit.Error); // progress on standard error, results on standard output

        var status = _flm.Run("status", jobId);
        Assert.Equal(0, status.ExitCode);
        Assert.Contains("completed, step 20/20", status.Output);
        Assert.Contains("node0: rank", status.Output);
        Assert.Contains("node1: rank", status.Output);
        Assert.Contains(jobId, _flm.Run("jobs").Output);

        // Bad input against a live cluster: unknown job, a layout no server can hold.
        var unknown = _flm.Run("status", "no-such-job");
        Assert.Equal(2, unknown.ExitCode);
        var tooWide = _flm.Run("submit", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.heads=4", "--layout", "tp=4");
        Assert.Equal(2, tooWide.ExitCode);
        Assert.Contains("groups of 4 GPUs on one server", tooWide.Error);

        var down = _flm.Run("cluster", "down");
        Assert.Equal(0, down.ExitCode);
        Assert.Contains("stopped 3 silo(s)", down.Output);
        Assert.False(File.Exists(_flm.Profile));
        var gone = _flm.Run(TimeSpan.FromMinutes(1), "jobs");
        Assert.Equal(69, gone.ExitCode); // unreachable (EX_UNAVAILABLE), not bad input
        Assert.StartsWith("error: no cluster is configured", gone.Error);
    }
}
