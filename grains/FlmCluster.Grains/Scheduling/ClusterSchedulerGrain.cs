using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Jobs;
using FlmCluster.Grains.Placement;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace FlmCluster.Grains.Scheduling;

[GenerateSerializer, Alias("flm.ScheduledJob")]
public sealed class ScheduledJob
{
    [Id(0)] public required AcceptedJob Job { get; set; }
    [Id(1)] public long Sequence { get; set; }

    /// <summary>Queued, Running (holds GPUs) or the final phase.</summary>
    [Id(2)] public JobPhase Phase { get; set; } = JobPhase.Queued;
    [Id(3)] public List<string> RankWorkers { get; set; } = [];
}

/// <summary>A GPU taken out of service (its device hung, or it straggles): unusable until its server's silo restarts.</summary>
[GenerateSerializer, Immutable, Alias("flm.UnusableGpu")]
public sealed record UnusableGpu([property: Id(0)] string Silo, [property: Id(1)] string Reason, [property: Id(2)] DateTime Since);

[GenerateSerializer, Alias("flm.SchedulerState")]
public sealed class SchedulerState
{
    [Id(0)] public Dictionary<string, ScheduledJob> Jobs { get; set; } = [];
    [Id(1)] public long NextSequence { get; set; }

    /// <summary>GPUs out of service, by worker key, with the silo (generation) they were marked on.</summary>
    [Id(2)] public Dictionary<string, UnusableGpu> Unusable { get; set; } = [];
}

/// <summary>
/// The cluster's GPUs and job queue. The inventory comes from Orleans membership (active silos and the
/// devices in their metadata); submissions are validated here (<see cref="SubmissionValidator"/>); queued jobs
/// start in priority order (first come first served within a priority, later jobs backfilling GPUs the head of
/// the queue cannot use) when their whole layout fits on servers of their device kind. A job's GPUs are freed
/// when its coordinator reports its end.
/// </summary>
[ControlPlanePlacement]
public sealed class ClusterSchedulerGrain(
    [PersistentState("scheduler", FlmSiloBuilderExtensions.StorageName)] IPersistentState<SchedulerState> store,
    IClusterMembershipService membership,
    NodeDirectory directory,
    FlmNodeOptions node,
    IGrainFactory grains,
    [Microsoft.Extensions.DependencyInjection.FromKeyedServices(FlmSiloBuilderExtensions.JobClock)] TimeProvider time,
    ILogger<ClusterSchedulerGrain> log) : Grain, IClusterSchedulerGrain
{
    private SchedulerState S => store.State;
    private int _totalGpus;

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        Publish();
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        FlmTelemetry.PublishScheduler(new SchedulerFigures(0, 0, 0, Published: false));
        return Task.CompletedTask;
    }

    /// <summary>The queue and GPU figures the scheduler's gauges report.</summary>
    private void Publish() => FlmTelemetry.PublishScheduler(new SchedulerFigures(
        S.Jobs.Values.Count(j => j.Phase == JobPhase.Queued),
        S.Jobs.Values.Where(j => j.Phase == JobPhase.Running).Sum(j => j.RankWorkers.Count),
        _totalGpus));

    public async Task<string> Submit(JobSubmission submission)
    {
        ArgumentNullException.ThrowIfNull(submission);
        using var activity = FlmTelemetry.Source.StartActivity("scheduler.submit");
        var submittedAt = time.GetUtcNow().UtcDateTime; // the job's time is accounted from here
        var nodes = await ActiveNodes();
        if (nodes.Count == 0)
            throw new ClusterRequestException("the cluster has no GPU servers; start silos with devices");
        var id = RunIdentity.NewId(JobNameOf(submission));
        var job = SubmissionValidator.Validate(submission, id, nodes, node.Roots, submittedAt);
        await grains.GetGrain<IJobCoordinatorGrain>(id).Initialize(job);
        S.Jobs[id] = new ScheduledJob { Job = job, Sequence = S.NextSequence++ };
        await store.WriteStateAsync();
        activity?.SetTag(FlmTelemetry.Tags.Job, id);
        Publish();
        log.LogInformation("Job {Job} queued ({World} GPUs, priority {Priority})", id, job.WorldSize, submission.Priority);
        await TrySchedule();
        return id;
    }

    /// <summary>Every job's status; a job whose coordinator cannot answer is listed with the reason, never breaking the list.</summary>
    public async Task<IReadOnlyList<JobStatus>> ListJobs()
    {
        var statuses = await Task.WhenAll(S.Jobs.Select(async kv =>
        {
            try
            {
                return await grains.GetGrain<IJobCoordinatorGrain>(kv.Key).GetStatus();
            }
            catch (Exception ex)
            {
                log.LogWarning("Job {Job}: no status ({Message})", kv.Key, ex.Message);
                var j = kv.Value.Job;
                return new JobStatus(kv.Key, j.Name, kv.Value.Phase, 0, j.Steps, $"dp={j.Dp},tp={j.Tp},pp={j.Pp}", kv.Value.RankWorkers, [], [],
                    $"status unavailable: {ex.Message}", j.Submission.Priority, j.SubmittedAt, "main");
            }
        }));
        return statuses.OrderBy(s => s.SubmittedAt).ToList();
    }

    public async Task WakeJobs()
    {
        var running = S.Jobs.Where(j => j.Value.Phase == JobPhase.Running).Select(j => j.Key).ToList();
        await Task.WhenAll(running.Select(async id =>
        {
            try
            {
                await grains.GetGrain<IJobCoordinatorGrain>(id).Wake();
            }
            catch (Exception ex)
            {
                log.LogWarning("Job {Job}: its coordinator did not wake ({Message}); its reminder will", id, ex.Message);
            }
        }));
    }

    public async Task<ClusterInventory> GetInventory()
    {
        var members = membership.CurrentSnapshot.Members.Values.OrderBy(m => m.SiloAddress.ToString()).ToList();
        var identities = await Task.WhenAll(members.Select(m => directory.Resolve(m.SiloAddress)));
        var holders = S.Jobs.Where(j => j.Value.Phase == JobPhase.Running)
            .SelectMany(j => j.Value.RankWorkers.Select((w, rank) => (Worker: w, Job: j.Key, Rank: rank)))
            .ToDictionary(x => x.Worker, x => (x.Job, x.Rank));
        var nodes = new List<NodeInfo>();
        foreach (var (member, identity) in members.Zip(identities))
        {
            if (identity is null)
                continue;
            var (node, spec, _) = identity;
            var status = member.Status.ToString().ToLowerInvariant();
            if (member.Status == SiloStatus.Dead && !holders.Keys.Any(w => NodeMetadata.NodeOfWorker(w) == node))
                continue;
            var gpus = Enumerable.Range(0, spec.Count).Select(k =>
            {
                var worker = $"{node}/gpu{k}";
                var device = S.Unusable.TryGetValue(worker, out var mark) && mark.Silo == member.SiloAddress.ToString() ? $"{spec.TorchDevice(k)} (out of service: {mark.Reason})" : spec.TorchDevice(k);
                return holders.TryGetValue(worker, out var h) ? new GpuInfo(worker, device, h.Job, h.Rank) : new GpuInfo(worker, device, null, -1);
            }).ToList();
            nodes.Add(new NodeInfo(node, member.SiloAddress.ToString(), status, gpus));
        }
        return new ClusterInventory(nodes, Queue().Select(j => j.Key).ToList());
    }

    public async Task<bool> Cancel(string jobId)
    {
        if (!S.Jobs.TryGetValue(jobId ?? "", out var job))
            return false;
        if (job.Phase == JobPhase.Queued)
        {
            job.Phase = JobPhase.Cancelled;
            await store.WriteStateAsync();
            Publish();
        }
        await grains.GetGrain<IJobCoordinatorGrain>(jobId!).Cancel("cancelled by the user");
        return true;
    }

    public async Task JobEnded(string jobId, JobPhase final)
    {
        if (!S.Jobs.TryGetValue(jobId, out var job) || job.Phase.IsFinal() || !final.IsFinal())
            return;
        job.Phase = final;
        log.LogInformation("Job {Job} ended ({State}); its {Count} GPUs are free", jobId, final, job.RankWorkers.Count);
        await store.WriteStateAsync();
        Publish();
        await TrySchedule();
    }

    public async Task<ClusterView> Survey(string jobId, IReadOnlyList<int> dpChoices, int tp, int pp)
    {
        if (!S.Jobs.TryGetValue(jobId, out var job) || job.Phase != JobPhase.Running)
            return new ClusterView(false, []);
        var nodes = await ActiveNodes();
        var alive = job.RankWorkers.All(w => nodes.ContainsKey(NodeMetadata.NodeOfWorker(w)) && !S.Unusable.ContainsKey(w));
        var free = FreeFor(job, nodes);
        return new ClusterView(alive, dpChoices.Where(dp => GangAllocator.Allocate(free, dp, tp, pp) is not null).OrderDescending().ToList());
    }

    public async Task<JobAllocation?> Reallocate(string jobId, IReadOnlyList<int> dpChoices, int tp, int pp)
    {
        if (!S.Jobs.TryGetValue(jobId, out var job) || job.Phase != JobPhase.Running)
            return null;
        // From here to the write nothing awaits: the free list cannot go stale.
        var free = FreeFor(job, await ActiveNodes());
        foreach (var dp in dpChoices)
        {
            if (GangAllocator.Allocate(free, dp, tp, pp) is not { } ranks)
                continue;
            log.LogInformation("Job {Job}: {Before} GPUs → {After} (dp={Dp},tp={Tp},pp={Pp})", jobId, job.RankWorkers.Count, ranks.Count, dp, tp, pp);
            job.RankWorkers = [.. ranks];
            await store.WriteStateAsync();
            Publish();
            return new JobAllocation(ranks);
        }
        return null;
    }

    /// <summary>Free GPUs of the job's device kind plus the job's own GPUs in service on servers that are alive.</summary>
    private Dictionary<string, IReadOnlyList<string>> FreeFor(ScheduledJob job, Dictionary<string, DeviceSpec> nodes)
    {
        var free = FreeGpus(nodes, job.Job.Device);
        foreach (var worker in job.RankWorkers.Where(w => !S.Unusable.ContainsKey(w)))
        {
            var node = NodeMetadata.NodeOfWorker(worker);
            if (free.TryGetValue(node, out var gpus))
                free[node] = gpus.Append(worker).OrderBy(GpuIndex).ToList();
        }
        return free;
    }

    private static int GpuIndex(string worker) => int.Parse(worker[(worker.LastIndexOf("/gpu", StringComparison.Ordinal) + 4)..], System.Globalization.CultureInfo.InvariantCulture);

    private IEnumerable<KeyValuePair<string, ScheduledJob>> Queue() =>
        S.Jobs.Where(j => j.Value.Phase == JobPhase.Queued).OrderByDescending(j => j.Value.Job.Submission.Priority).ThenBy(j => j.Value.Sequence);

    /// <summary>
    /// Starts every queued job that fits now. Allocations are recorded before any call goes out, so an
    /// interleaved call (a job ending meanwhile) never hands the same GPU out twice.
    /// </summary>
    private async Task TrySchedule()
    {
        var nodes = await ActiveNodes();
        // From here to the first call out nothing awaits: the free list cannot go stale.
        var starts = new List<(string Id, ScheduledJob Job)>();
        foreach (var (id, job) in Queue().ToList())
        {
            var j = job.Job;
            if (GangAllocator.Allocate(FreeGpus(nodes, j.Device), j.Dp, j.Tp, j.Pp) is not { } ranks)
                continue;
            job.Phase = JobPhase.Running;
            job.RankWorkers = [.. ranks];
            starts.Add((id, job));
        }
        if (starts.Count == 0)
            return;
        await store.WriteStateAsync();
        Publish();
        foreach (var (id, job) in starts)
        {
            using var activity = FlmTelemetry.Source.StartActivity("scheduler.start");
            activity?.SetTag(FlmTelemetry.Tags.Job, id);
            activity?.SetTag("flm.gpus", job.RankWorkers.Count);
            await grains.GetGrain<IJobCoordinatorGrain>(id).Start(new JobAllocation(job.RankWorkers));
        }
    }

    /// <summary>Active GPU servers and their devices.</summary>
    private async Task<Dictionary<string, DeviceSpec>> ActiveNodes()
    {
        var silos = await ActiveSilos();
        ForgetRestarted(silos);
        var nodes = silos.ToDictionary(n => n.Key, n => n.Value.Devices);
        _totalGpus = nodes.Values.Sum(d => d.Count);
        return nodes;
    }

    /// <summary>Active GPU servers: the silo each runs in and its devices.</summary>
    private async Task<Dictionary<string, (string Silo, DeviceSpec Devices)>> ActiveSilos()
    {
        var active = membership.CurrentSnapshot.Members.Values.Where(m => m.Status == SiloStatus.Active).ToList();
        var identities = await Task.WhenAll(active.Select(m => directory.Resolve(m.SiloAddress)));
        return active.Zip(identities).Where(x => x.Second is { Devices.Count: > 0 })
            .GroupBy(x => x.Second!.Node).ToDictionary(g => g.Key, g => (g.Last().First.SiloAddress.ToString(), g.Last().Second!.Devices));
    }

    /// <summary>Per server of the device kind, its GPUs that no running job holds and that are in service.</summary>
    private Dictionary<string, IReadOnlyList<string>> FreeGpus(Dictionary<string, DeviceSpec> nodes, string device)
    {
        var busy = S.Jobs.Values.Where(j => j.Phase == JobPhase.Running).SelectMany(j => j.RankWorkers).ToHashSet();
        return nodes.Where(n => n.Value.Kind == device).ToDictionary(
            n => n.Key,
            n => (IReadOnlyList<string>)Enumerable.Range(0, n.Value.Count).Select(k => $"{n.Key}/gpu{k}").Where(w => !busy.Contains(w) && !S.Unusable.ContainsKey(w)).ToList());
    }

    /// <summary>
    /// Takes GPUs out of service (a hung device, a straggler) until their server's silo restarts; the job that
    /// reports them is then given others.
    /// </summary>
    public async Task MarkUnusable(string jobId, IReadOnlyList<string> workers, string reason)
    {
        var silos = await ActiveSilos();
        foreach (var worker in workers.Distinct())
        {
            var node = NodeMetadata.NodeOfWorker(worker);
            if (!silos.TryGetValue(node, out var silo))
                continue; // its server is gone anyway
            S.Unusable[worker] = new UnusableGpu(silo.Silo, reason, time.GetUtcNow().UtcDateTime);
            log.LogWarning("GPU {Worker} out of service (job {Job}): {Reason}", worker, jobId, reason);
        }
        await store.WriteStateAsync();
    }

    /// <summary>Forgets the marks of GPUs whose server restarted (a new silo) since they were marked.</summary>
    private void ForgetRestarted(Dictionary<string, (string Silo, DeviceSpec Devices)> silos)
    {
        foreach (var (worker, mark) in S.Unusable.ToList())
            if (silos.TryGetValue(NodeMetadata.NodeOfWorker(worker), out var silo) && silo.Silo != mark.Silo)
                S.Unusable.Remove(worker);
    }

    /// <summary>The name a submission's job gives itself (for its id); the validator checks the rest.</summary>
    private static string JobNameOf(JobSubmission submission)
    {
        try
        {
            return System.Text.Json.Nodes.JsonNode.Parse(submission.JobJson ?? "")?["name"]?.GetValue<string>() ?? "job";
        }
        catch (Exception ex) when (ex is System.Text.Json.JsonException or InvalidOperationException or FormatException)
        {
            return "job";
        }
    }
}
