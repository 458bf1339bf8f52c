using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.DataPlane;
using FlmCluster.Grains.Placement;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.Logging;
using Orleans.Concurrency;
using Orleans.Placement;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// One GPU ("node/gpuK"), activated only on its node's silo and never moved or collected. It holds one rank
/// of one job — model slice, flat buffers, optimizer shard — built and run on a dedicated device thread, so
/// compute never occupies the Orleans scheduler and collectives may block. Holds no durable state: what a
/// lost worker held is rebuilt by the coordinator. What its work throws reaches the coordinator as a typed
/// failure (<see cref="WorkerFailures"/>).
/// </summary>
[NodePinnedPlacement, Immovable, KeepAlive]
public sealed class GpuWorkerGrain(
    FlmNodeOptions node, LocalWorkers local, SiloDatasets datasets, ICollectivesFactory collectives, IGrainFactory grains, ILogger<GpuWorkerGrain> log)
    : Grain, IGpuWorkerGrain
{
    private readonly WorkerMailbox _mailbox = new();
    private DeviceThread? _thread;
    private WorkerAssignment? _assignment;
    private RankTrainer? _trainer;
    private WorkerStepReport? _lastReport;
    private long _nextStep;
    private WorkerState _state = WorkerState.Idle;
    private string? _detail;
    private long _idleSince = Stopwatch.GetTimestamp();
    private (long Step, Task<WrittenShard> Write)? _save;
    private (long Step, Task<long> Send, CancellationTokenSource Stop)? _replica;
    private readonly ReplicaStore _replicas = new();

    private string Key => this.GetPrimaryKeyString();

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        var key = Key;
        var slash = key.IndexOf('/');
        if (NodeMetadata.NodeOfWorker(key) != node.Node || !key[(slash + 1)..].StartsWith("gpu", StringComparison.Ordinal)
            || !int.TryParse(key[(slash + 4)..], out var index) || index < 0 || index >= node.Devices.Count)
            throw new InvalidOperationException($"worker '{key}' does not exist on node {node.Node} ({node.Devices})");
        _thread = new DeviceThread(key);
        local.Register(key, _mailbox);
        return Task.CompletedTask;
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        local.Unregister(Key);
        await DropJob();
        _thread?.Dispose();
    }

    public async Task Assign(WorkerAssignment a)
    {
        // The same build again (a coordinator that moved): nothing to do. A rebuild of the same incarnation brings
        // another session key, which every rank must hold to connect, so the rank is built again.
        if (_assignment is { } current && current.JobId == a.JobId && current.Incarnation == a.Incarnation && current.SessionKey == a.SessionKey
            && !_mailbox.IsClosed(a.JobId, a.Incarnation))
            return;
        await DropJob();
        var whole = Parse(a);
        var job = whole.Stages[a.Stage].Job;
        var layout = ParallelLayout.FromConfig(job.Layout);
        if (a.RankWorkers.Count != layout.WorldSize || a.Rank < 0 || a.Rank >= layout.WorldSize || a.RankWorkers[a.Rank] != Key)
            throw new ClusterRequestException($"assignment of job {a.JobId} does not give rank {a.Rank} to worker {Key}");
        if (DeviceSpec.KindOf(job.Train.Device) != node.Devices.Kind)
            throw new ClusterRequestException($"job {a.JobId} trains on {job.Train.Device}, but server {node.Node} has {node.Devices}");
        var gpu = int.Parse(Key[(Key.IndexOf('/') + 4)..]);
        job = job with { Train = job.Train with { Device = node.Devices.TorchDevice(gpu) } };
        _state = WorkerState.Loading;
        _detail = $"rank {a.Rank} of {layout.WorldSize}";
        _mailbox.Accept(a.JobId, a.Incarnation);
        var comm = collectives.Create(new CollectivesSession(a.JobId, a.Incarnation, a.Rank, a.RankWorkers, _mailbox, a.SessionKey));
        try
        {
            var replica = a.Rebuild.Kind == RebuildKind.Replicas ? await FindReplica(a.JobId, a.Rank, a.Rebuild.Replicas!) : null;
            _trainer = await OnDevice(a.Rank, () =>
            {
                TorchEnvironment.ConfigureThreads(node.TorchThreads, Math.Max(1, local.Count));
                var data = datasets.For(job);
                var trainer = new RankTrainer(job, new RankGroups(layout, a.Rank), comm, data, whole.GrowthShapeOf(a.Stage));
                try
                {
                    Rebuild(trainer, whole, a, data.Fingerprint, replica);
                }
                catch
                {
                    trainer.Dispose();
                    throw;
                }
                return trainer;
            });
        }
        catch (Exception ex)
        {
            _state = WorkerState.Failed;
            _detail = ex.Message;
            _mailbox.Close(a.JobId, a.Incarnation);
            throw;
        }
        _assignment = a;
        _nextStep = a.NextStep;
        _lastReport = null;
        _state = WorkerState.Ready;
        _idleSince = Stopwatch.GetTimestamp();
        log.LogInformation("Worker {Worker} holds rank {Rank} of job {Job} (incarnation {Incarnation}), {Rebuild}", Key, a.Rank, a.JobId, a.Incarnation, a.Rebuild);
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

    /// <summary>Loads the rank's state from where the assignment says (on the device thread).</summary>
    private static void Rebuild(RankTrainer trainer, ResolvedJob job, WorkerAssignment a, string dataFingerprint, ChunkedBytes? replica)
    {
        switch (a.Rebuild.Kind)
        {
            case RebuildKind.Growth:
                CheckpointRestore.LoadGrown(trainer, CheckpointReader.Open(a.Rebuild.Checkpoint!), job.Job, job.Stages, a.Stage);
                break;
            case RebuildKind.Checkpoint:
                var reader = CheckpointReader.Open(a.Rebuild.Checkpoint!);
                new JobProgress(job).CheckResume(reader, dataFingerprint, stepsLeft: false);
                CheckpointRestore.Load(trainer, reader);
                break;
            case RebuildKind.Replicas:
                RankReplica.Restore(trainer, replica!);
                break;
        }
    }

    public async Task<WorkerStepReport> RunStep(WorkerStep step)
    {
        var trainer = Holding(step.JobId, step.Incarnation);
        var a = _assignment!;
        if (_lastReport is { } last && last.Step == step.Step)
            return last; // a repeated command (e.g. after the coordinator moved) gets the same answer
        if (step.Step != _nextStep)
            throw new RankFailedException(Key, a.Rank, "StepOutOfOrder", $"worker {Key} is at step {_nextStep}, asked for step {step.Step}");
        var tags = new TagList { { "job", a.JobId }, { "rank", a.Rank } };
        FlmTelemetry.WorkerIdle.Record(Stopwatch.GetElapsedTime(_idleSince).TotalMilliseconds, tags);
        _state = WorkerState.Training;
        _detail = $"step {step.Step}";
        using var activity = FlmTelemetry.Source.StartActivity("worker.step");
        activity?.SetTag("job", a.JobId);
        activity?.SetTag("rank", a.Rank);
        activity?.SetTag("step", step.Step);
        RankStepReport report;
        try
        {
            report = await OnDevice(a.Rank, () => trainer.TrainStep(new StepPlan(step.Step, step.FirstSample, step.Lr, step.MaskValue)));
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
        FlmTelemetry.WorkerCompute.Record((report.Elapsed - report.CommTime).TotalMilliseconds, tags);
        FlmTelemetry.WorkerCommunication.Record(report.CommTime.TotalMilliseconds, tags);
        FlmTelemetry.WorkerBytes.Add(report.CommBytes, tags);
        _lastReport = new WorkerStepReport(report.Step, report.Rank, report.ReportsLoss, report.LossSum, report.Tokens, report.GradNorm,
            report.Skipped, report.Elapsed.TotalMilliseconds, report.CommTime.TotalMilliseconds, report.CommBytes);
        return _lastReport;
    }

    public async Task<LossSum> Evaluate(string jobId, int incarnation, long firstSample, double maskValue)
    {
        var trainer = Holding(jobId, incarnation);
        var (sum, tokens) = await OnDevice(_assignment!.Rank, () => trainer.EvaluateLoss(firstSample, maskValue));
        return new LossSum(sum, tokens);
    }

    public async Task<string> BeginSave(SaveCommand command)
    {
        var trainer = Holding(command.JobId, command.Incarnation);
        if (_save is { } previous)
        {
            if (previous.Step == command.Step)
                return trainer.DataFingerprint; // repeated command
            try
            {
                await previous.Write; // at most one snapshot in flight
            }
            catch (Exception ex)
            {
                log.LogWarning("Worker {Worker}: the previous shard failed: {Message}", Key, ex.Message);
            }
        }
        var snapshot = await OnDevice(_assignment!.Rank, () => RankSnapshot.Capture(trainer));
        Directory.CreateDirectory(command.Directory);
        _save = (command.Step, Task.Run(() =>
        {
            try
            {
                return ShardWriter.Write(snapshot, command.Directory);
            }
            finally
            {
                snapshot.Dispose();
            }
        }));
        return trainer.DataFingerprint;
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
        var trainer = Holding(command.JobId, command.Incarnation);
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
        var snapshot = await OnDevice(rank, () => RankSnapshot.Capture(trainer, allParameters: true));
        var peer = grains.GetGrain<IGpuWorkerGrain>(command.Peer);
        var stop = new CancellationTokenSource();
        var stopped = stop.Token;
        _replica = (command.Step, Task.Run(async () =>
        {
            ChunkedBytes bytes;
            try
            {
                bytes = RankReplica.Serialize(snapshot, command.Step, TensorChunk.MaxBytes);
            }
            finally
            {
                snapshot.Dispose();
            }
            _replicas.Put(command.JobId, rank, command.Step, bytes);
            for (var i = 0; i < bytes.Chunks.Count; i++)
            {
                stopped.ThrowIfCancellationRequested();
                await peer.HoldReplica(new ReplicaChunk(command.JobId, rank, command.Step, i, bytes.Chunks.Count, bytes.Chunks[i]));
            }
            return bytes.Length;
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
        return Task.FromResult(new ReplicaStatus(step, true, replica.Send.Result, null));
    }

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

    public Task<ReplicaChunk?> FetchReplica(string jobId, int rank, long step, int index) =>
        Task.FromResult(_replicas.Chunk(jobId, rank, step, index));

    /// <summary>This rank's replica of a step: kept here, or fetched from the first holder that has it whole.</summary>
    private async Task<ChunkedBytes> FindReplica(string jobId, int rank, ReplicaSource source)
    {
        if (_replicas.Get(jobId, rank, source.Step) is { } own)
            return own;
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
                    chunks[i] = (await worker.FetchReplica(jobId, rank, source.Step, i) ?? throw new InvalidOperationException($"{holder} dropped it")).Data;
                return new ChunkedBytes(chunks);
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
            _mailbox.Close(jobId, incarnation);
        return Task.CompletedTask;
    }

    public async Task Release(string jobId, int incarnation)
    {
        _replicas.DropJob(jobId);
        if (_assignment is { } a && a.JobId == jobId && a.Incarnation == incarnation)
            await DropJob();
    }

    public Task Deliver(TensorChunk chunk)
    {
        _mailbox.Put(chunk);
        return Task.CompletedTask;
    }

    public Task<WorkerStatus> GetStatus() =>
        Task.FromResult(new WorkerStatus(Key, _state, _assignment?.JobId, _assignment?.Rank ?? -1, _nextStep, _detail, RuntimeIdentity));

    public async Task<ProbeResult> Probe(ProbeRequest request)
    {
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

    private RankTrainer Holding(string jobId, int incarnation) =>
        _assignment is { } a && a.JobId == jobId && a.Incarnation == incarnation && _trainer is { } trainer
            ? trainer
            : throw new WorkerNotHoldingJobException(Key, jobId, incarnation);

    /// <summary>Runs a rank's work on the device thread; what it throws comes back as a typed failure.</summary>
    private async Task<T> OnDevice<T>(int rank, Func<T> work)
    {
        try
        {
            return await _thread!.Run(work);
        }
        catch (Exception ex)
        {
            throw WorkerFailures.Translate(ex, Key, rank);
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
        if (_trainer is { } trainer)
            await _thread!.Run(trainer.Dispose);
        _trainer = null;
        _assignment = null;
        _lastReport = null;
        _state = WorkerState.Idle;
        _detail = null;
    }
}
