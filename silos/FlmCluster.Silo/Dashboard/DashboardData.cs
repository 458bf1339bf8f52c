using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Silo.Dashboard;

/// <summary>One GPU on the cluster map: its worker's state, the job and rank it holds, and how busy its last step kept it.</summary>
/// <param name="Utilization">The share of the job's last step this rank spent computing (0 … 1); null when it holds no rank with a step.</param>
public sealed record GpuView(string Worker, string Device, string State, string? Detail, string? Job, int Rank, string? Coords, double? Utilization, double? StepMs);

public sealed record NodeView(string Node, string Address, string Status, IReadOnlyList<GpuView> Gpus);

/// <summary>
/// A row of the jobs list. The jobs list and the job page both read their job's figures from here
/// (<see cref="DashboardData.RowOf"/>); a figure added here shows in both once app.js names it in JOB_COLUMNS.
/// </summary>
public sealed record JobRow(
    string Id, string Name, string State, long Step, long TotalSteps, string Stage, string Layout, int Priority, DateTime SubmittedAt,
    double? Loss, double? TokensPerSecond, string? Error, double? Ettr = null);

/// <summary>A rank of the job's layout: its worker and its (dp, tp, pp) coordinates.</summary>
public sealed record RankView(int Rank, string Worker, int Dp, int Tp, int Pp);

public sealed record CheckpointView(string Name, long Step, bool Valid, string? Problem);

/// <summary>A predicted loss at a step (from a loss prediction that lies with the job's checkpoints).</summary>
public sealed record PredictedLoss(long Step, double Loss);

public sealed record JobPage(JobRow Job, IReadOnlyList<RankView> Ranks, string? CheckpointDir, long? LastCheckpointStep, long? LastReplicaStep,
    IReadOnlyList<CheckpointView> Checkpoints, IReadOnlyList<PredictedLoss> Prediction);

public sealed record ClusterPage(IReadOnlyList<NodeView> Nodes, IReadOnlyList<string> Queue, IReadOnlyList<JobRow> Jobs);

/// <summary>
/// What the dashboard shows, read from the cluster's grains (the scheduler, coordinators, workers); read-only. The
/// cluster map and job statuses are read once per <see cref="SharedFor"/> whatever the number of open pages.
/// </summary>
public sealed class DashboardData(IGrainFactory grains)
{
    private static readonly TimeSpan WorkerPatience = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan SharedFor = TimeSpan.FromMilliseconds(200);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, (DateTime At, Task<object> Read)> _recent = new();

    /// <summary>A read that every page asking within <see cref="SharedFor"/> of it shares.</summary>
    private async Task<T> Shared<T>(string key, Func<Task<T>> read) where T : class
    {
        static async Task<object> Boxed(Task<T> task) => await task;
        var now = DateTime.UtcNow;
        var entry = _recent.AddOrUpdate(key, _ => (now, Boxed(read())), (_, old) => now - old.At < SharedFor ? old : (now, Boxed(read())));
        return (T)await entry.Read;
    }

    private IClusterSchedulerGrain Scheduler => grains.GetGrain<IClusterSchedulerGrain>("cluster");

    public Task<ClusterPage> Cluster() => Shared("cluster", ReadCluster);

    private async Task<ClusterPage> ReadCluster()
    {
        var inventory = await Scheduler.GetInventory();
        var jobs = await Scheduler.ListJobs();
        var lastSteps = await LastSteps(jobs.Where(j => j.State == JobPhase.Running).ToList());
        var nodes = new List<NodeView>();
        foreach (var node in inventory.Nodes)
        {
            var gpus = await Task.WhenAll(node.Gpus.Select(async gpu =>
            {
                var (state, detail) = node.Status == "active" ? await WorkerState(gpu.Worker) : ("unreachable", null);
                var job = jobs.FirstOrDefault(j => j.JobId == gpu.JobId);
                string? coords = null;
                double? utilization = null, stepMs = null;
                if (job is not null && gpu.Rank >= 0 && TryLayout(job.Layout) is { } layout && gpu.Rank < layout.WorldSize)
                {
                    var c = layout.CoordsOf(gpu.Rank);
                    coords = $"dp{c.Dp} tp{c.Tp} pp{c.Pp}";
                    if (lastSteps.GetValueOrDefault(job.JobId) is { } last && last.Ranks.FirstOrDefault(r => r.Rank == gpu.Rank) is { } rank)
                    {
                        stepMs = rank.StepMs;
                        utilization = last.Point.StepMs > 0 ? Math.Clamp(rank.ComputeMs / last.Point.StepMs, 0, 1) : null;
                    }
                }
                return new GpuView(gpu.Worker, gpu.Device, state, detail, gpu.JobId, gpu.Rank, coords, utilization, stepMs);
            }));
            nodes.Add(new NodeView(node.Node, node.Address, node.Status, gpus));
        }
        return new ClusterPage(nodes, inventory.Queue, jobs.Select(RowOf).ToList());
    }

    public async Task<JobPage> Job(string id)
    {
        var status = await Coordinator(id).GetStatus();
        var layout = TryLayout(status.Layout);
        var ranks = status.Workers.Select((worker, rank) =>
        {
            var c = layout is not null && rank < layout.WorldSize ? layout.CoordsOf(rank) : default;
            return new RankView(rank, worker, c.Dp, c.Tp, c.Pp);
        }).ToList();
        return new JobPage(RowOf(status), ranks, status.CheckpointDir, status.LastCheckpointStep, status.LastReplicaStep, Checkpoints(status.CheckpointDir),
            Prediction(status.CheckpointDir));
    }

    public Task<JobHistory> History(string id, long sinceStep, int sinceEvent, int max) => Coordinator(id).GetHistory(sinceStep, sinceEvent, max);

    public Task<JobStatus> Status(string id) => Shared($"status/{id}", () => Coordinator(id).GetStatus());

    /// <summary>The figures of a job that the jobs list and the job page show.</summary>
    public static JobRow RowOf(JobStatus s)
    {
        var last = s.Recent.Count > 0 ? s.Recent[^1] : null;
        return new JobRow(s.JobId, s.Name, s.State.ToString().ToLowerInvariant(), s.Step, s.TotalSteps, s.Stage, s.Layout, s.Priority, s.SubmittedAt,
            last?.Loss, last?.TokensPerSecond, s.Error, s.Time is { } time && time.Accounted - time.Queued > 0 ? time.Ettr : null);
    }

    private IJobCoordinatorGrain Coordinator(string id) => grains.GetGrain<IJobCoordinatorGrain>(id);

    private async Task<Dictionary<string, StepRecord>> LastSteps(IReadOnlyList<JobStatus> running)
    {
        var last = new Dictionary<string, StepRecord>();
        foreach (var job in running.Where(j => j.Step > 0))
        {
            try
            {
                var page = await Coordinator(job.JobId).GetHistory(job.Step - 1, int.MaxValue, 1);
                if (page.Steps.Count > 0)
                    last[job.JobId] = page.Steps[^1];
            }
            catch (Exception ex) when (ex is OrleansException or TimeoutException or ClusterRequestException)
            {
                // The map still shows the job's GPUs without their last step.
            }
        }
        return last;
    }

    private async Task<(string State, string? Detail)> WorkerState(string worker)
    {
        try
        {
            var status = await grains.GetGrain<IGpuWorkerGrain>(worker).GetStatus().WaitAsync(WorkerPatience);
            return (status.State.ToString().ToLowerInvariant(), status.Detail);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // Whatever kept it from answering (its server gone, placement refusing it, a timeout), the map shows it so.
            return ("unreachable", ex.GetType().Name);
        }
    }

    private static ParallelLayout? TryLayout(string layout)
    {
        try
        {
            return ParallelLayout.FromConfig(ParallelLayout.Parse(layout));
        }
        catch (Exception ex) when (ex is FlmCluster.Training.FlmUserException or FormatException or ArgumentException)
        {
            return null;
        }
    }

    /// <summary>Largest prediction file read (a prediction has a point per evaluation step).</summary>
    private const long MaxPredictionBytes = 4 << 20;

    /// <summary>
    /// The predicted loss curve of 'flm predict-loss' (its prediction.json, predicted_loss_curve) when one lies in
    /// the job's checkpoint folder; none when there is none or it is not such a file.
    /// </summary>
    private static IReadOnlyList<PredictedLoss> Prediction(string? dir)
    {
        var path = string.IsNullOrWhiteSpace(dir) ? null : Path.Combine(dir, "prediction.json");
        if (path is null || !File.Exists(path) || new FileInfo(path).Length > MaxPredictionBytes)
            return [];
        try
        {
            using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(path));
            if (!json.RootElement.TryGetProperty("predicted_loss_curve", out var curve) || curve.ValueKind != System.Text.Json.JsonValueKind.Array)
                return [];
            var points = curve.EnumerateArray().Select(p => new PredictedLoss(p.GetProperty("step").GetInt64(), p.GetProperty("loss").GetDouble())).ToList();
            return points.All(p => p.Step >= 0 && double.IsFinite(p.Loss)) ? points : [];
        }
        catch (Exception ex) when (ex is System.Text.Json.JsonException or InvalidOperationException or KeyNotFoundException or FormatException or IOException)
        {
            return [];
        }
    }

    private static IReadOnlyList<CheckpointView> Checkpoints(string? dir) =>
        string.IsNullOrWhiteSpace(dir) || !Directory.Exists(dir)
            ? []
            : CheckpointStore.List(dir).Select(e => new CheckpointView(Path.GetFileName(e.Directory), e.Step, e.Valid, e.Problem)).ToList();
}
