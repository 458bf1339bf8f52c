using Orleans.Concurrency;

namespace FlmCluster.Grains.Abstractions;

// Methods clients may call carry [ClientAccess] with the least role; the rest are internal to the cluster.

/// <summary>One GPU of one server (key "node/gpuK"). Holds one rank of one job; no durable state.</summary>
public interface IGpuWorkerGrain : IGrainWithStringKey
{
    /// <summary>Takes a rank of a job (idempotent for the same job and incarnation); builds the model slice and loads its state.</summary>
    [ResponseTimeout("00:10:00")]
    Task<RankBuildReport> Assign(WorkerAssignment assignment);

    /// <summary>Runs one step (idempotent: repeating the last step returns its report).</summary>
    [ResponseTimeout("01:00:00")]
    Task<WorkerStepReport> RunStep(WorkerStep step);

    /// <summary>Σ token losses of the global batch starting at firstSample, without training (every rank of the job must be asked).</summary>
    [ResponseTimeout("00:30:00")]
    Task<LossSum> Evaluate(string jobId, int incarnation, long firstSample, double maskValue);

    /// <summary>
    /// Snapshots the rank to host memory now (between steps) and writes its shard in the background; at most
    /// one snapshot is in flight (a new save first waits for the previous one).
    /// </summary>
    /// <returns>The fingerprint of the worker's data (for the manifest).</returns>
    [ResponseTimeout("00:30:00")]
    Task<string> BeginSave(SaveCommand command);

    /// <summary>Whether the shard of a save is durable yet.</summary>
    [AlwaysInterleave]
    Task<ShardStatus> SaveStatus(string jobId, int incarnation, long step);

    /// <summary>
    /// Copies the rank to host memory now (between steps), keeps the copy and sends it to the command's peer in
    /// the background (in-memory checkpoint tier); at most one copy is in flight.
    /// </summary>
    [ResponseTimeout("00:30:00")]
    Task BeginReplica(ReplicaCommand command);

    /// <summary>Whether the replica of a step has reached its peer.</summary>
    [AlwaysInterleave]
    Task<ReplicaStatus> GetReplicaStatus(string jobId, int incarnation, long step);

    /// <summary>Keeps a piece of another rank's replica (this worker is that rank's peer).</summary>
    [AlwaysInterleave]
    Task HoldReplica(ReplicaChunk chunk);

    /// <summary>Every rank's replica of this step is held: replicas of older steps of the job can go.</summary>
    [AlwaysInterleave]
    Task ConfirmReplica(string jobId, long step);

    /// <summary>A piece of a replica this worker keeps (its own rank's or a peer's); null when it has none of that step.</summary>
    [AlwaysInterleave]
    Task<ReplicaChunk?> FetchReplica(string jobId, int rank, long step, int index);

    /// <summary>
    /// Another rank of the job failed: collectives waiting for it fail now instead of at the timeout. The rank
    /// is rebuilt by the next assignment, even of the same incarnation.
    /// </summary>
    [AlwaysInterleave]
    Task Abort(string jobId, int incarnation);

    /// <summary>Gives up the job's rank and frees its memory, replicas included.</summary>
    Task Release(string jobId, int incarnation);

    /// <summary>Receives a piece of a tensor message from a worker on another silo.</summary>
    [AlwaysInterleave]
    Task Deliver(TensorChunk chunk);

    [AlwaysInterleave]
    [ClientAccess(ClientRole.Viewer)]
    Task<WorkerStatus> GetStatus();

    /// <summary>Runs data-plane collectives with the other workers of the probe (an idle worker only): a diagnostic of the interconnect for operators.</summary>
    [ResponseTimeout("00:10:00")]
    [ClientAccess(ClientRole.Operator)]
    Task<ProbeResult> Probe(ProbeRequest request);
}

/// <summary>
/// The GPUs of one server, as one grain on its silo (key "node/server"): relays a step to the server's workers
/// and brings their reports back, so that a coordinator sends one message per server instead of one per GPU.
/// </summary>
public interface IServerGrain : IGrainWithStringKey
{
    /// <summary>
    /// Runs the step on <paramref name="workers"/> (all of this server, in the order given) and returns their
    /// reports in that order; the first worker that fails fails the call at once, with its failure.
    /// </summary>
    [ResponseTimeout("01:00:00")]
    Task<WorkerStepReport[]> RunStep(WorkerStep step, IReadOnlyList<string> workers);
}

/// <summary>One job (key = job id): persisted spec and progress; drives the steps of its workers.</summary>
public interface IJobCoordinatorGrain : IGrainWithStringKey
{
    /// <summary>Records a job the scheduler accepted (idempotent).</summary>
    Task Initialize(AcceptedJob job);

    /// <summary>Starts the job on the allocated workers (from the scheduler).</summary>
    Task Start(JobAllocation allocation);

    [AlwaysInterleave]
    [ClientAccess(ClientRole.Viewer)]
    Task<JobStatus> GetStatus();

    /// <summary>
    /// Nothing but bringing the coordinator back: called when membership declares a silo dead, so that a
    /// coordinator that lived there resumes its job now (activation does that) instead of at its next reminder.
    /// </summary>
    [AlwaysInterleave]
    Task Wake();

    /// <summary>
    /// The job's durable history: committed steps numbered <paramref name="sinceStep"/> and later, events from
    /// index <paramref name="sinceEvent"/>, at most <paramref name="max"/> (1 … <see cref="JobHistory.MaxPage"/>) of each.
    /// </summary>
    [AlwaysInterleave]
    [ClientAccess(ClientRole.Viewer)]
    Task<JobHistory> GetHistory(long sinceStep, int sinceEvent, int max);

    /// <summary>Stops the job (from the scheduler, which is what clients ask to cancel).</summary>
    Task Cancel(string reason);

    [ClientAccess(ClientRole.Operator)]
    Task Pause();

    [ClientAccess(ClientRole.Operator)]
    Task Resume();

    /// <summary>Takes a checkpoint at the next step boundary (the job needs checkpoint.dir).</summary>
    [ClientAccess(ClientRole.Operator)]
    Task SaveCheckpoint();
}

/// <summary>The cluster's GPUs and job queue (one per cluster, key "cluster").</summary>
public interface IClusterSchedulerGrain : IGrainWithStringKey
{
    /// <summary>
    /// Validates a submission (the job, its paths, its layout against the cluster, the checkpoint it resumes from,
    /// its checkpoint folder's owner), queues it and returns its id; refuses anything invalid with
    /// <see cref="ClusterRequestException"/> before anything is recorded.
    /// </summary>
    [ClientAccess(ClientRole.Operator)]
    Task<string> Submit(JobSubmission submission);

    [ClientAccess(ClientRole.Viewer)]
    Task<IReadOnlyList<JobStatus>> ListJobs();

    [ClientAccess(ClientRole.Viewer)]
    Task<ClusterInventory> GetInventory();

    /// <summary>Cancels a queued or running job; false when the id is unknown.</summary>
    [ClientAccess(ClientRole.Operator)]
    Task<bool> Cancel(string jobId);

    /// <summary>
    /// Called by a coordinator whose job lost workers or may grow back: gives the job the first of the
    /// data-parallel sizes (tp and pp unchanged) that its GPUs on live servers plus free ones can hold, and records
    /// it as the job's allocation; null when none fits (the job keeps its old allocation).
    /// </summary>
    Task<JobAllocation?> Reallocate(string jobId, IReadOnlyList<int> dpChoices, int tp, int pp);

    /// <summary>Takes a job's GPUs out of service (hung device, straggler) until their server's silo restarts.</summary>
    Task MarkUnusable(string jobId, IReadOnlyList<string> workers, string reason);

    /// <summary>Whether a job's servers are all active, and which of the data-parallel sizes its live GPUs plus free ones could hold now; allocates nothing.</summary>
    Task<ClusterView> Survey(string jobId, IReadOnlyList<int> dpChoices, int tp, int pp);

    /// <summary>
    /// Called by a coordinator when its job ends: frees its GPUs and starts queued jobs. Interleaves, because
    /// a coordinator may report its end while the scheduler is waiting on it (cancel).
    /// </summary>
    [AlwaysInterleave]
    Task JobEnded(string jobId, JobPhase final);

    /// <summary>Wakes the coordinator of every running job (a silo was declared dead; see <see cref="IJobCoordinatorGrain.Wake"/>).</summary>
    [AlwaysInterleave]
    Task WakeJobs();
}
