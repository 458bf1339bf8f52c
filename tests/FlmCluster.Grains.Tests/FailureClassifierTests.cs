using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Jobs;
using FlmCluster.Grains.Workers;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Jobs;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Runtime;
using Orleans.Serialization;
using Orleans.Storage;

namespace FlmCluster.Grains.Tests;

/// <summary>Failures are told apart by type, never by message: the classifier, root causes, the worker's translation, and the wire.</summary>
public sealed class FailureClassifierTests
{
    public static TheoryData<string, Exception, FailureKind> Failures => new()
    {
        { "silo declared dead mid-call", new SiloUnavailableException(), FailureKind.WorkerLost },
        { "message to a dead silo rejected", Rejection(), FailureKind.WorkerLost },
        { "placement refused: node gone", new WorkerLostException("n/gpu0", "no active silo"), FailureKind.WorkerLost },
        { "worker restarted without the job", new WorkerNotHoldingJobException("n/gpu0", "job", 3), FailureKind.WorkerReset },
        { "peer stopped sending", new PeerTimeoutException("n/gpu0", "waited 300 s"), FailureKind.WorkerLost },
        { "only echoes: a worker left by itself", new RankAbortedException("n/gpu0", "aborted"), FailureKind.WorkerLost },
        { "grain call timed out", new TimeoutException("response"), FailureKind.WorkerLost },
        { "grain call cancelled by the runtime", new OperationCanceledException(), FailureKind.WorkerLost },
        { "replica gone with its holders", new ReplicaUnavailableException(1, 50, "none"), FailureKind.ReplicaUnavailable },
        { "refused request", new ClusterRequestException("bad"), FailureKind.UserError },
        { "bad job", new FlmUserException("bad"), FailureKind.UserError },
        { "corrupt checkpoint", new InvalidCheckpointException("bad"), FailureKind.UserError },
        { "state changed on storage", new InconsistentStateException("etag"), FailureKind.StateConflict },
        { "rank's computation failed", new RankFailedException("n/gpu0", 2, "InvalidOperationException", "shape"), FailureKind.Fatal },
        { "anything unforeseen", new InvalidOperationException("?"), FailureKind.Fatal },
        { "wrapped", new AggregateException(new SiloUnavailableException()), FailureKind.WorkerLost },
    };

    /// <summary>What the runtime throws for a message to a silo it knows is dead (its constructor is internal).</summary>
    private static Exception Rejection() => (Exception)Activator.CreateInstance(typeof(OrleansMessageRejectionException),
        System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic, null, ["target silo is known to be dead"], null)!;

    [Theory]
    [MemberData(nameof(Failures))]
    public void Failure_is_classified_by_its_type(string what, Exception failure, FailureKind kind) =>
        Assert.True(FailureClassifier.Classify(failure).Kind == kind, what);

    [Fact]
    public void Messages_do_not_decide()
    {
        // The words recovery used to look for, in exceptions of other types, change nothing.
        Assert.Equal(FailureKind.UserError, FailureClassifier.Classify(new ClusterRequestException("No active silo for node 'x' became unavailable")).Kind);
        Assert.Equal(FailureKind.Fatal, FailureClassifier.Classify(new InvalidOperationException("worker does not hold job j; the worker left the job")).Kind);
        Assert.Equal(FailureKind.WorkerLost, FailureClassifier.Classify(new WorkerLostException("n/gpu0", "")).Kind);
    }

    [Fact]
    public void The_root_cause_is_not_an_echo_and_a_lost_worker_comes_first()
    {
        var echo = new RankAbortedException("a/gpu0", "aborted");
        var failed = new RankFailedException("a/gpu1", 1, "X", "x");
        var lost = new SiloUnavailableException();
        bool Lost(Exception e) => FailureClassifier.Classify(e).Kind is FailureKind.WorkerLost or FailureKind.WorkerReset;
        Assert.Same(lost, RootCause.Of([echo, failed, lost], FailureClassifier.IsEcho, Lost));
        Assert.Same(failed, RootCause.Of([echo, failed], FailureClassifier.IsEcho, Lost));
        Assert.Same(echo, RootCause.Of([echo], FailureClassifier.IsEcho, Lost));
    }

    [Fact]
    public void A_workers_failures_leave_it_typed()
    {
        Assert.IsType<RankAbortedException>(WorkerFailures.Translate(new Training.Parallel.CollectiveAbortedException("aborted"), "n/gpu0", 0));
        Assert.IsType<PeerTimeoutException>(WorkerFailures.Translate(new Training.Parallel.CollectiveTimeoutException("waited"), "n/gpu0", 0));
        // A send to a peer whose server died: the peer is lost, not this rank failed.
        var peerGone = Assert.IsType<PeerTimeoutException>(WorkerFailures.Translate(new SiloUnavailableException("target silo became unavailable"), "n/gpu0", 0));
        Assert.Equal(FailureKind.WorkerLost, FailureClassifier.Classify(peerGone).Kind);
        var cutOff = Assert.IsType<WorkerLostException>(WorkerFailures.Translate(new TaskCanceledException(), "n/gpu0", 0));
        Assert.Equal(FailureKind.WorkerLost, FailureClassifier.Classify(cutOff).Kind);
        Assert.IsType<ClusterRequestException>(WorkerFailures.Translate(new FlmUserException("data path gone"), "n/gpu0", 0));
        Assert.IsType<ClusterRequestException>(WorkerFailures.Translate(new InvalidCheckpointException("corrupt"), "n/gpu0", 0));
        var failed = Assert.IsType<RankFailedException>(WorkerFailures.Translate(new AggregateException(new ArgumentException("shape")), "n/gpu1", 3));
        Assert.Equal((3, "n/gpu1", "ArgumentException"), (failed.Rank, failed.Worker, failed.CauseType));
        // Sends to two peers that both left: an echo, not the rank's own failure.
        Assert.IsType<RankAbortedException>(WorkerFailures.Translate(
            new AggregateException(new RankAbortedException("n/gpu1", "left"), new RankAbortedException("n/gpu2", "left")), "n/gpu0", 0));
        Assert.IsType<PeerTimeoutException>(WorkerFailures.Translate(
            new AggregateException(new Training.Parallel.CollectiveAbortedException("left"), new Training.Parallel.CollectiveTimeoutException("waited")), "n/gpu0", 0));
        var lost = new WorkerNotHoldingJobException("n/gpu0", "j", 1);
        Assert.Same(lost, WorkerFailures.Translate(lost, "n/gpu0", 0));
    }

    [Fact]
    public void Typed_failures_keep_their_type_and_fields_over_the_wire()
    {
        using var services = new ServiceCollection().AddSerializer(b => b.AddAssembly(typeof(WorkerLostException).Assembly)).BuildServiceProvider();
        var serializer = services.GetRequiredService<Serializer>();
        T RoundTrip<T>(T value) where T : Exception => Assert.IsType<T>(serializer.Deserialize<Exception>(serializer.SerializeToArray<Exception>(value)));
        Assert.Equal("n/gpu0", RoundTrip(new WorkerLostException("n/gpu0", "gone")).Worker);
        var holding = RoundTrip(new WorkerNotHoldingJobException("n/gpu1", "job-1", 4));
        Assert.Equal(("n/gpu1", "job-1", 4), (holding.Worker, holding.JobId, holding.Incarnation));
        var failed = RoundTrip(new RankFailedException("n/gpu2", 5, "ArgumentException", "shape"));
        Assert.Equal((5, "ArgumentException"), (failed.Rank, failed.CauseType));
        Assert.Contains("shape", failed.Message);
        var replica = RoundTrip(new ReplicaUnavailableException(2, 40, "none"));
        Assert.Equal((2, 40L), (replica.Rank, replica.Step));
        Assert.Equal("n/gpu3", RoundTrip(new RankAbortedException("n/gpu3", "aborted")).Worker);
        Assert.Equal("n/gpu4", RoundTrip(new PeerTimeoutException("n/gpu4", "waited")).Worker);
        Assert.Equal("bad", RoundTrip(new ClusterRequestException("bad")).Message);
    }
}
