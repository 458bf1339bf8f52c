using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// Redis — the cluster's membership and the jobs' state — goes away under a running job: back soon, the job
/// continues from where it stood, bit for bit; gone for longer than the job's recovery.storage_wait_seconds, the
/// job fails saying why and which checkpoint to resume from, and resuming it works. Meanwhile the silos' readiness
/// says the storage is away, and their liveness does not.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class RedisFaultEndToEndTests : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-redis-");

    public void Dispose() => _flm.Dispose();

    private static string[] Job(string dir, int steps) => Flm.TinySubmit("dp=2", steps, dir, "checkpoint.interval=10", "recovery.storage_wait_seconds=6");

    [Fact]
    public void A_job_outlives_a_redis_restart_and_stops_resumably_when_redis_stays_away()
    {
        _flm.Up(nodes: 2, gpusPerNode: 1, basePort: 21811);
        const int steps = 60;

        // A restart within the wait: the job goes on, the same training as without it.
        var restarted = Path.Combine(_flm.Home, "restarted");
        var first = _flm.Run(Job(restarted, steps)).Output.Trim();
        _flm.WaitForStep(first, 15);
        _flm.Redis.Stop();
        Thread.Sleep(2000);
        _flm.Redis.Start();
        var follow = _flm.Run(TimeSpan.FromMinutes(10), "status", first, "--watch");
        Assert.True(follow.ExitCode == 0, follow.Output + follow.Error);
        Assert.Contains($"{first}: completed at step {steps}/{steps}", follow.Output);
        var straight = Path.Combine(_flm.Home, "straight");
        var uninterrupted = _flm.Run(TimeSpan.FromMinutes(10), [.. Job(straight, steps), "--watch"]);
        Assert.True(uninterrupted.ExitCode == 0, uninterrupted.Output + uninterrupted.Error);
        Assert.Equal(Flm.ShardChecksums(straight, steps), Flm.ShardChecksums(restarted, steps));

        // Away for longer than recovery.storage_wait_seconds: the job stops, saying why and what to resume from.
        var stopped = Path.Combine(_flm.Home, "stopped");
        var second = _flm.Run(Job(stopped, steps)).Output.Trim();
        _flm.WaitForStep(second, 15);
        _flm.Redis.Stop();
        var away = Stopwatch.StartNew();
        // Readiness says the storage is gone; liveness does not (an orchestrator must not restart the silo for it).
        var web = _flm.SiloHttpPorts()[1];
        Assert.Contains("storage: Unhealthy (Redis does not answer", Flm.WaitForHealth(web, "/health/ready", 503, TimeSpan.FromSeconds(12)));
        Assert.Equal(200, Flm.Health(web, "/health/live").Status);
        Thread.Sleep(TimeSpan.FromSeconds(15) - away.Elapsed);
        _flm.Redis.Start();
        Assert.Contains("storage: Healthy", Flm.WaitForHealth(web, "/health/ready", 200, TimeSpan.FromSeconds(60)));
        var failed = _flm.Run(TimeSpan.FromMinutes(5), "status", second, "--watch");
        Assert.Equal(1, failed.ExitCode);
        Assert.Contains("failed", failed.Output);
        Assert.Contains("the job's state could not be saved", failed.Output);
        Assert.Contains("for more than 6 s (recovery.storage_wait_seconds)", failed.Output);
        var resumeFrom = Regex.Match(failed.Output, @"resume it from (\S+) \(flm submit --resume-from\)");
        Assert.True(resumeFrom.Success, failed.Output);
        Assert.Equal(0, _flm.Run("checkpoint", "verify", resumeFrom.Groups[1].Value).ExitCode);

        // Resumed from there, it finishes where the uninterrupted run finished, bit for bit.
        var resumed = _flm.Run(TimeSpan.FromMinutes(10), "submit", "--resume-from", resumeFrom.Groups[1].Value, "--watch");
        Assert.True(resumed.ExitCode == 0, resumed.Output + resumed.Error);
        Assert.Equal(Flm.ShardChecksums(straight, steps), Flm.ShardChecksums(stopped, steps));
    }
}
