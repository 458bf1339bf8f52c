using FlmCluster.Tests.Soak;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// A short kill -9 soak (the full one is `FlmCluster.Bench soak`): five silo processes on Redis, a job with three
/// growth stages, five kills at chosen moments from a seeded schedule, each killed server started again. The job
/// completes; its committed trajectory is the uninterrupted run's (the same samples at the same steps, the same
/// losses, the same final parameters); every committed checkpoint verifies; its time adds up.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class KillSoakEndToEndTests(ITestOutputHelper output) : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-soak-");

    public void Dispose() => _flm.Dispose();

    [Fact]
    public async Task Five_kills_leave_the_trajectory_of_an_uninterrupted_run()
    {
        var soak = new KillSoak(new SoakOptions(_flm.Home, Kills: 5, Seed: 11, BasePort: 22011, StageSteps: [40, 30, 30], output.WriteLine),
            args => _flm.Run(TimeSpan.FromMinutes(5), args));
        var result = await soak.Run(_flm.Redis.ConnectionString);
        var (killed, straight) = (result.Killed, result.Uninterrupted);
        string Events() => string.Join("\n", killed.Events.Select(e => $"{e.Kind}: {e.Message}"));

        Assert.True(killed.State == Grains.Abstractions.JobPhase.Completed, $"{killed.State}: {killed.Error}\n{Events()}");
        Assert.Equal(5, result.Kills.Count);
        Assert.Empty(result.InvalidCheckpoints);
        // The committed trajectory: the same steps reading the same samples, with the same losses.
        Assert.Equal(straight.Recent.Select(p => (p.Step, p.FirstSample, p.Stage)), killed.Recent.Select(p => (p.Step, p.FirstSample, p.Stage)));
        if (result.LayoutChanged)
        {
            // Fewer replicas for a while: the same samples, summed in another order (fp32 rounding).
            Assert.True(result.MaxParameterDifference <= 1e-6, $"max |Δparam| {result.MaxParameterDifference:E2}\n{Events()}");
            Assert.Equal(straight.Recent.Select(p => p.Loss), killed.Recent.Select(p => p.Loss), new LossTolerance(1e-5));
        }
        else
        {
            Assert.Equal(0, result.MaxParameterDifference);
            Assert.Equal(straight.Recent.Select(p => p.Loss), killed.Recent.Select(p => p.Loss));
        }
        // Every second accounted: the components add up to the job's wall time.
        var time = killed.Time!;
        var jobWall = (killed.Events.Last(e => e.Kind == "completed").At - killed.SubmittedAt).TotalSeconds;
        Assert.True(Math.Abs(jobWall - time.Accounted) <= 0.01 * jobWall, $"accounted {time.Accounted:0.0} s of {jobWall:0.0} s: {time}");
        Assert.True(time.Recovery.Count >= 1);
        output.WriteLine($"ETTR {time.Ettr:0.000}; recoveries {string.Join(", ", result.RecoverySeconds.Select(s => $"{s:0.0} s"))}; wall {result.Wall.TotalSeconds:0} s");
    }

    private sealed class LossTolerance(double relative) : IEqualityComparer<double>
    {
        public bool Equals(double x, double y) => Math.Abs(x - y) <= relative * Math.Max(1, Math.Abs(x));
        public int GetHashCode(double obj) => 0;
    }
}
