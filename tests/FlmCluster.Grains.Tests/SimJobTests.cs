using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Sim;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Sim;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// Jobs on simulated GPUs (<c>sim:8</c> servers): the real coordinator, scheduler and workers, with the work of
/// each rank modelled on a virtual clock. Three servers of eight: a 16-GPU job leaves one server spare.
/// </summary>
[Collection("Cluster jobs")]
public sealed class SimJobTests : IAsyncLifetime
{
    private readonly FlmSimulation _sim = new(SimCluster.Default, new VirtualClock(), new SampleLedger());
    private readonly string _checkpoints = Directory.CreateTempSubdirectory("flm-sim-").FullName;
    private InProcessTestCluster _cluster = null!;
    private string _storage = "";

    private IClusterSchedulerGrain Scheduler => _cluster.Client.GetGrain<IClusterSchedulerGrain>("cluster");

    public async ValueTask InitializeAsync() => (_cluster, _storage) = await TestClusters.Start(TimeSpan.FromMinutes(5), null, _sim, 8, 8, 8);

    public async ValueTask DisposeAsync()
    {
        await TestClusters.Stop(_cluster, _storage);
        _sim.Clock.Dispose();
        Directory.Delete(_checkpoints, recursive: true);
    }

    /// <summary>FLM-101B's 16B shape on 16 simulated GPUs (tp=2, dp=8, a micro-batch of one sequence).</summary>
    private JobConfig Job16b(long steps) => JobValidator.Validate(new JobConfig
    {
        Name = "sim-16b",
        Model = Presets.Model16B,
        Train = new TrainConfig { Steps = steps, GlobalBatch = 192, Precision = "bf16", Device = JobValidator.SimDevice },
        Optimizer = new OptimizerConfig { Lr = 4e-4, MinLr = 4e-5, WarmupSteps = 5 },
        Layout = new LayoutConfig { Dp = 8, Tp = 2, Pp = 1, MicroBatches = 24 },
        Checkpoint = new CheckpointConfig { Dir = _checkpoints, Interval = 10, MemoryInterval = 5 },
    });

    [Fact]
    public async Task A_job_on_simulated_gpus_runs_every_step_on_modelled_time_and_commits_real_checkpoints()
    {
        const int steps = 30;
        var job = Job16b(steps);
        var stepSeconds = StepCostModel.For(job.Model, ParallelLayout.FromConfig(job.Layout), job.Train.GlobalBatch, "bf16", _sim.Cluster).Seconds;
        var watch = Stopwatch.StartNew();
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => s.State.IsFinal());
        var real = watch.Elapsed.TotalSeconds;
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}");

        // Every step took its modelled time on the job's clock, plus the real time of the control plane (at most all of this test's).
        var time = status.Time!;
        Assert.InRange(time.Productive, steps * stepSeconds, steps * stepSeconds + real);
        Assert.All(status.Recent, p => Assert.True(p.StepMs >= stepSeconds * 1000, $"step {p.Step}: {p.StepMs} ms"));
        Assert.True(_sim.Clock.Modelled.TotalSeconds >= steps * stepSeconds);
        AssertAccountsForTheWallTime(status);

        // Checkpoints went through the real commit protocol: a manifest over one small shard per rank, no tensors.
        var committed = CheckpointStore.List(_checkpoints, verifyChecksums: true);
        Assert.Equal([10L, 20, 30], committed.Select(c => c.Step));
        Assert.All(committed, c => Assert.True(c.Valid, c.Problem));
        var manifest = CheckpointReader.Open(CheckpointStore.DirectoryFor(_checkpoints, steps)).Manifest;
        Assert.Equal(Enumerable.Range(0, 16).Select(r => $"shard-{r:D5}.sim.json"), manifest.Shards.Select(s => s.File));
        Assert.Empty(manifest.Tensors);
        Assert.Equal((long)steps * 192, manifest.SamplesConsumed);
        // A real engine refuses it: it holds no parameters.
        Assert.Throws<InvalidCheckpointException>(() => new JobProgress(ResolvedJob.Resolve(job with { Train = job.Train with { Device = "cpu" } }))
            .CheckResume(CheckpointReader.Open(CheckpointStore.DirectoryFor(_checkpoints, 20))));

        AssertEverySampleOnce(id, steps, 192);
    }

    [Fact]
    public async Task A_lost_server_s_ranks_are_rebuilt_on_the_spare_from_their_replicas_and_every_sample_trains_once()
    {
        const int steps = 400;
        var id = await Scheduler.Submit(TestClusters.Submission(Job16b(steps)));
        var running = await TestClusters.WaitFor(_cluster.Client, id, s => s.LastReplicaStep >= 10 || s.State.IsFinal());
        var lost = running.Workers[0][..running.Workers[0].IndexOf('/')];
        await _cluster.KillSiloAsync(_cluster.Silos.Single(s => s.Name == lost), TestContext.Current.CancellationToken);
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => s.State.IsFinal(), TimeSpan.FromMinutes(5));
        string Events() => string.Join("\n", status.Events.Select(e => $"{e.Kind}: {e.Message}"));
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}\n{Events()}");
        Assert.Contains(status.Events, e => e.Kind == "replaced");
        Assert.DoesNotContain(status.Workers, w => w.StartsWith(lost + "/", StringComparison.Ordinal));
        var time = status.Time!;
        Assert.Equal(1, time.Recovery.Count);
        Assert.True(time.Recovery.Restore > 0, Events()); // the replicas' modelled load
        AssertAccountsForTheWallTime(status);
        AssertEverySampleOnce(id, steps, 192);
    }

    /// <summary>
    /// A growth job whose stages fit fewer GPUs differently: on 16 of its 24 GPUs stage a (batch 36, tp 2) uses only 12
    /// and stage b (tp 4 × pp 2) all 16, so the fitted job's widest stage has another tp × pp than the submitted one's.
    /// Its size must be compared in the scheduler's units, or the job "grows back" to the GPUs it holds, over and over.
    /// </summary>
    [Fact]
    public async Task A_growth_job_shrunk_onto_fewer_gpus_stays_there_while_no_more_are_free()
    {
        var micro = TestClusters.MicroJob(1, 1, 1, 1, 10);
        var job = JobValidator.Validate(micro with
        {
            Name = "sim-shrink",
            Layout = new LayoutConfig { Dp = 12, Tp = 2, Pp = 1, MicroBatches = 1 },
            Train = micro.Train with { Precision = "bf16", Device = JobValidator.SimDevice, GlobalBatch = 36 },
            Checkpoint = new CheckpointConfig { Dir = _checkpoints, Interval = 5, MemoryInterval = 2 },
            Recovery = new RecoveryConfig { WaitSeconds = 1 },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 30 },
                new StageConfig { Name = "b", Hidden = 128, Heads = 8, Steps = 10, MaskRampSteps = 3, GlobalBatch = 24, Layout = new LayoutConfig { Dp = 3, Tp = 4, Pp = 2, MicroBatches = 2 } },
            ],
        });
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var running = await TestClusters.WaitFor(_cluster.Client, id, s => s.LastReplicaStep >= 4 || s.State.IsFinal());
        var lost = running.Workers[^1][..running.Workers[^1].IndexOf('/')];
        await _cluster.KillSiloAsync(_cluster.Silos.Single(s => s.Name == lost), TestContext.Current.CancellationToken);
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => s.State.IsFinal(), TimeSpan.FromMinutes(3));
        var events = await TestClusters.Events(_cluster.Client, id);
        string Events() => string.Join("\n", events.Select(e => $"{e.Kind}: {e.Message}"));
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}\n{Events()}");
        Assert.Contains(events, e => e.Kind == "shrunk" && e.Message.Contains("24 GPUs, layout dp=12,tp=2,pp=1") && e.Message.Contains("→ 16 GPUs, layout dp=6,tp=2,pp=1"));
        Assert.DoesNotContain(events, e => e.Kind is "growing-back" or "grown-back");
        Assert.Equal(1, status.Time!.Recovery.Count);
        AssertEverySampleOnce(id, 40, [.. Enumerable.Repeat(36, 30), .. Enumerable.Repeat(24, 10)]);
    }

    [Fact]
    public async Task A_coordinator_whose_silo_dies_resumes_once_membership_declares_it_dead_with_no_call_from_anyone()
    {
        var started = Stopwatch.StartNew();
        var id = await Scheduler.Submit(TestClusters.Submission(Job16b(2000)));
        var running = await TestClusters.WaitFor(_cluster.Client, id, s => s.State == JobPhase.Running && s.Step >= 5 || s.State.IsFinal());
        Assert.Equal(JobPhase.Running, running.State);
        var port = int.Parse(running.Coordinator!.Split(':')[1]);
        var host = _cluster.Silos.Single(s => s.SiloAddress.Endpoint.Port == port);
        await _cluster.KillSiloAsync(host, TestContext.Current.CancellationToken);

        // From here on nobody calls the job: its events are read from the history store of a silo that is still up.
        var history = _cluster.Silos.First(s => s != host).ServiceProvider.GetRequiredService<FlmCluster.Grains.History.IJobHistoryStore>();
        JobEvent? resumed = null;
        while (resumed is null && started.Elapsed < TimeSpan.FromSeconds(55))
        {
            resumed = (await history.Read(id, long.MaxValue, 0, JobHistory.MaxPage)).Events.FirstOrDefault(e => e.Kind == "resumed");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        // The coordinator's reminder first fires a minute after the job started: a resume before that was the
        // dead-silo watch's doing.
        Assert.True(resumed is not null, $"the job did not resume within {started.Elapsed.TotalSeconds:0} s of its start, with its coordinator's silo dead");
        Assert.Contains("continuing from committed step", resumed.Message);
        await Scheduler.Cancel(id);
    }

    [Fact]
    public async Task A_growth_schedule_on_simulated_gpus_changes_shape_and_layout_twice_and_trains_every_sample_once()
    {
        // Three stages of a small model, each in a layout of its own on 16 of the 24 simulated GPUs.
        var micro = TestClusters.MicroJob(8, 2, 1, 1, 10);
        var job = JobValidator.Validate(micro with
        {
            Name = "sim-growth",
            Train = micro.Train with { Precision = "bf16", Device = JobValidator.SimDevice },
            Checkpoint = new CheckpointConfig { Dir = _checkpoints, Interval = 5, MemoryInterval = 2 },
            Stages =
            [
                new StageConfig { Name = "a", Steps = 10 },
                new StageConfig { Name = "b", Hidden = 128, Heads = 8, Steps = 10, MaskRampSteps = 3, Layout = new LayoutConfig { Dp = 2, Tp = 4, Pp = 2, MicroBatches = 4 } },
                new StageConfig { Name = "c", Layers = 4, Steps = 10, MaskRampSteps = 3, Layout = new LayoutConfig { Dp = 1, Tp = 4, Pp = 4, MicroBatches = 8 } },
            ],
        });
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => s.State.IsFinal());
        var events = await TestClusters.Events(_cluster.Client, id);
        string Events() => string.Join("\n", events.Select(e => $"{e.Kind}: {e.Message}"));
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}\n{Events()}");

        var growth = events.Where(e => e.Kind == "growth").Select(e => e.Message).ToList();
        Assert.Equal(2, growth.Count);
        Assert.StartsWith("a → b at step 10:", growth[0]);
        Assert.Contains("layout dp=8,tp=2,pp=1,micro=1 → dp=2,tp=4,pp=2,micro=4", growth[0]);
        Assert.StartsWith("b → c at step 20:", growth[1]);
        Assert.Contains("layout dp=2,tp=4,pp=2,micro=4 → dp=1,tp=4,pp=4,micro=8", growth[1]);
        Assert.Equal(["a", "b", "c"], (await TestClusters.Steps(_cluster.Client, id)).Select(p => p.Stage).Distinct());
        Assert.True(status.Time!.Growth > 0, Events()); // the modelled checkpoint, load and evaluations of each transition
        AssertAccountsForTheWallTime(status);
        AssertEverySampleOnce(id, 30, 8);
    }

    [Fact]
    public async Task A_layout_whose_state_does_not_fit_a_gpu_fails_like_a_real_one()
    {
        // 101B on 16 GPUs without data parallelism: the optimizer state is not sharded and needs 76 GB per GPU.
        var job = JobValidator.Validate(new JobConfig
        {
            Name = "sim-101b-oom",
            Model = Presets.Model101B,
            Train = new TrainConfig { Steps = 5, GlobalBatch = 16, Precision = "bf16", Device = JobValidator.SimDevice },
            Layout = new LayoutConfig { Dp = 1, Tp = 4, Pp = 4, MicroBatches = 16 },
        });
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Failed, status.State);
        Assert.Contains("out of memory", status.Error);
        Assert.Contains("dgx-a800", status.Error);
    }

    /// <summary>
    /// The time account's components add up to the job's time from submission to completion on its clock. The
    /// completion event is stamped a few microseconds after the account's last mark, hence the 10 ms allowance.
    /// </summary>
    private static void AssertAccountsForTheWallTime(JobStatus status)
    {
        var wall = (status.Events.Last(e => e.Kind == "completed").At - status.SubmittedAt).TotalSeconds;
        Assert.InRange(status.Time!.Accounted, wall - 0.01, wall);
    }

    /// <summary>The steps the job kept trained samples 0 … steps × batch − 1, each exactly once, split over all replicas.</summary>
    private void AssertEverySampleOnce(string job, int steps, int batch) => AssertEverySampleOnce(job, steps, [.. Enumerable.Repeat(batch, steps)]);

    /// <summary>Step i trained batches[i] samples, right after step i − 1's, each split over all its replicas.</summary>
    private void AssertEverySampleOnce(string job, int steps, IReadOnlyList<int> batches)
    {
        var ledger = _sim.Samples!.Of(job);
        Assert.Equal(Enumerable.Range(0, steps).Select(s => (long)s), ledger.Keys.Order());
        var first = 0L;
        for (var step = 0; step < steps; step++)
        {
            var s = ledger[step];
            Assert.Equal(s.DataParallel, s.Replicas);
            Assert.Equal(first, s.First);
            Assert.Equal(s.First + batches[step], s.End);
            Assert.Equal(batches[step], s.Samples);
            first = s.End;
        }
    }
}
