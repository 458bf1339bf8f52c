using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Grains.Tests;

/// <summary>Checkpoints written by workers and committed by the coordinator; resharding resume; restore after workers lose their state.</summary>
[Collection("Cluster jobs")]
public sealed class CheckpointJobTests() : ClusterTestClass(2, 2, 0)
{
    private readonly string _checkpoints = Directory.CreateTempSubdirectory("flm-cluster-ckpt-").FullName;

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        Directory.Delete(_checkpoints, recursive: true);
    }

    private JobConfig Job(int dp, int tp, int pp, long steps, string dir, long interval) => TestClusters.MicroJob(dp, tp, pp, micro: 2, steps) with
    {
        Train = TestClusters.MicroJob(dp, tp, pp, 2, steps).Train with { Precision = "fp64" },
        Checkpoint = new CheckpointConfig { Dir = Path.Combine(_checkpoints, dir), Interval = interval, KeepLast = 10 },
    };

    private static List<double> LocalLosses(JobConfig job) => TestClusters.LocalLosses(job with { Checkpoint = new CheckpointConfig() });

    [Fact]
    public async Task A_cluster_checkpoint_resumes_in_another_layout_and_continues_the_same_training()
    {
        // 2/2/1 for 8 steps with a checkpoint every 4; then resume the checkpoint of step 4 under 1/2/2.
        var first = Job(2, 2, 1, steps: 8, "a", interval: 4);
        var id = await Scheduler.Submit(TestClusters.Submission(first));
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Completed, status.State);
        Assert.Equal(8, status.LastCheckpointStep);
        Assert.Equal([4L, 8L], CheckpointStore.List(first.Checkpoint.Dir).Where(e => e.Valid).Select(e => e.Step));
        Assert.Empty(CheckpointReader.Open(CheckpointStore.DirectoryFor(first.Checkpoint.Dir, 4)).Verify());

        var second = Job(1, 2, 2, steps: 8, "b", interval: 0);
        var resumeFrom = CheckpointStore.DirectoryFor(first.Checkpoint.Dir, 4);
        var id2 = await Scheduler.Submit(TestClusters.Submission(second) with { ResumeFrom = resumeFrom });
        var resumed = await TestClusters.WaitFor(Cluster.Client, id2, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Completed, resumed.State);
        Assert.Equal([4L, 5L, 6L, 7L], (await TestClusters.Steps(Cluster.Client, resumed.JobId)).Select(p => p.Step));
        Assert.Contains((await TestClusters.Events(Cluster.Client, resumed.JobId)), e => e.Kind == "restoring" && e.Message.Contains("saved under dp=2,tp=2,pp=1"));
        // The same training as one uninterrupted in-process run (fp64: layouts differ only by rounding).
        var expected = LocalLosses(second);
        Assert.Equal(expected, (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Loss), new Tolerance(1e-12));
        Assert.Equal(expected.Skip(4), (await TestClusters.Steps(Cluster.Client, resumed.JobId)).Select(p => p.Loss), new Tolerance(1e-12));
        Assert.Equal(8, resumed.LastCheckpointStep); // the final state, saved when the job ends
    }

    /// <summary>
    /// 11 steps in three stages: 2 → 4 heads (hidden 32 → 64) moving from one rank to dp=2,tp=2, then 2 → 4
    /// layers under tp=2,pp=2; GPUs for the widest stage (four).
    /// </summary>
    private (JobConfig Job, JobSubmission Submission) GrowthJob(string dir, long interval, long firstSteps = 4)
    {
        var job = JobValidator.Validate(TestClusters.MicroJob(1, 1, 1, 1, steps: 11) with
        {
            Model = TestClusters.MicroJob(1, 1, 1, 1, 11).Model with { Hidden = 32, Heads = 2 },
            Checkpoint = new CheckpointConfig { Dir = Path.Combine(_checkpoints, dir), Interval = interval, KeepLast = 10 },
            Stages =
            [
                new StageConfig { Name = "a", Steps = firstSteps },
                new StageConfig { Name = "b", Hidden = 64, Heads = 4, Ffn = 192, Steps = 4, MaskRampSteps = 2, Layout = new LayoutConfig { Dp = 2, Tp = 2 } },
                new StageConfig { Name = "c", Layers = 4, Steps = 3, MaskRampSteps = 3, Layout = new LayoutConfig { Tp = 2, Pp = 2, MicroBatches = 2 }, DepthPlacement = "interpolate" },
            ],
        });
        return (job, TestClusters.Submission(job));
    }

    /// <summary>Per-step losses and stage names of the in-process run of a job (growth from the gathered state there).</summary>
    private static List<(double Loss, string Stage)> LocalGrowthRun(JobConfig job)
    {
        var steps = new List<(double Loss, string Stage)>();
        using var run = TrainingRun.Create(job with { Checkpoint = new CheckpointConfig() });
        while (!run.Finished)
        {
            if (run.AtStageEnd)
                run.Grow();
            steps.Add((run.RunStep().Loss, run.Stage.Name));
        }
        return steps;
    }

    [Fact]
    public async Task A_growth_job_runs_its_stages_on_the_cluster_exactly_as_the_in_process_run_and_resumes_inside_a_ramp()
    {
        var (job, submission) = GrowthJob("growth", interval: 5);
        var id = await Scheduler.Submit(submission);
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, Describe(status));

        // Growth from the stage's checkpoint here, from the gathered state in process: the same numbers.
        var expected = LocalGrowthRun(job);
        Assert.Equal(expected.Select(e => e.Stage), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Stage));
        Assert.Equal(expected.Select(e => e.Loss), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Loss));

        // Each transition is reported with the loss of the next batch before and after: the function is kept.
        var growth = (await TestClusters.Events(Cluster.Client, status.JobId)).Where(e => e.Kind == "growth").ToList();
        Assert.Equal(2, growth.Count);
        foreach (var e in growth)
        {
            var m = System.Text.RegularExpressions.Regex.Match(e.Message, @"loss of the next batch (\S+) before, (\S+) after");
            Assert.True(m.Success, e.Message);
            var (before, after) = (double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), double.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
            Assert.True(Math.Abs(after - before) <= 1e-5 * before, e.Message);
        }
        Assert.Contains("layout dp=1,tp=1,pp=1,micro=1 → dp=2,tp=2,pp=1,micro=1", growth[0].Message);
        Assert.Contains("layout dp=2,tp=2,pp=1,micro=1 → dp=1,tp=2,pp=2,micro=2", growth[1].Message);

        // Checkpoints at both stage ends (stage 0 and 1), inside the second ramp (step 5) and at the end.
        var manifests = CheckpointStore.List(job.Checkpoint.Dir).Where(e => e.Valid).ToDictionary(e => e.Step, e => CheckpointReader.Open(e.Directory).Manifest);
        Assert.Equal([4L, 5L, 8L, 10L, 11L], manifests.Keys.Order());
        Assert.Equal([0, 1, 1, 2, 2], manifests.OrderBy(kv => kv.Key).Select(kv => kv.Value.Stage));
        Assert.Equal(0.5, manifests[5].MaskValue);
        Assert.NotNull(manifests[5].Growth);
        Assert.Equal(4, manifests[5].StageStartStep);

        // Resume inside the ramp of stage b: the same trajectory from there on.
        var elsewhere = job with { Checkpoint = job.Checkpoint with { Dir = Path.Combine(_checkpoints, "growth-resumed") } };
        var resumed = await Scheduler.Submit(submission with { JobJson = JobConfigLoader.ToJson(elsewhere), ResumeFrom = CheckpointStore.DirectoryFor(job.Checkpoint.Dir, 5) });
        var again = await TestClusters.WaitFor(Cluster.Client, resumed, s => s.State.IsFinal());
        Assert.True(again.State == JobPhase.Completed, Describe(again));
        Assert.Equal(Enumerable.Range(5, 6).Select(i => (long)i), (await TestClusters.Steps(Cluster.Client, again.JobId)).Select(p => p.Step));
        Assert.Equal(expected.Skip(5).Select(e => e.Loss), (await TestClusters.Steps(Cluster.Client, again.JobId)).Select(p => p.Loss));
    }

    [Fact]
    public async Task A_server_lost_before_a_growth_transition_holds_it_until_the_server_is_back_and_the_trajectory_is_unchanged()
    {
        // Stage a runs on one rank (Silo_0/gpu0); stage b needs both servers. Silo_1 dies during stage a, so the
        // transition is what finds it gone: the workers grow once it is back, from the stage's checkpoint.
        var (job, submission) = GrowthJob("growth-kill", interval: 3, firstSteps: 30);
        var id = await Scheduler.Submit(submission);
        await TestClusters.WaitFor(Cluster.Client, id, s => s.State == JobPhase.Running);
        await Cluster.KillSiloAsync(Cluster.Silos.Single(s => s.Name == "Silo_1"), TestContext.Current.CancellationToken);
        var waiting = await TestClusters.WaitFor(Cluster.Client, id, s => s.Events.Any(e => e.Kind == "workers-lost") || s.State.IsFinal());
        Assert.True((await TestClusters.Events(Cluster.Client, waiting.JobId)).Any(e => e.Kind == "growing") && waiting.Step == 30, Describe(waiting));
        await Cluster.StartSiloAsync(1, Cluster.Options, TestContext.Current.CancellationToken);
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, Describe(status));
        Assert.Equal(2, (await TestClusters.Events(Cluster.Client, status.JobId)).Count(e => e.Kind == "growth"));
        var expected = LocalGrowthRun(job);
        Assert.Equal(Enumerable.Range(0, expected.Count).Select(i => (long)i), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Step));
        // Restored on the same layout from the stage's checkpoint: bit for bit.
        Assert.Equal(expected.Select(e => e.Loss), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Loss));
    }

    private async Task Restart(params string[] names)
    {
        foreach (var name in names)
            await Cluster.StopSiloAsync(Cluster.Silos.Single(s => s.Name == name), TestContext.Current.CancellationToken);
        foreach (var name in names)
            await Cluster.StartSiloAsync(int.Parse(name[5..]), Cluster.Options, TestContext.Current.CancellationToken);
    }

    private static string Describe(JobStatus s) => $"{s.State}: {s.Error} | {string.Join(" | ", s.Events.TakeLast(8).Select(e => $"{e.Kind}: {e.Message}"))}";

    [Fact]
    public async Task When_workers_lose_their_state_the_job_restores_from_the_newest_checkpoint()
    {
        // In-memory replicas every step too, but both servers go down together: a rank and its peer are lost
        // at once, so the replicas cannot help and the checkpoint on disk must.
        var job = Job(2, 1, 2, steps: 40, "lost", interval: 5) with { Train = TestClusters.MicroJob(2, 1, 2, 2, 40).Train };
        job = job with { Checkpoint = job.Checkpoint with { MemoryInterval = 1 } };
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var coordinator = Cluster.Client.GetGrain<IJobCoordinatorGrain>(id);
        // Stop the job where the replicas are the newer recovery point, so that they are tried first.
        while (true)
        {
            await TestClusters.WaitFor(Cluster.Client, id, s => s.State == JobPhase.Running && s.LastCheckpointStep >= 10 && s.LastReplicaStep >= s.LastCheckpointStep);
            await coordinator.Pause();
            var paused = await coordinator.GetStatus();
            if (paused.LastReplicaStep >= paused.LastCheckpointStep)
                break;
            await coordinator.Resume();
        }
        await Restart("Silo_0", "Silo_1");
        await coordinator.Resume();
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, Describe(status));
        Assert.Contains((await TestClusters.Events(Cluster.Client, status.JobId)), e => e.Kind == "workers-lost");
        Assert.Equal(2, status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        Assert.True((await TestClusters.Events(Cluster.Client, status.JobId)).Any(e => e.Kind == "replica-unavailable"), string.Join("\n", (await TestClusters.Events(Cluster.Client, status.JobId)).Select(e => $"{e.Kind}: {e.Message}")));
        Assert.Contains((await TestClusters.Events(Cluster.Client, status.JobId)), e => e.Kind == "restoring" && e.Message.Contains("step-000000"));
        // Steps after the checkpoint are redone with the same samples, in the same layout: the trajectory is an
        // uninterrupted run's, bit for bit.
        Assert.Equal(Enumerable.Range(0, 40).Select(i => (long)i), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Step));
        Assert.Equal(LocalLosses(job), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Loss));
    }

    [Fact]
    public async Task A_restarted_server_gets_its_ranks_back_from_the_in_memory_replicas_of_their_peers()
    {
        // Four ranks on two servers, an in-memory snapshot every 2 steps and no checkpoint on disk at all.
        var job = TestClusters.MicroJob(2, 1, 2, 2, 40) with { Checkpoint = new CheckpointConfig { MemoryInterval = 2 } };
        var wall = System.Diagnostics.Stopwatch.StartNew();
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var before = await TestClusters.WaitFor(Cluster.Client, id, s => s.LastReplicaStep >= 10);
        Assert.Equal(2, before.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        Assert.Contains((await TestClusters.Events(Cluster.Client, before.JobId)), e => e.Kind == "replica" && e.Message.Contains("kept by a peer on another server"));
        await Restart("Silo_1");
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, Describe(status));
        Assert.Contains((await TestClusters.Events(Cluster.Client, status.JobId)), e => e.Kind == "workers-lost");
        Assert.Contains((await TestClusters.Events(Cluster.Client, status.JobId)), e => e.Kind == "restoring" && e.Message.Contains("from the in-memory replicas of step"));
        Assert.DoesNotContain((await TestClusters.Events(Cluster.Client, status.JobId)), e => e.Kind is "replica-unavailable" or "replica-failed");
        // The restored ranks are the ranks that were lost, bit for bit: the trajectory is an uninterrupted run's.
        Assert.Equal(Enumerable.Range(0, 40).Select(i => (long)i), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Step));
        Assert.Equal(LocalLosses(job), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Loss));

        // Every second of the job is accounted once: the components add up to its wall time, from submission to
        // the completed event (within 1 %), and to no more than the client saw around it.
        var time = status.Time!;
        var jobWall = (status.Events.Single(e => e.Kind == "completed").At - status.SubmittedAt).TotalSeconds;
        Assert.True(Math.Abs(jobWall - time.Accounted) <= 0.01 * jobWall, $"accounted {time.Accounted:0.000} s of {jobWall:0.000} s: {time}");
        Assert.True(time.Accounted <= wall.Elapsed.TotalSeconds, $"accounted {time.Accounted:0.000} s, the client saw {wall.Elapsed.TotalSeconds:0.000} s");
        Assert.Equal(1, time.Recovery.Count);
        Assert.True(time.Productive > 0 && time.Recovery.Detect > 0 && time.Recovery.Rebuild > 0 && time.Recovery.FirstStep > 0, $"{time}");
        Assert.True(time.Ettr is > 0 and < 1, $"{time}");
        var recovered = Assert.Single(status.Events, e => e.Kind == "recovered");
        Assert.Matches(@"in \d+\.\d s: detect \d+\.\d s, decide \d+\.\d s, allocate \d+\.\d s, rebuild \d+\.\d s, restore \d+\.\d s, first step \d+\.\d s, waiting \d+\.\d s", recovered.Message);
    }

    [Fact]
    public async Task Checkpoint_on_demand_needs_a_checkpoint_folder()
    {
        var job = TestClusters.MicroJob(1, 1, 1, 1, steps: 2000);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        await TestClusters.WaitFor(Cluster.Client, id, s => s.State == JobPhase.Running);
        var ex = await Assert.ThrowsAsync<ClusterRequestException>(() => Cluster.Client.GetGrain<IJobCoordinatorGrain>(id).SaveCheckpoint());
        Assert.Contains("has no checkpoint.dir", ex.Message);
        await Scheduler.Cancel(id);

        var withDir = Job(1, 1, 1, steps: 2000, "demand", interval: 0);
        var id2 = await Scheduler.Submit(TestClusters.Submission(withDir));
        await TestClusters.WaitFor(Cluster.Client, id2, s => s.State == JobPhase.Running && s.Step > 2);
        await Cluster.Client.GetGrain<IJobCoordinatorGrain>(id2).SaveCheckpoint();
        var saved = await TestClusters.WaitFor(Cluster.Client, id2, s => s.LastCheckpointStep is not null);
        Assert.Single(CheckpointStore.List(withDir.Checkpoint.Dir), e => e.Valid && e.Step == saved.LastCheckpointStep);
        await Scheduler.Cancel(id2);
    }
}
