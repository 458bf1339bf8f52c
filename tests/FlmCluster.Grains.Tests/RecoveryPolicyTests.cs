using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Jobs;
using FlmCluster.Training.Config;
using static FlmCluster.Grains.Jobs.RecoveryDecision;

namespace FlmCluster.Grains.Tests;

/// <summary>The recovery policy as a table of situations and the decisions they get; no cluster, no clock but the one given.</summary>
public sealed class RecoveryPolicyTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);
    private static readonly RecoverySettings Settings = new(Wait: TimeSpan.FromSeconds(30), RestoreLimit: 3, Replace: true, Shrink: true, RetryEvery: TimeSpan.FromSeconds(1), Suspect: TimeSpan.FromSeconds(20));

    /// <summary>A dp=2 job running at step 50 with replicas of step 50 and a checkpoint of step 40.</summary>
    private static readonly JobSnapshot Running = new(JobPhase.Running, null, 0, Dp: 2, SubmittedDp: 2, NextStep: 50, ReplicaStep: 50, CheckpointStep: 40,
        CanCheckpoint: true, OutageSince: null);

    private static readonly Failure Lost = new(FailureKind.WorkerLost, "worker Silo_1/gpu0 out of reach");
    private static readonly Failure Reset = new(FailureKind.WorkerReset, "worker Silo_1/gpu0 does not hold the job");
    private static readonly ClusterView Back = new(AllocationAlive: true, FittingDp: [2, 1]);
    private static readonly ClusterView Spare = new(AllocationAlive: false, FittingDp: [2, 1]);
    private static readonly ClusterView OnlyFewer = new(AllocationAlive: false, FittingDp: [1]);
    private static readonly ClusterView Nothing = new(AllocationAlive: false, FittingDp: []);

    public static TheoryData<string, JobSnapshot, Failure?, ClusterView, RecoverySettings, RecoveryDecision> Situations => new()
    {
        { "lost worker with replicas, its server restarted", Running, Reset, Back, Settings, new Restore(RecoverySource.Replicas, "") },
        { "lost worker without replicas", Running with { ReplicaStep = null }, Reset, Back, Settings, new Restore(RecoverySource.Checkpoint, "") },
        { "replicas older than the newest checkpoint", Running with { ReplicaStep = 30 }, Reset, Back, Settings, new Restore(RecoverySource.Checkpoint, "") },
        { "replicas as new as the checkpoint", Running with { ReplicaStep = 40 }, Reset, Back, Settings, new Restore(RecoverySource.Replicas, "") },
        { "out of reach, its server not declared dead yet", Running with { OutageSince = Now.AddSeconds(-5) }, Lost, Back, Settings, new Wait(Now.AddSeconds(1), "") },
        { "out of reach for longer than a crash takes to declare", Running with { OutageSince = Now.AddSeconds(-21) }, Lost, Back, Settings, new Restore(RecoverySource.Replicas, "") },
        { "a rank and its peer both lost", Running, new Failure(FailureKind.ReplicaUnavailable, "no holder"), Back, Settings, new Restore(RecoverySource.Checkpoint, "") },
        { "spare GPUs available", Running, Lost, Spare, Settings, new Replace(2, RecoverySource.Replicas, "") },
        { "spare GPUs, but the job is pinned to its servers", Running, Lost, Spare, Settings with { Replace = false }, new Wait(Now.AddSeconds(1), "") },
        { "server gone within the wait, only fewer replicas fit", Running with { OutageSince = Now.AddSeconds(-10) }, Lost, OnlyFewer, Settings, new Wait(Now.AddSeconds(1), "") },
        { "server gone past the wait", Running with { OutageSince = Now.AddSeconds(-31) }, Lost, OnlyFewer, Settings, new Shrink(1, RecoverySource.Replicas, "") },
        { "server gone past the wait, replicas older than the checkpoint", Running with { ReplicaStep = 30, OutageSince = Now.AddSeconds(-31) }, Lost, OnlyFewer, Settings,
            new Shrink(1, RecoverySource.Checkpoint, "") },
        { "server gone past the wait, no checkpoint folder", Running with { CheckpointStep = null, CanCheckpoint = false, OutageSince = Now.AddSeconds(-31) }, Lost, OnlyFewer,
            Settings, new Shrink(1, RecoverySource.Replicas, "") },
        { "server gone past the wait, shrinking not allowed", Running with { OutageSince = Now.AddSeconds(-31) }, Lost, OnlyFewer, Settings with { Shrink = false }, new Wait(Now.AddSeconds(1), "") },
        { "server gone past the wait, only replicas to rebuild from", Running with { CheckpointStep = null, OutageSince = Now.AddSeconds(-31) }, Lost, OnlyFewer, Settings,
            new Shrink(1, RecoverySource.Replicas, "") },
        { "server gone past the wait, no GPUs at all", Running with { OutageSince = Now.AddSeconds(-31) }, Lost, Nothing, Settings, new Wait(Now.AddSeconds(1), "") },
        { "nothing to rebuild from", Running with { ReplicaStep = null, CheckpointStep = null }, Reset, Back, Settings, new Fail("") },
        { "lost before the first step", Running with { NextStep = 0, ReplicaStep = null, CheckpointStep = null }, Reset, Back, Settings, new Restore(RecoverySource.Start, "") },
        { "coordinator restarted mid-restore", Running with { Phase = JobPhase.Starting, Rebuilding = RebuildKind.Replicas, RestoresWithoutProgress = 1 },
            Failure.CoordinatorRestarted("silo"), Back, Settings, new Continue("") },
        { "restore limit reached", Running with { RestoresWithoutProgress = 3 }, Reset, Back, Settings, new Fail("") },
        { "failure during growth, servers back", Running with { Phase = JobPhase.Starting, Rebuilding = RebuildKind.Growth }, Reset, Back, Settings, new Restore(RecoverySource.StageCheckpoint, "") },
        { "failure during growth, spare GPUs", Running with { Phase = JobPhase.Starting, Rebuilding = RebuildKind.Growth }, Lost, Spare, Settings, new Replace(2, RecoverySource.StageCheckpoint, "") },
        { "failure during growth, past the wait", Running with { Phase = JobPhase.Waiting, Rebuilding = RebuildKind.Growth, OutageSince = Now.AddMinutes(-1) }, Lost, OnlyFewer, Settings,
            new Shrink(1, RecoverySource.StageCheckpoint, "") },
        { "the job's own error", Running, new Failure(FailureKind.UserError, "data path gone"), Back, Settings, new Fail("") },
        { "a rank's computation failed", Running, new Failure(FailureKind.Fatal, "shape mismatch"), Back, Settings, new Fail("") },
        { "state changed on storage", Running, new Failure(FailureKind.StateConflict, "etag"), Back, Settings, new Continue("") },
        { "anomaly: replicas before the skipped batches", Running with { ReplicaStep = 45 }, new Failure(FailureKind.Anomaly, "spike", RewindTo: 48, AtStep: 49), Back, Settings,
            new Restore(RecoverySource.Replicas, "") },
        { "anomaly: replicas after the damage, a checkpoint before it", Running, new Failure(FailureKind.Anomaly, "spike", RewindTo: 48, AtStep: 49), Back, Settings,
            new Restore(RecoverySource.Checkpoint, "") },
        { "anomaly: no recovery point at all, replay from the seed", Running with { ReplicaStep = null, CheckpointStep = null }, new Failure(FailureKind.Anomaly, "nan", RewindTo: 49, AtStep: 49), Back, Settings,
            new Restore(RecoverySource.Start, "") },
        { "anomaly met again after as many rollbacks as allowed", Running with { Anomalies = 3 }, new Failure(FailureKind.Anomaly, "spike", RewindTo: 48, AtStep: 49), Back, Settings,
            new Fail("") },
        { "review: shrunk job, GPUs free again", Running with { Dp = 1 }, null, Spare, Settings, new GrowBack(2, "") },
        { "review: shrunk job, nothing free", Running with { Dp = 1 }, null, OnlyFewer, Settings, new Continue("") },
        { "review: whole job", Running, null, Spare, Settings, new Continue("") },
        { "review: shrunk job without a checkpoint folder", Running with { Dp = 1, CanCheckpoint = false }, null, Spare, Settings, new Continue("") },
    };

    [Theory]
    [MemberData(nameof(Situations))]
    public void Situation_gets_its_decision(string situation, JobSnapshot job, Failure? failure, ClusterView cluster, RecoverySettings settings, RecoveryDecision expected)
    {
        var decision = RecoveryPolicy.Decide(job, failure, cluster, settings, Now);
        // Reasons are for people: compare the decision without them.
        Assert.True(expected with { Reason = "" } == decision with { Reason = "" }, $"{situation}: expected {expected}, got {decision}");
        Assert.False(string.IsNullOrWhiteSpace(decision.Reason), situation);
    }

    [Fact]
    public void A_failure_the_policy_gives_up_on_says_why()
    {
        var limit = RecoveryPolicy.Decide(Running with { RestoresWithoutProgress = 3 }, Reset, Back, Settings, Now);
        Assert.Contains("3 restores in a row without a committed step", limit.Reason);
        Assert.Contains(Reset.Message, limit.Reason);
        var nothing = RecoveryPolicy.Decide(Running with { ReplicaStep = null, CheckpointStep = null }, Reset, Back, Settings, Now);
        Assert.Contains("nothing to rebuild them from", nothing.Reason);
    }

    [Fact]
    public void The_wait_is_the_jobs_setting_or_the_servers()
    {
        var server = TimeSpan.FromMinutes(5);
        Assert.Equal(TimeSpan.FromSeconds(7.5), RecoverySettings.For(new RecoveryConfig { WaitSeconds = 7.5 }, server).Wait);
        Assert.Equal(server, RecoverySettings.For(new RecoveryConfig(), server).Wait);
        var pinned = RecoverySettings.For(new RecoveryConfig { Replace = false, Shrink = false, RestoreLimit = 9 }, server);
        Assert.Equal((false, false, 9), (pinned.Replace, pinned.Shrink, pinned.RestoreLimit));
    }

    [Fact]
    public void Waiting_ends_the_moment_the_wait_is_over()
    {
        var job = Running with { OutageSince = Now };
        Assert.IsType<Wait>(RecoveryPolicy.Decide(job, Lost, OnlyFewer, Settings, Now + Settings.Wait - TimeSpan.FromTicks(1)));
        Assert.IsType<Shrink>(RecoveryPolicy.Decide(job, Lost, OnlyFewer, Settings, Now + Settings.Wait));
    }
}

/// <summary>Straggler statistics: each rank's median compute time against the other ranks' median, reported once per incarnation.</summary>
public sealed class StragglerWatchTests
{
    private static IReadOnlyList<WorkerStepReport> Step(params double[] computeMs) =>
        computeMs.Select((ms, rank) => new WorkerStepReport(0, rank, rank == 0, 1, 1, 1, false, ms + 50, 50, 0)).ToList();

    [Fact]
    public void A_rank_slower_than_the_others_by_the_factor_over_the_window_is_a_straggler_once()
    {
        var config = new FlmCluster.Training.Config.RecoveryConfig { StragglerFactor = 1.5, StragglerWindow = 3, StragglerMinMs = 20 };
        var watch = new StragglerWatch();
        Assert.Empty(watch.Observe(1, Step(10, 10, 31, 10), config));
        Assert.Empty(watch.Observe(1, Step(10, 11, 31, 10), config)); // not a full window yet
        var found = Assert.Single(watch.Observe(1, Step(10, 10, 31, 9), config));
        Assert.Equal((2, 31.0, 10.0), found);
        Assert.Empty(watch.Observe(1, Step(10, 10, 31, 10), config)); // reported once
        Assert.Empty(watch.Observe(2, Step(10, 10, 31, 10), config)); // a new incarnation starts over
    }

    [Fact]
    public void With_two_ranks_the_slow_one_is_measured_against_the_other()
    {
        var config = new FlmCluster.Training.Config.RecoveryConfig { StragglerFactor = 2, StragglerWindow = 2 };
        var watch = new StragglerWatch();
        watch.Observe(1, Step(20, 410), config);
        Assert.Equal(1, Assert.Single(watch.Observe(1, Step(20, 410), config)).Rank);
        Assert.Empty(new StragglerWatch().Observe(1, Step(20, 30), config with { StragglerWindow = 1 }));
    }

    [Fact]
    public void At_hundreds_of_ranks_each_is_measured_against_the_exact_median_of_the_others()
    {
        var random = new Random(5);
        foreach (var ranks in new[] { 191, 192 })
        {
            var reports = Step(Enumerable.Range(0, ranks).Select(_ => Math.Round(random.NextDouble() * 100, 3)).ToArray());
            // What the watch measures: a report's time less its time in collectives.
            var compute = reports.Select(r => r.ElapsedMs - r.CommMs).ToArray();
            var found = new StragglerWatch().Observe(1, reports, new FlmCluster.Training.Config.RecoveryConfig { StragglerFactor = 1.0000001, StragglerWindow = 1, StragglerMinMs = 0 });
            Assert.NotEmpty(found);
            foreach (var (rank, median, typical) in found)
            {
                var others = compute.Where((_, r) => r != rank).Order().ToArray();
                var expected = others.Length % 2 == 1 ? others[others.Length / 2] : (others[others.Length / 2 - 1] + others[others.Length / 2]) / 2;
                Assert.Equal(compute[rank], median);
                Assert.Equal(expected, typical);
            }
        }
    }

    [Fact]
    public void Jitter_on_short_steps_is_not_a_straggler_however_large_the_ratio()
    {
        // 9 ms against 4 ms is 2.3×, but 5 ms of difference is scheduling noise, not a slow GPU.
        var config = new FlmCluster.Training.Config.RecoveryConfig { StragglerFactor = 2, StragglerWindow = 2 };
        var watch = new StragglerWatch();
        watch.Observe(1, Step(4, 9), config);
        Assert.Empty(watch.Observe(1, Step(4, 9), config));
        var strict = new StragglerWatch();
        strict.Observe(1, Step(4, 9), config with { StragglerMinMs = 0 });
        Assert.Equal(1, Assert.Single(strict.Observe(1, Step(4, 9), config with { StragglerMinMs = 0 })).Rank);
    }
}
