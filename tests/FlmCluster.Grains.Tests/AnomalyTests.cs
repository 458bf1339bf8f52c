using System.Collections.Concurrent;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;
using Microsoft.Extensions.DependencyInjection;
using static TorchSharp.torch;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// A step whose result must not be kept — a non-finite gradient, a loss spike — rolls the job back to a recovery
/// point before it and skips its data; every other sample is trained exactly once, and the trajectory is that of
/// a clean run that skips the same samples.
/// </summary>
[Collection("Cluster jobs")]
public sealed class AnomalyTests() : ClusterTestClass(TimeSpan.FromSeconds(30), silo => silo.Services.AddSingleton<IStepFaults>(Faults), 2, 2, 0)
{
    /// <summary>What to do to a job's ranks at a step: once (a replay of the step is clean), or at every pass.</summary>
    private static readonly ConcurrentDictionary<(string JobName, long Step), (Action<RankTrainer> Fault, bool EveryPass)> Planned = new();

    private static readonly StepFaults Faults = new();

    private sealed class StepFaults : IStepFaults
    {
        private readonly ConcurrentDictionary<(string Job, long Step, int Rank), bool> _done = new();

        public void BeforeUpdate(string worker, string jobId, int rank, StepPlan plan, RankTrainer trainer)
        {
            if (Planned.TryGetValue((trainer.Job.Name, plan.Step), out var planned) && (planned.EveryPass || _done.TryAdd((jobId, plan.Step, rank), true)))
                planned.Fault(trainer);
        }
    }

    private readonly string _dir = Directory.CreateTempSubdirectory("flm-anomaly-").FullName;

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        Directory.Delete(_dir, recursive: true);
    }

    private JobConfig Job(string name, long steps, RecoveryConfig recovery) => TestClusters.MicroJob(2, 1, 1, 1, steps) with
    {
        Name = name,
        Checkpoint = new CheckpointConfig { Dir = Path.Combine(_dir, name), Interval = 4, KeepLast = 10 },
        Recovery = recovery,
        Optimizer = TestClusters.MicroJob(2, 1, 1, 1, steps).Optimizer with { ClipGrad = 0 },
    };

    /// <summary>The losses of a clean in-process run that skips <paramref name="skipped"/> batches when it reaches step <paramref name="at"/>.</summary>
    private static List<double> Clean(JobConfig job, long at, int skipped)
    {
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job with { Checkpoint = new CheckpointConfig() }, data);
        var losses = new List<double>();
        while (engine.NextStep < job.Train.Steps)
        {
            if (engine.NextStep == at)
                engine.SetCursor(engine.Cursor with { SamplesConsumed = engine.Cursor.SamplesConsumed + skipped * job.Train.GlobalBatch });
            losses.Add(engine.RunStep().Loss);
        }
        return losses;
    }

    /// <summary>Every global sample up to the job's cursor is trained once or skipped once, never both, never twice.</summary>
    private static void AssertSamplesOnce(JobStatus status, int batch)
    {
        var windows = status.Recent.Select(p => (p.FirstSample, batch)).Concat(status.SkippedData!.Select(w => (w.FirstSample, w.Samples))).OrderBy(w => w.FirstSample).ToList();
        long next = 0;
        foreach (var (first, samples) in windows)
        {
            Assert.Equal(next, first);
            next = first + samples;
        }
    }

    [Fact]
    public async Task A_non_finite_gradient_rolls_back_and_skips_its_batch()
    {
        var job = Job("nan", 14, new RecoveryConfig());
        Planned[("nan", 6)] = (trainer => trainer.Flat.Grads.fill_(double.NaN), false);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}");
        var anomaly = Assert.Single(status.Events, e => e.Kind == "anomaly");
        Assert.Contains("non-finite gradient norm at step 6", anomaly.Message);
        Assert.Contains(status.Events, e => e.Kind == "rolled-back" && e.Message.Contains("step-00000004"));
        var skipped = Assert.Single(status.SkippedData!);
        Assert.Equal((6L, 6L * 8, 8), (skipped.Step, skipped.FirstSample, skipped.Samples));
        Assert.Equal(Enumerable.Range(0, 14).Select(i => (long)i), status.Recent.Select(p => p.Step));
        AssertSamplesOnce(status, 8);
        // The same layout replayed from the checkpoint: bit for bit the clean run that skips the batch.
        Assert.Equal(Clean(job, 6, 1), status.Recent.Select(p => p.Loss));
        Assert.True(status.Time!.Redone > 0);
    }

    [Fact]
    public async Task A_loss_spike_rolls_back_before_the_batch_that_caused_it_and_skips_both()
    {
        var job = Job("spike", 16, new RecoveryConfig { SpikeRatio = 2, SpikeWindow = 4, SpikeSkip = 2 });
        // Step 8's update wrecks the weights (×3): step 9's loss spikes.
        Planned[("spike", 8)] = (trainer => trainer.Optimizer.Master.mul_(3.0), false);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}");
        Assert.Contains(status.Events, e => e.Kind == "anomaly" && e.Message.Contains("loss spike at step 9"));
        Assert.Equal([(8L, 64L), (9L, 72L)], status.SkippedData!.Select(w => (w.Step, w.FirstSample)));
        Assert.Contains(status.Events, e => e.Kind == "rolled-back" && e.Message.Contains("step-00000008"));
        Assert.Equal(Enumerable.Range(0, 16).Select(i => (long)i), status.Recent.Select(p => p.Step));
        AssertSamplesOnce(status, 8);
        Assert.Equal(Clean(job, 8, 2), status.Recent.Select(p => p.Loss));
    }

    [Fact]
    public async Task A_spike_that_every_rollback_meets_again_fails_the_job_with_the_evidence()
    {
        // The weights are wrecked at every pass through step 6 (as a bad batch the rollback does not skip would):
        // step 7 spikes whatever batch it reads.
        var job = Job("again", 14, new RecoveryConfig { SpikeRatio = 1.5, SpikeWindow = 4, SpikeSkip = 1, SpikeLimit = 2 });
        Planned[("again", 6)] = (trainer => trainer.Optimizer.Master.mul_(3.0), true);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Failed, string.Join("\n", status.Events.Select(e => $"{e.Kind}: {e.Message}")) + "\n" + string.Join(", ", status.Recent.Select(p => $"{p.Step}:{p.Loss:0.000}")));
        Assert.Contains("loss spike at step 7", status.Error);
        Assert.Contains("2 rollbacks did not get past step 7", status.Error);
        Assert.Equal(3, status.Events.Count(e => e.Kind == "anomaly"));
        Assert.Contains("recovery.spike_limit", status.Error);
    }
}
