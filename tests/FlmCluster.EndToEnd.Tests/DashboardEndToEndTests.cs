using System.Diagnostics;
using System.Text.Json;
using Microsoft.Playwright;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// The dashboard in a real headless Chromium, served by the control-plane silo of a three-process cluster (Redis
/// membership): the cluster map, a job's page with its loss curve, and the job's timeline as a server is killed
/// (kill -9) and the job restores on the one that remains, all without reloading the page.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class DashboardEndToEndTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromMinutes(3);
    private readonly Flm _flm = new("flm-e2e-dashboard-");

    public void Dispose() => _flm.Dispose();

    [Fact]
    public async Task The_dashboard_shows_the_cluster_and_follows_a_job_through_the_loss_of_a_server()
    {
        _flm.Environment["Flm__WorkerWaitSeconds"] = "3";
        _flm.Environment["Flm__PeakTflops"] = "0.5";
        _flm.Up(nodes: 2, gpusPerNode: 2, basePort: 21611);
        var dashboard = $"http://127.0.0.1:{_flm.SiloHttpPorts()[0]}/"; // the control-plane silo outlives the server killed below
        await using var browser = await Browser.Launch();

        // The cluster map: every server and every GPU.
        var map = await browser.Open(dashboard);
        await map.WaitForSelectorAsync(".gpu[data-worker='node1/gpu1']");
        Assert.Equal(["control", "node0", "node1"], (await map.Locator(".node").EvaluateAllAsync<string[]>("els => els.map(e => e.dataset.node)")).Order());
        Assert.Equal(["node0/gpu0", "node0/gpu1", "node1/gpu0", "node1/gpu1"],
            (await map.Locator(".gpu").EvaluateAllAsync<string[]>("els => els.map(e => e.dataset.worker)")).Order());

        var root = Path.Combine(_flm.Home, "ckpt");
        var submit = _flm.Run("submit", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128", "--set", "model.seq_len=64",
            "--steps", "2000", "--layout", "dp=2,tp=2", "--set", $"checkpoint.dir={root}", "--set", "checkpoint.interval=10");
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var job = submit.Output.Trim();

        // The map follows the job without a reload: its ranks appear on their GPUs.
        await map.WaitForSelectorAsync($".gpu[data-worker='node1/gpu1'] a[href='#/jobs/{job}']", new() { Timeout = (float)Patience.TotalMilliseconds });
        await map.WaitForFunctionAsync("() => [...document.querySelectorAll('.gpu')].every(g => g.classList.contains('training') || g.classList.contains('ready'))"
            + " && [...document.querySelectorAll('.gpu .bar > div')].every(b => b.style.width !== '0%')", null, Wait());
        await Browser.Screenshot(map, "dashboard-cluster.png");

        // A loss prediction in the job's checkpoint folder, as 'flm predict-loss' writes it: every 5th step.
        Directory.CreateDirectory(root);
        var predicted = Enumerable.Range(0, 100).Select(i => (Step: 5L * i, Loss: 6.0 - 0.03125 * i)).ToList();
        File.WriteAllText(Path.Combine(root, "prediction.json"), JsonSerializer.Serialize(new
        {
            predicted_loss_curve = predicted.Select(p => new { step = p.Step, loss = p.Loss }),
        }));

        // The job page: one point of the loss curve per committed step, the losses the job reported.
        var page = await browser.Open($"{dashboard}#/jobs/{job}");
        await page.WaitForFunctionAsync("() => window.flmCharts.loss && flmCharts.loss.data[0].length >= 15", null, Wait());
        Assert.Equal(0, _flm.Run("pause", job).ExitCode);
        long step;
        while (true)
        {
            using var status = JsonDocument.Parse(_flm.Run("status", job, "--json").Output);
            if (status.RootElement.GetProperty("state").GetString() == "paused")
            {
                step = status.RootElement.GetProperty("step").GetInt64();
                break;
            }
            Thread.Sleep(100);
        }
        await page.WaitForFunctionAsync($"() => flmCharts.loss.data[0].length === {step}", null, Wait());
        var steps = await page.EvaluateAsync<long[]>("() => flmCharts.loss.data[0]");
        var losses = await page.EvaluateAsync<double[]>("() => flmCharts.loss.data[1]");
        var logs = _flm.Run("logs", job, "--json").Output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => JsonDocument.Parse(l).RootElement).Where(l => l.GetProperty("type").GetString() == "step").ToList();
        Assert.Equal(Enumerable.Range(0, (int)step).Select(i => (long)i), steps);
        Assert.Equal(logs.Select(l => l.GetProperty("loss").GetDouble()), losses);
        var prediction = await page.EvaluateAsync<double?[]>("() => flmCharts.loss.data[2]");
        Assert.Equal(steps.Select(s => s % 5 == 0 ? predicted[(int)(s / 5)].Loss : (double?)null), prediction);
        Assert.Equal(4, await page.Locator("#layout tbody tr").CountAsync());
        Assert.Equal(0, _flm.Run("resume", job).ExitCode);
        await page.WaitForFunctionAsync($"() => flmCharts.loss.data[0].length > {step + 5}", null, Wait());
        await Browser.Screenshot(page, "dashboard-job.png");

        // A server dies for good once a checkpoint is committed: the open page shows the loss and the restore.
        var watch = Stopwatch.StartNew();
        while (!(Directory.Exists(root) && Directory.GetFiles(root, "manifest.json", SearchOption.AllDirectories).Length > 0) && watch.Elapsed < Patience)
            Thread.Sleep(20);
        await page.EvaluateAsync("() => { window.stillTheSamePage = true; }");
        Process.GetProcessById(_flm.SiloPid("node1")).Kill();
        await page.WaitForSelectorAsync(".timeline .ev[data-kind='workers-lost']", WaitSelector());
        await page.WaitForSelectorAsync(".timeline .ev[data-kind='shrunk']", WaitSelector());
        var pointsAtRestore = await page.EvaluateAsync<int>("() => flmCharts.loss.data[0].length");
        await page.WaitForFunctionAsync($"() => flmCharts.loss.data[0].length > {pointsAtRestore + 5}", null, Wait());
        Assert.True(await page.EvaluateAsync<bool>("() => window.stillTheSamePage === true"), "the page was reloaded");
        var kinds = await page.Locator(".timeline .ev").EvaluateAllAsync<string[]>("els => els.map(e => e.dataset.kind).reverse()");
        var lost = Array.IndexOf(kinds, "workers-lost");
        Assert.True(lost >= 0 && Array.IndexOf(kinds, "shrunk") > lost && Array.LastIndexOf(kinds, "started") > lost, string.Join(", ", kinds));
        Assert.Contains("layout dp=1,tp=2,pp=1", await page.Locator(".timeline .ev[data-kind='shrunk']").InnerTextAsync());
        // The recovery cost training time: the job's ETTR is below 100 %, and the same in the jobs list.
        var ettr = await page.Locator(".stat", new() { Has = page.Locator(".k", new() { HasTextRegex = new System.Text.RegularExpressions.Regex("^ETTR$") }) }).Locator(".v").InnerTextAsync();
        Assert.Matches(@"^\d{1,2}\.\d %$", ettr);
        await Browser.Screenshot(page, "dashboard-job-after-server-loss.png");

        Assert.Empty(browser.Errors);

        // The history (in Redis here) has every step once: the steps redone after the restore replaced their records.
        var history = _flm.Run("logs", job, "--json").Output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => JsonDocument.Parse(l).RootElement).Where(l => l.GetProperty("type").GetString() == "step")
            .Select(l => l.GetProperty("step").GetInt64()).ToList();
        Assert.Equal(Enumerable.Range(0, history.Count).Select(i => (long)i), history);
        Assert.True(history.Count > pointsAtRestore, $"{history.Count} steps");

        // The Orleans dashboard is mounted beside it.
        using var http = new HttpClient();
        var orleans = await http.GetAsync($"{dashboard}orleans/", TestContext.Current.CancellationToken);
        Assert.Equal(System.Net.HttpStatusCode.OK, orleans.StatusCode);
        Assert.Contains("<html", await orleans.Content.ReadAsStringAsync(TestContext.Current.CancellationToken), StringComparison.OrdinalIgnoreCase);
        Assert.Equal(0, _flm.Run("cancel", job).ExitCode);
    }

    private static PageWaitForSelectorOptions WaitSelector() => new() { Timeout = (float)Patience.TotalMilliseconds };

    private static PageWaitForFunctionOptions Wait() => new() { Timeout = (float)Patience.TotalMilliseconds, PollingInterval = 100 };
}
