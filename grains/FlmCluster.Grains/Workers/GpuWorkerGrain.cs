using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.DataPlane;
using FlmCluster.Grains.Placement;
using FlmCluster.Grains.Telemetry;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;
using Microsoft.Extensions.Logging;
using Orleans.Concurrency;
using Orleans.Dashboard;
using Orleans.Placement;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// One GPU ("node/gpuK"), activated only on its node's silo and never moved or collected. It holds one rank
/// of one job, built by the server's <see cref="IRankExecutors"/>: on a real device its model slice, flat
/// buffers and optimizer shard, built and run on a dedicated device thread, so compute never occupies the
/// Orleans scheduler and collectives may block; on a simulated device a model of its work. Holds no durable
/// state: what a lost worker held is rebuilt by the coordinator. What its work throws reaches the coordinator as
/// a typed failure (<see cref="WorkerFailures"/>).
/// </summary>
[NodePinnedPlacement, Immovable, KeepAlive]
public sealed class GpuWorkerGrain(
    FlmNodeOptions node, LocalWorkers local, IRankExecutors executors, SiloReplicas replicas, ICollectivesFactory collectives, IGrainFactory grains,
    ILogger<GpuWorkerGrain> log)
    : Grain, IGpuWorkerGrain
{
    private readonly WorkerMailbox _mailbox = new();
    private IRankThread? _thread;
    private WorkerAssignment? _assignment;
    private IRankExecutor? _rank;
    private RankTelemetry? _telemetry;
    private WorkerStepReport? _lastReport;
    private RankBuildReport? _built;

    /// <summary>The device thread's current work, while there is some.</summary>
    private Task? _busy;

    /// <summary>Completed when the device thread was given up as hung.</summary>
    private readonly TaskCompletionSource _hung = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _nextStep;
    private WorkerState _state = WorkerState.Idle;
    private string? _detail;
    private long _idleSince = Stopwatch.GetTimestamp();
    private (long Step, Task<WrittenShard> Write)? _save;
    private (long Step, Task<(long Bytes, WrittenShard Shard)> Send, CancellationTokenSource Stop)? _replica;
    private ReplicaStore _replicas = null!;

    private string Key => this.GetPrimaryKeyString();

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        var key = Key;
        var slash = key.IndexOf('/');
        if (NodeMetadata.NodeOfWorker(key) != node.Node || !key[(slash + 1)..].StartsWith("gpu", StringComparison.Ordinal)
            || !int.TryParse(key[(slash + 4)..], out var index) || index < 0 || index >= node.Devices.Count)
            throw new InvalidOperationException($"worker '{key}' does not exist on node {node.Node} ({node.Devices})");
        _thread = executors.CreateThread(key);
        _replicas = replicas.For(key);
        local.Register(key, _mailbox);
        log.LogInformation("Worker {Worker} activated on {Silo}", key, RuntimeIdentity);
        return Task.CompletedTask;
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        local.Unregister(Key);
        await DropJob();
        _thread?.Dispose();
    }

    public async Task<RankBuildReport> Assign(WorkerAssignment a)
    {
        // The same build again (a coordinator that moved): nothing to do. A rebuild of the same incarnation brings
        // another session key, which every rank must hold to connect, so the rank is built again.
        if (_assignment is { } current && current.JobId == a.JobId && current.Incarnation == a.Incarnation && current.SessionKey == a.SessionKey
            && !_mailbox.IsClosed(a.JobId, a.Incarnation))
            return _built ?? new RankBuildReport(0, 0);
        await DropJob();
        var whole = Parse(a);
        var job = whole.Stages[a.Stage].Job;
        var layout = ParallelLayout.FromConfig(job.Layout);
        if (a.RankWorkers.Count != layout.WorldSize || a.Rank < 0 || a.Rank >= layout.WorldSize || a.RankWorkers[a.Rank] != Key)
            throw new ClusterRequestException($"assignment of job {a.JobId} does not give rank {a.Rank} to worker {Key}");
        // This server's own roots: a coordinator elsewhere may allow folders this server does not.
        var outside = Scheduling.SubmissionValidator.RootsProblem(whole, node.Roots)
            ?? (a.Rebuild.Checkpoint is { Length: > 0 } from ? node.Roots.CheckpointProblem(from, "the checkpoint to rebuild from") : null);
        if (outside is not null)
            throw new ClusterRequestException($"server {node.Node}: {outside}");
        if (DeviceSpec.KindOf(job.Train.Device) != node.Devices.Kind)
            throw new ClusterRequestException($"job {a.JobId} trains on {job.Train.Device}, but server {node.Node} has {node.Devices}");
        var gpu = int.Parse(Key[(Key.IndexOf('/') + 4)..]);
        job = job with { Train = job.Train with { Device = node.Devices.TorchDevice(gpu) } };
        if (_hung.Task.IsCompleted)
            throw new RankHungException(Key, $"the device of {Key} hung; it is out of service until its server restarts");
        _state = WorkerState.Loading;
        _detail = $"rank {a.Rank} of {layout.WorldSize}";
        _mailbox.Accept(a.JobId, a.Incarnation);
        var comm = collectives.Create(new CollectivesSession(a.JobId, a.Incarnation, a.Rank, a.RankWorkers, _mailbox, a.SessionKey));
        var started = Stopwatch.GetTimestamp();
        BuiltRank built;
        try
        {
            var replicas = a.Rebuild.Kind == RebuildKind.Replicas ? ReplicaCheckpoint(a.JobId, a.Rebuild.Replicas!) : null;
            built = await OnDevice(a.Rank, () => executors.Build(new RankSetup(Key, a, whole, job, layout, comm, replicas)));
        }
        catch (Exception ex)
        {
            _state = WorkerState.Failed;
            _detail = ex.Message;
            _mailbox.Close(a.JobId, a.Incarnation);
            throw;
        }
        _rank = built.Rank;
        _assignment = a;
        _telemetry = new RankTelemetry(a.JobId, whole.Stages.Count > 1 ? whole.Stages[a.Stage].Name : "main", Key, layout.CoordsOf(a.Rank), a.Rank, built.Rank);
        _nextStep = a.NextStep;
        _lastReport = null;
        _state = WorkerState.Ready;
        _idleSince = Stopwatch.GetTimestamp();
        _built = new RankBuildReport(built.Build.TotalMilliseconds, built.Restore.TotalMilliseconds);
        log.LogInformation("Worker {Worker} holds rank {Rank} of job {Job} (incarnation {Incarnation}), {Rebuild}", Key, a.Rank, a.JobId, a.Incarnation, a.Rebuild);
        return _built;
    }

    /// <summary>The assignment's job, resolved; its stage and rebuild must make sense for it.</summary>
    private static ResolvedJob Parse(WorkerAssignment a)
    {
        ResolvedJob job;
        try
        {
            job = ResolvedJob.Parse(a.JobJson, $"job {a.JobId}");
        }
        catch (FlmCluster.Training.FlmUserException ex)
        {
            throw new ClusterRequestException(ex.Message);
        }
        if (a.Stage < 0 || a.Stage >= job.Stages.Count || (a.Rebuild.Kind == RebuildKind.Growth && a.Stage == 0)
            || (a.Rebuild.Kind is RebuildKind.Checkpoint or RebuildKind.Growth && string.IsNullOrEmpty(a.Rebuild.Checkpoint))
            || (a.Rebuild.Kind == RebuildKind.Replicas && a.Rebuild.Replicas is null))
            throw new ClusterRequestException($"assignment of job {a.JobId} names stage {a.Stage} (rebuild {a.Rebuild.Kind}); the job has {job.Stages.Count}");
        return job;
    }

    public async Task<WorkerStepReport> RunStep(WorkerStep step)
    {
        var rank = Holding(step.JobId, step.Incarnation);
        var a = _assignment!;
        if (_lastReport is { } last && last.Step == step.Step)
            return last; // a repeated command (e.g. after the coordinator moved) gets the same answer
        if (step.Step != _nextStep)
            throw new RankFailedException(Key, a.Rank, "StepOutOfOrder", $"worker {Key} is at step {_nextStep}, asked for step {step.Step}");
        _telemetry!.Idle(Stopwatch.GetElapsedTime(_idleSince));
        _state = WorkerState.Training;
        _detail = $"step {step.Step}";
        using var activity = _telemetry.StartStep(step.Step, step.TraceParent);
        RankStepReport report;
        try
        {
            report = await OnDevice(a.Rank, () => rank.TrainStep(new StepPlan(step.Step, step.FirstSample, step.Lr, step.MaskValue)));
        }
        catch (Exception ex)
        {
            _state = WorkerState.Failed;
            _detail = ex.Message;
            throw;
        }
        _nextStep = step.Step + 1;
        _state = WorkerState.Ready;
        _idleSince = Stopwatch.GetTimestamp();
        _telemetry.Stepped(report, activity);
        _lastReport = new WorkerStepReport(report.Step, report.Rank, report.ReportsLoss, report.LossSum, report.Tokens, report.GradNorm,
            report.Skipped, report.Elapsed.TotalMilliseconds, (report.CommTime - report.PipelineWait).TotalMilliseconds, report.CommBytes,
            report.PipelineWait.TotalMilliseconds, node.PeakFlops);
        return _lastReport;
    }

    public async Task<LossSum> Evaluate(string jobId, int incarnation, long firstSample, double maskValue)
    {
        var rank = Holding(jobId, incarnation);
        var (sum, tokens) = await OnDevice(_assignment!.Rank, () => rank.EvaluateLoss(firstSample, maskValue));
        return new LossSum(sum, tokens);
    }

    public async Task<string> BeginSave(SaveCommand command)
    {
        var rank = Holding(command.JobId, command.Incarnation);
        if (_save is { } previous)
        {
            if (previous.Step == command.Step)
                return rank.DataFingerprint; // repeated command
            try
            {
                await previous.Write; // at most one snapshot in flight
            }
            catch (Exception ex)
            {
                log.LogWarning("Worker {Worker}: the previous shard failed: {Message}", Key, ex.Message);
            }
        }
        var copy = await OnDevice(_assignment!.Rank, () => rank.Copy());
        Directory.CreateDirectory(command.Directory);
        _save = (command.Step, WriteShard(copy, command.Directory));
        return rank.DataFingerprint;
    }

    private static async Task<WrittenShard> WriteShard(IRankCopy copy, string directory)
    {
        using (copy)
            return await copy.WriteShard(directory);
    }

    public Task<ShardStatus> SaveStatus(string jobId, int incarnation, long step)
    {
        if (_assignment is not { } a || a.JobId != jobId || a.Incarnation != incarnation || _save is not { } save || save.Step != step)
            return Task.FromResult(new ShardStatus(step, false, null, $"worker {Key} has no save of job {jobId} at step {step}"));
        if (!save.Write.IsCompleted)
            return Task.FromResult(new ShardStatus(step, false, null, null));
        if (save.Write.IsFaulted)
            return Task.FromResult(new ShardStatus(step, false, null, save.Write.Exception!.InnerException!.Message));
        return Task.FromResult(new ShardStatus(step, true, System.Text.Json.JsonSerializer.Serialize(save.Write.Result, CheckpointManifest.Json), null));
    }

    public async Task BeginReplica(ReplicaCommand command)
    {
        var held = Holding(command.JobId, command.Incarnation);
        var rank = _assignment!.Rank;
        if (_replica is { } previous)
        {
            if (previous.Step == command.Step)
                return; // repeated command
            try
            {
                await previous.Send; // at most one copy in flight
            }
            catch (Exception ex)
            {
                log.LogWarning("Worker {Worker}: the previous replica failed: {Message}", Key, ex.Message);
            }
        }
        var copy = await OnDevice(rank, () => held.Copy());
        var peer = grains.GetGrain<IGpuWorkerGrain>(command.Peer);
        var stop = new CancellationTokenSource();
        var stopped = stop.Token;
        _replica = (command.Step, Task.Run(async () =>
        {
            ChunkedBytes bytes;
            WrittenShard shard;
            using (copy)
                (bytes, shard) = await copy.Serialize(command.Step, TensorChunk.MaxBytes);
            var checksum = bytes.Checksum();
            _replicas.Put(command.JobId, rank, command.Step, bytes, checksum);
            for (var i = 0; i < bytes.Chunks.Count; i++)
            {
                stopped.ThrowIfCancellationRequested();
                await peer.HoldReplica(new ReplicaChunk(command.JobId, rank, command.Step, i, bytes.Chunks.Count, bytes.Chunks[i], checksum));
            }
            return (bytes.Length, shard);
        }), stop);
    }

    public Task<ReplicaStatus> GetReplicaStatus(string jobId, int incarnation, long step)
    {
        if (_assignment is not { } a || a.JobId != jobId || a.Incarnation != incarnation || _replica is not { } replica || replica.Step != step)
            return Task.FromResult(new ReplicaStatus(step, false, 0, $"worker {Key} has no replica of job {jobId} at step {step}"));
        if (!replica.Send.IsCompleted)
            return Task.FromResult(new ReplicaStatus(step, false, 0, null));
        if (replica.Send.IsFaulted)
            return Task.FromResult(new ReplicaStatus(step, false, 0, replica.Send.Exception!.InnerException!.Message));
        var (bytes, shard) = replica.Send.Result;
        return Task.FromResult(new ReplicaStatus(step, true, bytes, null, System.Text.Json.JsonSerializer.Serialize(shard, CheckpointManifest.Json), _rank!.DataFingerprint));
    }

    [NoProfiling] // data plane: thousands of calls a step, kept out of the Orleans dashboard's statistics
    public Task HoldReplica(ReplicaChunk chunk)
    {
        _replicas.Receive(chunk);
        return Task.CompletedTask;
    }

    public Task ConfirmReplica(string jobId, long step)
    {
        _replicas.DropOlder(jobId, step);
        return Task.CompletedTask;
    }

    [NoProfiling] // data plane: thousands of calls a step, kept out of the Orleans dashboard's statistics
    public Task<ReplicaChunk?> FetchReplica(string jobId, int rank, long step, int index) =>
        Task.FromResult(_replicas.Chunk(jobId, rank, step, index));

    /// <summary>
    /// The in-memory replicas of a step as a checkpoint: the manifest the coordinator made of their shards, each
    /// shard fetched when a slice of this rank first needs it. The fetches run on the device thread, which may
    /// wait for grain calls (the holders answer replica fetches whatever else they are doing).
    /// </summary>
    private CheckpointReader ReplicaCheckpoint(string jobId, ReplicaSource source)
    {
        var name = $"the in-memory replicas of step {source.Step}";
        CheckpointManifest manifest;
        try
        {
            manifest = System.Text.Json.JsonSerializer.Deserialize<CheckpointManifest>(source.ManifestJson, CheckpointManifest.Json)
                ?? throw new InvalidCheckpointException($"{name}: no manifest");
        }
        catch (System.Text.Json.JsonException ex)
        {
            throw new ClusterRequestException($"{name}: unreadable manifest ({ex.Message})");
        }
        var ranks = manifest.Shards.ToDictionary(s => s.File, s => s.Rank);
        var shards = new FetchedShards(file => ranks.TryGetValue(file, out var rank) && rank < source.Holders.Count
            ? FindReplica(jobId, rank, source).GetAwaiter().GetResult()
            : throw new InvalidCheckpointException($"{name} have no shard {file}"));
        return CheckpointReader.InMemory(name, manifest, shards);
    }

    /// <summary>
    /// A rank's replica of a step: kept here, or fetched from the first holder that has it whole and whose bytes
    /// match the checksum they were sent with (a holder with a damaged copy is passed over for the next).
    /// </summary>
    private async Task<ChunkedBytes> FindReplica(string jobId, int rank, ReplicaSource source)
    {
        if (_replicas.Get(jobId, rank, source.Step) is { } own && own.Bytes.Checksum() == own.Checksum)
            return own.Bytes;
        var holders = source.Holders[rank];
        var problems = new List<string>();
        foreach (var holder in holders.Where(h => h != Key))
        {
            try
            {
                var worker = grains.GetGrain<IGpuWorkerGrain>(holder);
                var first = await worker.FetchReplica(jobId, rank, source.Step, 0);
                if (first is null)
                {
                    problems.Add($"{holder} has none");
                    continue;
                }
                var chunks = new byte[first.Count][];
                chunks[0] = first.Data;
                for (var i = 1; i < first.Count; i++)
                    chunks[i] = (await worker.FetchReplica(jobId, rank, source.Step, i) ?? throw new ReplicaUnavailableException(rank, source.Step, $"{holder} dropped it")).Data;
                var bytes = new ChunkedBytes(chunks);
                if (bytes.Checksum() == first.Checksum)
                    return bytes;
                problems.Add($"{holder}'s copy does not match its checksum");
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                problems.Add($"{holder}: {ex.Message}");
            }
        }
        throw new ReplicaUnavailableException(rank, source.Step, $"no holder has the replica of rank {rank} at step {source.Step} ({string.Join("; ", problems)})");
    }

    public Task Abort(string jobId, int incarnation)
    {
        if (_assignment is { } a && a.JobId == jobId && a.Incarnation == incarnation)
        {
            _mailbox.Close(jobId, incarnation);
            // A collective wakes at once; work that does not come back within the grace is a hung device.
            if (_busy is { } busy)
                _ = AbandonIfStuck(busy);
        }
        return Task.CompletedTask;
    }

    /// <summary>
    /// Gives up a device thread whose work did not return within the grace after an abort: the call waiting on it
    /// fails (<see cref="RankHungException"/>), the grain serves calls again, and the GPU refuses work until its
    /// server restarts (the thread cannot be interrupted; it is left behind).
    /// </summary>
    private async Task AbandonIfStuck(Task work)
    {
        await Task.WhenAny(work, Task.Delay(node.HangGrace));
        if (work.IsCompleted || _hung.Task.IsCompleted)
            return;
        _state = WorkerState.Failed;
        _detail = $"device hung; out of service until the server restarts";
        log.LogError("Worker {Worker}: its device did not come back within {Grace} s of an abort; abandoning it", Key, node.HangGrace.TotalSeconds);
        _hung.TrySetResult();
    }

    public async Task Release(string jobId, int incarnation)
    {
        _replicas.DropJob(jobId);
        if (_assignment is { } a && a.JobId == jobId && a.Incarnation == incarnation)
            await DropJob();
    }

    [NoProfiling] // data plane: thousands of calls a step, kept out of the Orleans dashboard's statistics
    public Task Deliver(TensorChunk chunk)
    {
        try
        {
            _mailbox.Put(chunk);
        }
        catch (Exception ex)
        {
            // A message for a job this worker left: the sender's collective is an echo of that (typed on the wire).
            throw WorkerFailures.Translate(ex, Key, _assignment?.Rank ?? -1);
        }
        return Task.CompletedTask;
    }

    public Task<WorkerStatus> GetStatus() =>
        Task.FromResult(new WorkerStatus(Key, _state, _assignment?.JobId, _assignment?.Rank ?? -1, _nextStep, _detail, RuntimeIdentity));

    public async Task<ProbeResult> Probe(ProbeRequest request)
    {
        if (!executors.HasDataPlane)
            throw new ClusterRequestException($"worker {Key} is a simulated device ({node.Devices}); it moves no bytes to probe");
        if (_assignment is { } held)
            throw new ClusterRequestException($"worker {Key} is busy with job {held.JobId}; probe idle workers");
        if (request.RankWorkers.Count == 0 || request.Rank < 0 || request.Rank >= request.RankWorkers.Count || request.RankWorkers[request.Rank] != Key)
            throw new ClusterRequestException($"probe {request.ProbeId} does not give rank {request.Rank} to worker {Key}");
        _mailbox.Accept(request.ProbeId, 0);
        _state = WorkerState.Probing;
        try
        {
            var comm = collectives.Create(new CollectivesSession(request.ProbeId, 0, request.Rank, request.RankWorkers, _mailbox, request.SessionKey));
            var silo = RuntimeIdentity;
            return await OnDevice(request.Rank, () => ProbeRunner.Run(request, comm, silo));
        }
        finally
        {
            _mailbox.Close(request.ProbeId, 0);
            _state = WorkerState.Idle;
        }
    }

    private IRankExecutor Holding(string jobId, int incarnation) =>
        _assignment is { } a && a.JobId == jobId && a.Incarnation == incarnation && _rank is { } rank
            ? rank
            : throw new WorkerNotHoldingJobException(Key, jobId, incarnation);

    /// <summary>
    /// Runs a rank's work on the device thread; what it throws comes back as a typed failure, and a device given
    /// up as hung fails the call at once.
    /// </summary>
    private async Task<T> OnDevice<T>(int rank, Func<T> work)
    {
        if (_hung.Task.IsCompleted)
            throw new RankHungException(Key, $"the device of {Key} hung; it is out of service until its server restarts");
        var task = _thread!.Run(work);
        _busy = task;
        try
        {
            if (await Task.WhenAny(task, _hung.Task) != task)
                throw new RankHungException(Key, $"the device of {Key} did not come back within {node.HangGrace.TotalSeconds:0} s of an abort (rank {rank})");
            return await task;
        }
        catch (Exception ex) when (ex is not RankHungException)
        {
            throw WorkerFailures.Translate(ex, Key, rank);
        }
        finally
        {
            if (_busy == task)
                _busy = null;
        }
    }

    /// <summary>Gives up the rank (on release or a new assignment); replicas stay: a restore may need them.</summary>
    private async Task DropJob()
    {
        if (_save is { } pending)
        {
            try
            {
                await pending.Write;
            }
            catch (Exception ex)
            {
                log.LogWarning("Worker {Worker}: a shard write failed: {Message}", Key, ex.Message);
            }
            _save = null;
        }
        if (_replica is { } replica)
        {
            replica.Stop.Cancel(); // a copy on its way to the peer stops
            replica.Stop.Dispose();
            _replica = null;
        }
        if (_assignment is { } a)
            _mailbox.Close(a.JobId, a.Incarnation);
        if (_rank is { } held && !_hung.Task.IsCompleted)
            await _thread!.Run(held.Dispose); // a hung device's rank stays with its thread
        _rank = null;
        _telemetry = null;
        _assignment = null;
        _lastReport = null;
        _state = WorkerState.Idle;
        _detail = null;
    }
}
