using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Silo;
using FlmCluster.Training.Config;

namespace FlmCluster.Bench;

/// <summary>
/// What watching a job costs it: the median step time of the same job on an embedded cluster with none of the
/// observability (plain), with OpenTelemetry (Prometheus exporter) and the Orleans dashboard's grain statistics
/// (exporters), and with, in addition, a dashboard client on the job's and the cluster's live streams and a
/// Prometheus scrape every second (watched). The three alternate, several rounds each. (a) the tiny preset (cl100k vocabulary) with dp=2 over two silos;
/// (b) a step that is nearly only fan-out and collectives: a 1-layer model of width 8 with dp=64 on 4 silos × 16
/// workers.
/// </summary>
public static class TelemetryBenchmark
{
    public static async Task<int> Run(BenchArgs args)
    {
        var rounds = args.Int("rounds", 3);
        Console.WriteLine($"telemetry and dashboard overhead on {Environment.ProcessorCount} cores; {rounds} rounds of the three modes in turn; per run the median step");
        Console.WriteLine("time and the process's CPU time per step (all silos run in this process), first 2 steps left out; then the median over rounds");
        Console.WriteLine();
        Console.WriteLine("| job | measure | plain | exporters | exporters + dashboard + scraper | overhead |");
        Console.WriteLine("|---|---|---|---|---|---|");
        var only = args.Text("only", "tiny,fan-out").Split(',');
        if (only.Contains("tiny"))
        {
            var tiny = Presets.Get("tiny");
            tiny = tiny with { Train = tiny.Train with { Steps = args.Int("tiny-steps", 12), Threads = 1 }, Layout = new LayoutConfig { Dp = 2 } };
            await Compare("tiny preset (cl100k), dp=2 on 2 silos × 1", JobValidator.Validate(tiny), nodes: 2, gpus: 1, rounds);
        }
        if (only.Contains("fan-out"))
        {
            var fanOut = BenchJobs.Bytes("fan-out", layers: 1, hidden: 8, heads: 1, seqLen: 8, globalBatch: 64, new LayoutConfig { Dp = 64 }, threads: 1);
            fanOut = fanOut with { Train = fanOut.Train with { Steps = args.Int("fan-out-steps", 40) } };
            await Compare("near-empty step, dp=64 on 4 silos × 16", fanOut, nodes: 4, gpus: 16, rounds);
        }
        return 0;
    }

    private enum Mode { Plain, Exporters, Watched }

    private static async Task Compare(string name, JobConfig job, int nodes, int gpus, int rounds)
    {
        var runs = Enum.GetValues<Mode>().ToDictionary(m => m, _ => new List<(double Wall, double Cpu)>());
        for (var round = 0; round < rounds; round++)
            foreach (var mode in Enum.GetValues<Mode>())
                runs[mode].Add(await Run(job, nodes, gpus, mode));
        foreach (var (measure, pick) in new (string, Func<(double Wall, double Cpu), double>)[] { ("wall ms/step", r => r.Wall), ("CPU ms/step", r => r.Cpu) })
        {
            var (p, e, w) = (Stats.Median(runs[Mode.Plain].Select(pick)), Stats.Median(runs[Mode.Exporters].Select(pick)), Stats.Median(runs[Mode.Watched].Select(pick)));
            Console.WriteLine($"| {name} | {measure} | {p:0.00} | {e:0.00} | {w:0.00} | {100 * (w - p) / p:+0.0;-0.0} % |");
        }
        foreach (var (mode, times) in runs)
            Console.Error.WriteLine($"  {name}, {mode}: wall {string.Join(", ", times.Select(x => $"{x.Wall:0.00}"))}; CPU {string.Join(", ", times.Select(x => $"{x.Cpu:0.00}"))}");
    }

    /// <summary>One run: the median step time, and the process's CPU time per step over the steps after the first two.</summary>
    private static async Task<(double Wall, double Cpu)> Run(JobConfig job, int nodes, int gpus, Mode mode)
    {
        var observe = mode != Mode.Plain;
        await using var cluster = await LocalCluster.StartAsync(nodes, gpus, torchThreads: 1, observe: observe);
        await using var client = await FlmClusterClient.ConnectAsync(new ClusterProfile { GatewayPorts = cluster.GatewayPorts, ClusterId = cluster.ClusterId });
        var id = await client.Submit(new JobSubmission(Training.Config.JobConfigLoader.ToJson(job)));
        using var stop = new CancellationTokenSource();
        var watchers = mode == Mode.Watched
            ? [Stream($"{cluster.DashboardUrl}api/stream/jobs/{id}", stop.Token), Stream($"{cluster.DashboardUrl}api/stream/cluster", stop.Token),
                Scrape($"{cluster.DashboardUrl}metrics", stop.Token)]
            : Array.Empty<Task>();
        JobStatus status;
        (long Step, TimeSpan Cpu)? from = null;
        do
        {
            await Task.Delay(50);
            status = await client.Status(id);
            if (from is null && status.Step >= 2)
                from = (status.Step, System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime);
        }
        while (!status.State.IsFinal());
        var cpu = System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime;
        await stop.CancelAsync();
        await Task.WhenAll(watchers);
        if (status.State != JobPhase.Completed)
            throw new InvalidOperationException($"job {id} ended {status.State}: {status.Error}");
        var steps = (await client.History(id, 2, 0)).Steps;
        return (Stats.Median(steps.Select(s => s.Point.StepMs)), (cpu - from!.Value.Cpu).TotalMilliseconds / (status.Step - from.Value.Step));
    }

    private static readonly HttpClient Http = new() { Timeout = Timeout.InfiniteTimeSpan };

    /// <summary>A dashboard page's live stream, read to its end as a browser would.</summary>
    private static async Task Stream(string url, CancellationToken stop)
    {
        try
        {
            using var response = await Http.GetAsync(url, HttpCompletionOption.ResponseHeadersRead, stop);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(stop));
            while (await reader.ReadLineAsync(stop) is not null)
            {
            }
        }
        catch (OperationCanceledException)
        {
            // the job ended
        }
    }

    /// <summary>A Prometheus server scraping every second (its default is every 15 s).</summary>
    private static async Task Scrape(string url, CancellationToken stop)
    {
        try
        {
            while (!stop.IsCancellationRequested)
            {
                await Http.GetStringAsync(url, stop);
                await Task.Delay(1000, stop);
            }
        }
        catch (OperationCanceledException)
        {
            // the job ended
        }
    }
}
