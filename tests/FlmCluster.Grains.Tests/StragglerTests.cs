using System.Collections.Concurrent;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using Microsoft.Extensions.DependencyInjection;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// A slow GPU and a hung one, on three one-GPU servers (a dp=2 job and a spare): a straggler is reported and, when
/// the job asks, replaced; a device that does not come back from its work is abandoned, its GPU taken out of
/// service, and its rank rebuilt on the spare from the in-memory replicas. The trajectory stays the clean one.
/// </summary>
[Collection("Cluster jobs")]
public sealed class StragglerTests() : ClusterTestClass(TimeSpan.FromSeconds(30), silo => silo.Services.AddSingleton<IStepFaults>(Faults), 1, 1, 1, 0)
{
    /// <summary>Per job name: what happens on which worker, or on whichever holds a rank (slow steps, or a hang at a step).</summary>
    private static readonly ConcurrentDictionary<string, (string? Worker, int Rank, long FromStep, TimeSpan Sleep, bool Hang)> Planned = new();

    /// <summary>Holds hung devices until the test ends (their threads cannot be interrupted).</summary>
    private static readonly ManualResetEventSlim Release = new(false);

    private static readonly SlowOrHungDevices Faults = new();

    private sealed class SlowOrHungDevices : IStepFaults
    {
        private readonly ConcurrentDictionary<string, bool> _hung = new();

        public void BeforeUpdate(string worker, string jobId, int rank, StepPlan plan, RankTrainer trainer)
        {
            if (!Planned.TryGetValue(trainer.Job.Name, out var fault) || (fault.Worker ?? worker) != worker || fault.Rank != rank || plan.Step < fault.FromStep)
                return;
            if (!fault.Hang)
                Thread.Sleep(fault.Sleep);
            else if (_hung.TryAdd(jobId, true))
                Release.Wait();
        }
    }

    public override async ValueTask DisposeAsync()
    {
        Release.Set();
        await base.DisposeAsync();
    }

    private static JobConfig Job(string name, RecoveryConfig recovery) => TestClusters.MicroJob(2, 1, 1, 1, 30) with
    {
        Name = name,
        Checkpoint = new CheckpointConfig { MemoryInterval = 1 },
        Recovery = recovery,
    };

    private static List<double> Clean(JobConfig job)
    {
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job with { Checkpoint = new CheckpointConfig() }, data);
        return Enumerable.Range(0, (int)job.Train.Steps).Select(_ => engine.RunStep().Loss).ToList();
    }

    private static string Events(JobStatus s) => string.Join("\n", s.Events.Select(e => $"{e.Kind}: {e.Message}"));

    [Fact]
    public async Task A_straggler_is_reported_and_replaced_on_a_spare_gpu()
    {
        var job = Job("slow", new RecoveryConfig { StragglerFactor = 2, StragglerWindow = 4, ReplaceStragglers = true });
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var running = await TestClusters.WaitFor(Cluster.Client, id, s => s.Step >= 2 || s.State.IsFinal());
        var slow = running.Workers[1];
        Planned["slow"] = (slow, 1, 0, TimeSpan.FromMilliseconds(400), false);
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}\n{Events(status)}");
        var straggler = status.Events.SingleOrDefault(e => e.Kind == "straggler");
        Assert.True(straggler is not null, Events(status) + "\n" + string.Join(", ", status.Recent.Select(p => $"{p.Step}:{p.StepMs:0}")));
        Assert.Contains($"rank 1 on {slow} computes", straggler!.Message);
        Assert.True(status.Events.Any(e => e.Kind == "replaced" && e.Message.Contains("2 GPUs, layout dp=2,tp=1,pp=1,micro=1 → 2 GPUs, layout dp=2,tp=1,pp=1,micro=1")), Events(status));
        Assert.DoesNotContain(slow, status.Workers);
        var gpu = (await Scheduler.GetInventory()).Nodes.SelectMany(n => n.Gpus).Single(g => g.Worker == slow);
        Assert.Contains("out of service: straggler", gpu.Device);
        Assert.Equal(Enumerable.Range(0, 30).Select(i => (long)i), status.Recent.Select(p => p.Step));
        Assert.Equal(Clean(job), status.Recent.Select(p => p.Loss));
    }

    [Fact]
    public async Task A_hung_device_is_abandoned_and_its_rank_rebuilt_on_a_spare_gpu()
    {
        var job = Job("hang", new RecoveryConfig { HangMinSeconds = 2, HangFactor = 2, StragglerFactor = 0 });
        Release.Reset(); // an earlier test's end released hung devices
        // Planned before the job starts (its steps take milliseconds): rank 1's device hangs at step 6, once.
        Planned["hang"] = (null, 1, 6, TimeSpan.Zero, true);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var running = await TestClusters.WaitFor(Cluster.Client, id, s => s.Step >= 2 || s.State.IsFinal());
        var hung = running.Workers[1];
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal(), TimeSpan.FromMinutes(3));
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}\n{Events(status)}");
        Assert.Contains(status.Events, e => e.Kind == "workers-lost" && e.Message.Contains($"the device of {hung} did not come back"));
        Assert.Contains(status.Events, e => e.Kind == "replaced" && e.Message.Contains("from the in-memory replicas"));
        Assert.DoesNotContain(hung, status.Workers);
        var worker = await Cluster.Client.GetGrain<IGpuWorkerGrain>(hung).GetStatus();
        Assert.Equal(WorkerState.Failed, worker.State);
        Assert.Equal(Enumerable.Range(0, 30).Select(i => (long)i), status.Recent.Select(p => p.Step));
        Assert.Equal(Clean(job), status.Recent.Select(p => p.Loss));
    }
}
