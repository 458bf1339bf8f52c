using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Jobs;
using FlmCluster.Grains.Scheduling;
using FlmCluster.Training.Jobs;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Serialization;
using Orleans.Storage;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// Persisted state reads back as it was written, through the grain storage serializer that Redis and file
/// storage use, with every part filled (collections built the ways the code builds them, collection expressions
/// included).
/// </summary>
public sealed class PersistedStateTests
{
    private static IGrainStorageSerializer Serializer()
    {
        var services = new ServiceCollection();
        services.AddSerializer(b => b.AddAssembly(typeof(JobState).Assembly).AddAssembly(typeof(AcceptedJob).Assembly));
        services.AddSingleton<OrleansJsonSerializer>();
        services.Configure<OrleansJsonSerializerOptions>(FlmSiloBuilderExtensions.ConfigureStateJson);
        services.AddSingleton<IGrainStorageSerializer, JsonGrainStorageSerializer>();
        return services.BuildServiceProvider().GetRequiredService<IGrainStorageSerializer>();
    }

    [Fact]
    public void A_coordinators_state_reads_back_whole()
    {
        var at = new JobCursor(50, 400, 49, 1, 30);
        var state = new JobState
        {
            Job = new AcceptedJob("tiny", new JobSubmission("{}", 3, "/ckpt/step-00000010", true), "tiny-1a2b3c4d", 2, 2, 1, 200, "cpu", new DateTime(2026, 12, 1, 12, 0, 0, DateTimeKind.Utc)),
            Phase = JobPhase.Waiting,
            Rebuild = Rebuild.FromReplicas(new ReplicaSource(45, [new List<string> { "node0/gpu0", "node1/gpu0" }], "{\"step\": 45}")),
            Incarnation = 7,
            Cursor = at,
            RankWorkers = ["node0/gpu0", "node0/gpu1", "node1/gpu0", "node1/gpu1"],
            FittedJobJson = "{\"name\": \"tiny\"}",
            Events = [new JobEvent(DateTime.UtcNow, "workers-lost", "gone")],
            Recent = [new StepPoint(49, 3.2, 1000, 12.5, 0.8, 0.1, 1e-3, 4096, false, "b")],
            Pending = new PendingCheckpoint(at, "/ckpt/step-00000050", "abc", DateTime.UtcNow),
            LastCheckpoint = new PendingCheckpoint(at with { NextStep = 40 }, "/ckpt/step-00000040", "abc", DateTime.UtcNow),
            LastReplica = ReplicaPoint.Of(at with { NextStep = 45 }, ["node0/gpu0", "node1/gpu0"], ["node1/gpu0", "node0/gpu0"], DateTime.UtcNow) with { ManifestJson = "{\"step\": 45}" },
            RestoresWithoutProgress = 2,
            Growth = new GrowthTransition(3.1, DateTime.UtcNow),
            GrowBackDp = 2,
            OutageSince = DateTimeOffset.UtcNow,
            OutageKind = FailureKind.WorkerLost,
            OutageReason = "node1 out of reach",
            RetryAt = DateTimeOffset.UtcNow.AddSeconds(1),
        };
        state.Time.Start(DateTimeOffset.UtcNow.AddSeconds(-10), TimeUse.Queued);
        state.Time.Spend(DateTimeOffset.UtcNow.AddSeconds(-9), TimeUse.Step);
        state.Time.RecordPoint(45);
        state.Time.BeginRecovery();
        state.Time.Spend(DateTimeOffset.UtcNow, TimeUse.Waiting, TimeUse.Detect);

        var serializer = Serializer();
        var back = serializer.Deserialize<JobState>(serializer.Serialize(state))!;

        Assert.Equal(serializer.Serialize(state).ToString(), serializer.Serialize(back).ToString());
        Assert.Equal(state.LastReplica!.Holders.Select(h => h.ToList()), back.LastReplica!.Holders.Select(h => h.ToList()));
        Assert.Equal(state.Cursor, back.Cursor);
        Assert.Equal(state.Time.Account(), back.Time.Account());
        Assert.Equal(state.Rebuild!.Replicas!.Step, back.Rebuild!.Replicas!.Step);
        Assert.Equal(state.Rebuild.Replicas.ManifestJson, back.Rebuild.Replicas!.ManifestJson);
        Assert.Equal(state.LastReplica.ManifestJson, back.LastReplica.ManifestJson);
        // Reading filled nothing shared: a new job still starts at step 0.
        Assert.Equal(new JobCursor(0, 0, 0, 0, 0), new JobState().Cursor);
    }

    [Fact]
    public void The_schedulers_state_reads_back_whole()
    {
        var state = new SchedulerState { NextSequence = 3 };
        state.Jobs["tiny-1a2b3c4d"] = new ScheduledJob
        {
            Job = new AcceptedJob("tiny", new JobSubmission("{}"), "tiny-1a2b3c4d", 2, 2, 1, 200, "cpu", DateTime.UtcNow),
            Sequence = 2,
            Phase = JobPhase.Running,
            RankWorkers = ["node0/gpu0", "node2/gpu1"],
        };
        var serializer = Serializer();
        var back = serializer.Deserialize<SchedulerState>(serializer.Serialize(state))!;
        Assert.Equal(serializer.Serialize(state).ToString(), serializer.Serialize(back).ToString());
    }
}
