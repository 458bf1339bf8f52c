using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// Telemetry of a job on three silo processes (two GPU servers with two CPU devices each and a control-plane node,
/// Redis membership): each silo's Prometheus endpoint scraped while the job is paused and after it ends, OTLP
/// traces received by an in-test receiver, and the client's scripting surface (--json, logs, pause/resume).
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class TelemetryEndToEndTests : IDisposable
{
    private const int Steps = 240; // long enough to pause it while it runs, however slowly the client's status calls come
    private const int TokensPerStep = 8 * 64; // train.global_batch × model.seq_len
    private const int Ranks = 4;

    private readonly Flm _flm = new("flm-e2e-telemetry-");
    private readonly OtlpReceiver _otlp = new();

    public void Dispose()
    {
        _flm.Dispose();
        _otlp.Dispose();
    }

    [Fact]
    public async Task Silos_export_step_metrics_per_rank_series_and_step_traces_and_the_client_scripts_them()
    {
        _flm.Environment["Flm__Exporters"] = "prometheus,otlp";
        _flm.Environment["Flm__OtlpEndpoint"] = _otlp.Endpoint;
        _flm.Environment["Flm__PeakTflops"] = "0.5";
        // Every span must arrive: on a loaded test machine an export may wait past the default 10 s, and a batch
        // that times out is dropped unless the exporter retries it.
        _flm.Environment["OTEL_EXPORTER_OTLP_TIMEOUT"] = "60000";
        _flm.Environment["OTEL_DOTNET_EXPERIMENTAL_OTLP_RETRY"] = "in_memory";
        _flm.Up(nodes: 2, gpusPerNode: 2, basePort: 21511);
        var metrics = _flm.SiloHttpPorts().Select(p => $"http://127.0.0.1:{p}/metrics").ToList();
        Assert.Equal(3, metrics.Count);

        var submit = _flm.Run("submit", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128",
            "--set", "model.seq_len=64", "--set", "train.global_batch=8", "--steps", $"{Steps}", "--layout", "dp=2,tp=2",
            "--set", $"checkpoint.dir={Path.Combine(_flm.Home, "ckpt")}", "--set", "checkpoint.interval=10", "--set", "checkpoint.memory_interval=5");
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var job = submit.Output.Trim();

        // Paused mid-job, the figures stand still: each metric is compared with the job's own account of its steps.
        var watch = Stopwatch.StartNew();
        while (Status(job).GetProperty("step").GetInt64() < 3 && watch.Elapsed < TimeSpan.FromMinutes(3))
            Thread.Sleep(100);
        var pause = _flm.Run("pause", job);
        Assert.True(pause.ExitCode == 0, pause.Output + pause.Error);
        Assert.Equal($"paused {job}", pause.Output.Trim());
        JsonElement paused;
        while ((paused = Status(job)).GetProperty("state").GetString() != "paused")
            Thread.Sleep(100);
        var pausedAt = paused.GetProperty("step").GetInt64();
        await AssertMetrics(metrics, job, pausedAt);
        Assert.Equal(2, _flm.Run("pause", job).ExitCode); // only a running job can be paused

        Assert.Equal(0, _flm.Run("resume", job).ExitCode);
        var follow = _flm.Run("status", job, "--watch");
        Assert.True(follow.ExitCode == 0, follow.Output + follow.Error);
        Assert.Contains($"{job}: completed at step {Steps}/{Steps}", follow.Output);
        Assert.Contains($"step {Steps,6}/{Steps}", follow.Error); // progress goes to standard error
        await AssertMetrics(metrics, job, Steps);
        await AssertInfraFilesNameExportedMetrics(metrics);

        AssertScripting(job);
        AssertTraces(job);
        AssertLogs(job);
    }

    /// <summary>The silos' logs reach OTLP as structured records: the job's end with its fields as attributes.</summary>
    private void AssertLogs(string job)
    {
        var watch = Stopwatch.StartNew();
        ReceivedLog? completed;
        while ((completed = _otlp.Logs.FirstOrDefault(l => l.Attributes.TryGetValue("Job", out var j) && (string)j == job
                   && l.Attributes.TryGetValue("Kind", out var k) && (string)k == "completed")) is null && watch.Elapsed < TimeSpan.FromSeconds(60))
            Thread.Sleep(250);
        Assert.NotNull(completed);
        Assert.StartsWith($"all {Steps} steps done", (string)completed.Attributes["Message"]);
        Assert.Equal($"Job {job} completed: {completed.Attributes["Message"]}", completed.Body);
    }

    /// <summary>Tokens, loss and per-rank series over every silo's endpoint, exactly as the job's history has them.</summary>
    private async Task AssertMetrics(IReadOnlyList<string> endpoints, string job, long steps)
    {
        var samples = (await Task.WhenAll(endpoints.Select(Prometheus.Scrape))).SelectMany(s => s).Where(s => s["flm_job"] == job).ToList();
        var history = Logs(job).Where(l => l.GetProperty("type").GetString() == "step").ToList();
        Assert.Equal(steps, history.Count);

        var tokens = samples.Where(s => s.Name == "flm_job_tokens_total").Sum(s => s.Value);
        Assert.Equal(steps * TokensPerStep, tokens);
        Assert.Equal(steps, samples.Where(s => s.Name == "flm_job_steps_total").Sum(s => s.Value));
        var loss = Assert.Single(samples, s => s.Name == "flm_job_loss");
        Assert.Equal(history[^1].GetProperty("loss").GetDouble(), loss.Value);
        var mfu = Assert.Single(samples, s => s.Name == "flm_job_mfu");
        Assert.Equal(history[^1].GetProperty("mfu").GetDouble(), mfu.Value);
        // Where the job's time went, as of its last committed step: every use one series, ETTR their productive share.
        var time = samples.Where(s => s.Name == "flm_job_time_seconds").ToDictionary(s => s["flm_use"]!, s => s.Value);
        Assert.Equal(["checkpoint_stall", "growth", "overhead", "paused", "productive", "queued", "recovery", "redone", "startup"], time.Keys.Order());
        var ettr = Assert.Single(samples, s => s.Name == "flm_job_ettr").Value;
        Assert.Equal(time["productive"] / (time.Values.Sum() - time["queued"]), ettr, 1e-9);

        for (var rank = 0; rank < Ranks; rank++)
        {
            var r = $"{rank}";
            foreach (var name in new[] { "flm_rank_step_duration_seconds_count", "flm_rank_step_compute_duration_seconds_count",
                         "flm_rank_step_communication_duration_seconds_count", "flm_rank_step_pipeline_idle_duration_seconds_count" })
            {
                var series = Assert.Single(samples, s => s.Name == name && s["flm_rank"] == r);
                Assert.Equal(steps, series.Value);
                Assert.Equal($"{rank % 2}", series["flm_tp"]);
                Assert.Equal($"{rank / 2}", series["flm_dp"]);
                Assert.Equal("0", series["flm_pp"]);
                Assert.Equal(rank < 2 ? "node0" : "node1", series["flm_node"]);
                Assert.Equal($"gpu{rank % 2}", series["flm_gpu"]);
            }
            Assert.Single(samples, s => s.Name == "flm_rank_memory_parameters_bytes" && s["flm_rank"] == r && s.Value > 0);
            Assert.Single(samples, s => s.Name == "flm_rank_memory_optimizer_bytes" && s["flm_rank"] == r && s.Value > 0);
        }
    }

    /// <summary>Every metric and label the Grafana dashboard under infra/ queries is one the silos export.</summary>
    private static async Task AssertInfraFilesNameExportedMetrics(IReadOnlyList<string> endpoints)
    {
        var samples = (await Task.WhenAll(endpoints.Select(Prometheus.Scrape))).SelectMany(s => s).ToList();
        var exported = samples.Select(s => s.Name).Concat(samples.SelectMany(s => s.Labels.Keys)).ToHashSet();
        var grafana = File.ReadAllText(Path.Combine(Repository.Root(), "infra", "grafana", "flmcluster-dashboard.json"));
        var queried = System.Text.RegularExpressions.Regex.Matches(grafana, @"\b(flm|process)_[a-z_]+\b").Select(m => m.Value).ToHashSet();
        Assert.True(queried.Count >= 20, $"the dashboard queries only {queried.Count} metrics");
        Assert.All(queried, q => Assert.Contains(q, exported));
    }

    private void AssertScripting(string job)
    {
        var jobs = Json(_flm.Run("jobs", "--json"));
        var row = Assert.Single(jobs.EnumerateArray(), j => j.GetProperty("job").GetString() == job);
        Assert.Equal("completed", row.GetProperty("state").GetString());
        Assert.Equal(Steps, row.GetProperty("total_steps").GetInt64());

        var status = Status(job);
        Assert.Equal(Enumerable.Range(0, Ranks), status.GetProperty("ranks").EnumerateArray().Select(r => r.GetProperty("rank").GetInt32()));
        Assert.Equal("dp=2,tp=2,pp=1", status.GetProperty("layout").GetString());

        var nodes = Json(_flm.Run("nodes", "--json"));
        Assert.Equal(4, nodes.GetProperty("total_gpus").GetInt32());
        Assert.Equal(["control", "node0", "node1"], nodes.GetProperty("nodes").EnumerateArray().Select(n => n.GetProperty("node").GetString()!).Order());

        // The whole history, no cap; --since starts at a step; events come with their index from 0.
        var all = Logs(job);
        Assert.Equal(Enumerable.Range(0, Steps).Select(i => (long)i),
            all.Where(l => l.GetProperty("type").GetString() == "step").Select(l => l.GetProperty("step").GetInt64()));
        var events = all.Where(l => l.GetProperty("type").GetString() == "event").ToList();
        Assert.Equal(Enumerable.Range(0, events.Count).Select(i => (long)i), events.Select(e => e.GetProperty("index").GetInt64()));
        // The lifecycle in order. Saves and replicas come on their intervals; a straggler report depends on how
        // busy this machine is (a loaded 2-core runner slows one silo's ranks), and is only a report here.
        Assert.Equal(["submitted", "allocated", "started", "paused", "resumed", "completed"],
            events.Select(e => e.GetProperty("kind").GetString()!).Where(k => k is not ("checkpoint" or "replica" or "straggler")));
        Assert.Contains(events, e => e.GetProperty("kind").GetString() == "checkpoint");
        var since = Logs(job, "--since", $"{Steps - 4}");
        Assert.Equal(Enumerable.Range(Steps - 4, 4).Select(i => (long)i),
            since.Where(l => l.GetProperty("type").GetString() == "step").Select(l => l.GetProperty("step").GetInt64()));
        var step = all.First(l => l.GetProperty("type").GetString() == "step");
        Assert.Equal(TokensPerStep, step.GetProperty("tokens").GetInt64());
        Assert.Equal(Ranks, step.GetProperty("ranks").GetArrayLength());

        var text = _flm.Run("logs", job);
        Assert.Equal(0, text.ExitCode);
        Assert.Contains($"[completed] all {Steps} steps done", text.Output);
        Assert.Equal(2, _flm.Run("logs", job, "--since", "-1").ExitCode);
    }

    /// <summary>One "job.step" span per step at the coordinator, with exactly one "rank.step" child per rank.</summary>
    private void AssertTraces(string job)
    {
        var watch = Stopwatch.StartNew();
        List<ReceivedSpan> steps, ranks;
        while (true)
        {
            var spans = _otlp.Spans.Where(s => s.Attributes.TryGetValue("flm.job", out var j) && (string)j == job).ToList();
            steps = spans.Where(s => s.Name == "job.step").ToList();
            ranks = spans.Where(s => s.Name == "rank.step").ToList();
            if ((steps.Count >= Steps && ranks.Count >= Steps * Ranks) || watch.Elapsed > TimeSpan.FromSeconds(120))
                break;
            Thread.Sleep(250); // the exporter sends in batches every few seconds
        }
        var all = _otlp.Spans;
        Assert.True(steps.Count == Steps, $"{steps.Count} job.step spans of {job} after {watch.Elapsed.TotalSeconds:F0} s; "
            + $"missing steps {string.Join(",", Enumerable.Range(0, Steps).Except(steps.Select(x => (int)x.Long("flm.step"))))}; "
            + $"{_otlp.Exports} exports received, {all.Count} spans in all: "
            + string.Join(", ", all.GroupBy(s => s.Name).Select(g => $"{g.Key} ×{g.Count()}")));
        Assert.Equal(Enumerable.Range(0, Steps).Select(i => (long)i), steps.Select(s => s.Long("flm.step")).Order());
        foreach (var step in steps)
        {
            var children = ranks.Where(r => r.ParentSpanId == step.SpanId).ToList();
            Assert.Equal(Enumerable.Range(0, Ranks).Select(i => (long)i), children.Select(c => c.Long("flm.rank")).Order());
            Assert.All(children, c =>
            {
                Assert.Equal(step.TraceId, c.TraceId);
                Assert.Equal(step.Long("flm.step"), c.Long("flm.step"));
            });
        }
        Assert.Equal(Steps * Ranks, ranks.Count);
    }

    private JsonElement Status(string job) => Json(_flm.Run("status", job, "--json"));

    private List<JsonElement> Logs(string job, params string[] more)
    {
        var logs = _flm.Run(["logs", job, "--json", .. more]);
        Assert.True(logs.ExitCode == 0, logs.Output + logs.Error);
        return logs.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
    }

    private static JsonElement Json(FlmCluster.Tests.Process.FlmResult result)
    {
        Assert.True(result.ExitCode == 0, result.Output + result.Error);
        return JsonDocument.Parse(result.Output).RootElement.Clone();
    }
}
