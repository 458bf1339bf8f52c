using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Jobs;
using FlmCluster.Grains.Placement;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace FlmCluster.Grains.Scheduling;

[GenerateSerializer, Alias("flm.ScheduledJob")]
public sealed class ScheduledJob
{
    [Id(0)] public required JobSubmission Submission { get; set; }
    [Id(1)] public long Sequence { get; set; }
    [Id(2)] public string State { get; set; } = JobStates.Queued;
    [Id(3)] public List<string> RankWorkers { get; set; } = [];
}

[GenerateSerializer, Alias("flm.SchedulerState")]
public sealed class SchedulerState
{
    [Id(0)] public Dictionary<string, ScheduledJob> Jobs { get; set; } = [];
    [Id(1)] public long NextSequence { get; set; }
}

/// <summary>
/// The cluster's GPUs and job queue. The inventory comes from Orleans membership (active silos and the
/// devices in their metadata); queued jobs start in priority order (first come first served within a
/// priority, later jobs backfilling GPUs the head of the queue cannot use) when their whole layout fits.
/// A job's GPUs are freed when its coordinator reports its end.
/// </summary>
[ControlPlanePlacement]
public sealed class ClusterSchedulerGrain(
    [PersistentState("scheduler", FlmSiloBuilderExtensions.StorageName)] IPersistentState<SchedulerState> store,
    IClusterMembershipService membership,
    NodeDirectory directory,
    IGrainFactory grains,
    ILogger<ClusterSchedulerGrain> log) : Grain, IClusterSchedulerGrain
{
    private SchedulerState S => store.State;

    public async Task<string> Submit(JobSubmission submission)
    {
        var nodes = await ActiveNodes();
        if (nodes.Count == 0)
            throw new ClusterRequestException("the cluster has no GPU servers; start silos with devices");
        if (!GangAllocator.CanEverHost(nodes.Values.Select(n => n.Count), submission.Dp, submission.Tp, submission.Pp))
            throw new ClusterRequestException(
                $"layout dp={submission.Dp},tp={submission.Tp},pp={submission.Pp} needs {submission.Dp * submission.Pp} groups of {submission.Tp} GPUs on one server, " +
                $"but the cluster has {string.Join(", ", nodes.Select(n => $"{n.Key}: {n.Value.Count} GPUs"))}; choose a layout with tp ≤ GPUs per server and dp×tp×pp ≤ {nodes.Values.Sum(n => n.Count)}");
        var id = $"{Slug(submission.Name)}-{Guid.NewGuid().ToString("N")[..8]}";
        await grains.GetGrain<IJobCoordinatorGrain>(id).Initialize(submission, DateTime.UtcNow);
        S.Jobs[id] = new ScheduledJob { Submission = submission, Sequence = S.NextSequence++ };
        await store.WriteStateAsync();
        FlmTelemetry.QueueLength.Add(1);
        log.LogInformation("Job {Job} queued ({World} GPUs, priority {Priority})", id, submission.WorldSize, submission.Priority);
        await TrySchedule();
        return id;
    }

    public async Task<IReadOnlyList<JobStatus>> ListJobs()
    {
        var statuses = await Task.WhenAll(S.Jobs.Keys.Select(id => grains.GetGrain<IJobCoordinatorGrain>(id).GetStatus()));
        return statuses.OrderBy(s => s.SubmittedAt).ToList();
    }

    public async Task<ClusterInventory> GetInventory()
    {
        var members = membership.CurrentSnapshot.Members.Values.OrderBy(m => m.SiloAddress.ToString()).ToList();
        var identities = await Task.WhenAll(members.Select(m => directory.Resolve(m.SiloAddress)));
        var holders = S.Jobs.Where(j => j.Value.State == JobStates.Running)
            .SelectMany(j => j.Value.RankWorkers.Select((w, rank) => (Worker: w, Job: j.Key, Rank: rank)))
            .ToDictionary(x => x.Worker, x => (x.Job, x.Rank));
        var nodes = new List<NodeInfo>();
        foreach (var (member, identity) in members.Zip(identities))
        {
            if (identity is null)
                continue;
            var (node, spec) = identity;
            var status = member.Status.ToString().ToLowerInvariant();
            if (member.Status == SiloStatus.Dead && !holders.Keys.Any(w => NodeMetadata.NodeOfWorker(w) == node))
                continue;
            var gpus = Enumerable.Range(0, spec.Count).Select(k =>
            {
                var worker = $"{node}/gpu{k}";
                return holders.TryGetValue(worker, out var h) ? new GpuInfo(worker, spec.TorchDevice(k), h.Job, h.Rank) : new GpuInfo(worker, spec.TorchDevice(k), null, -1);
            }).ToList();
            nodes.Add(new NodeInfo(node, member.SiloAddress.ToString(), status, gpus));
        }
        var queue = S.Jobs.Where(j => j.Value.State == JobStates.Queued).OrderByDescending(j => j.Value.Submission.Priority).ThenBy(j => j.Value.Sequence).Select(j => j.Key).ToList();
        return new ClusterInventory(nodes, queue);
    }

    public async Task<bool> Cancel(string jobId)
    {
        if (!S.Jobs.TryGetValue(jobId, out var job))
            return false;
        if (job.State == JobStates.Queued)
        {
            job.State = JobStates.Cancelled;
            FlmTelemetry.QueueLength.Add(-1);
            await store.WriteStateAsync();
        }
        await grains.GetGrain<IJobCoordinatorGrain>(jobId).Cancel("cancelled by the user");
        return true;
    }

    public async Task JobEnded(string jobId, string state)
    {
        if (!S.Jobs.TryGetValue(jobId, out var job) || JobStates.IsFinal(job.State))
            return;
        if (job.State == JobStates.Running)
            FlmTelemetry.AllocatedGpus.Add(-job.RankWorkers.Count);
        else if (job.State == JobStates.Queued)
            FlmTelemetry.QueueLength.Add(-1);
        job.State = state;
        log.LogInformation("Job {Job} ended ({State}); its {Count} GPUs are free", jobId, state, job.RankWorkers.Count);
        await store.WriteStateAsync();
        await TrySchedule();
    }

    public async Task<int?> LargestFit(string jobId, IReadOnlyList<int> dpChoices, int tp, int pp)
    {
        if (!S.Jobs.TryGetValue(jobId, out var job) || job.State != JobStates.Running)
            return null;
        var free = FreeFor(job, await ActiveNodes());
        return dpChoices.Cast<int?>().FirstOrDefault(dp => GangAllocator.Allocate(free, dp!.Value, tp, pp) is not null);
    }

    public async Task<JobAllocation?> Reallocate(string jobId, IReadOnlyList<int> dpChoices, int tp, int pp)
    {
        if (!S.Jobs.TryGetValue(jobId, out var job) || job.State != JobStates.Running)
            return null;
        // From here to the write nothing awaits: the free list cannot go stale.
        var free = FreeFor(job, await ActiveNodes());
        foreach (var dp in dpChoices)
        {
            if (GangAllocator.Allocate(free, dp, tp, pp) is not { } ranks)
                continue;
            FlmTelemetry.AllocatedGpus.Add(ranks.Count - job.RankWorkers.Count);
            log.LogInformation("Job {Job} lost servers: {Before} GPUs → {After} (dp={Dp},tp={Tp},pp={Pp})", jobId, job.RankWorkers.Count, ranks.Count, dp, tp, pp);
            job.RankWorkers = [.. ranks];
            await store.WriteStateAsync();
            return new JobAllocation(ranks);
        }
        return null;
    }

    /// <summary>Free GPUs plus the job's own GPUs on servers that are alive.</summary>
    private Dictionary<string, IReadOnlyList<string>> FreeFor(ScheduledJob job, Dictionary<string, DeviceSpec> nodes)
    {
        var free = FreeGpus(nodes);
        foreach (var worker in job.RankWorkers)
        {
            var node = NodeMetadata.NodeOfWorker(worker);
            if (free.TryGetValue(node, out var gpus))
                free[node] = gpus.Append(worker).OrderBy(GpuIndex).ToList();
        }
        return free;
    }

    private static int GpuIndex(string worker) => int.Parse(worker[(worker.LastIndexOf("/gpu", StringComparison.Ordinal) + 4)..], System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>
    /// Starts every queued job that fits now. Allocations are recorded before any call goes out, so an
    /// interleaved call (a job ending meanwhile) never hands the same GPU out twice.
    /// </summary>
    private async Task TrySchedule()
    {
        var nodes = await ActiveNodes();
        // From here to the first call out nothing awaits: the free list cannot go stale.
        var starts = new List<(string Id, ScheduledJob Job)>();
        var free = FreeGpus(nodes);
        foreach (var (id, job) in S.Jobs.Where(j => j.Value.State == JobStates.Queued)
                     .OrderByDescending(j => j.Value.Submission.Priority).ThenBy(j => j.Value.Sequence).ToList())
        {
            var sub = job.Submission;
            var ranks = GangAllocator.Allocate(free, sub.Dp, sub.Tp, sub.Pp);
            if (ranks is null)
                continue;
            job.State = JobStates.Running;
            job.RankWorkers = [.. ranks];
            foreach (var worker in ranks)
            {
                var node = NodeMetadata.NodeOfWorker(worker);
                free[node] = free[node].Where(w => w != worker).ToList();
            }
            starts.Add((id, job));
        }
        if (starts.Count == 0)
            return;
        await store.WriteStateAsync();
        FlmTelemetry.QueueLength.Add(-starts.Count);
        foreach (var (id, job) in starts)
        {
            FlmTelemetry.AllocatedGpus.Add(job.RankWorkers.Count);
            await grains.GetGrain<IJobCoordinatorGrain>(id).Start(new JobAllocation(job.RankWorkers));
        }
    }

    /// <summary>Active GPU servers and their device counts.</summary>
    private async Task<Dictionary<string, DeviceSpec>> ActiveNodes()
    {
        var active = membership.CurrentSnapshot.Members.Values.Where(m => m.Status == SiloStatus.Active).ToList();
        var identities = await Task.WhenAll(active.Select(m => directory.Resolve(m.SiloAddress)));
        return identities.OfType<NodeIdentity>().Where(n => n.Devices.Count > 0)
            .GroupBy(n => n.Node).ToDictionary(g => g.Key, g => g.Last().Devices);
    }

    private Dictionary<string, IReadOnlyList<string>> FreeGpus(Dictionary<string, DeviceSpec> nodes)
    {
        var busy = S.Jobs.Values.Where(j => j.State == JobStates.Running).SelectMany(j => j.RankWorkers).ToHashSet();
        return nodes.ToDictionary(
            n => n.Key,
            n => (IReadOnlyList<string>)Enumerable.Range(0, n.Value.Count).Select(k => $"{n.Key}/gpu{k}").Where(w => !busy.Contains(w)).ToList());
    }

    private static string Slug(string name)
    {
        var slug = new string(name.ToLowerInvariant().Select(c => char.IsLetterOrDigit(c) ? c : '-').ToArray()).Trim('-');
        return string.IsNullOrEmpty(slug) ? "job" : slug[..Math.Min(24, slug.Length)];
    }
}
