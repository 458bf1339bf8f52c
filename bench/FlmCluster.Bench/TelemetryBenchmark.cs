using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Telemetry;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Engine;
using FlmCluster.Silo;
using FlmCluster.Training.Config;

namespace FlmCluster.Bench;

/// <summary>
/// What watching a job costs it: the median step time of the same job on an embedded cluster with none of the
/// observability (plain), with OpenTelemetry (Prometheus exporter) and the Orleans dashboard's grain statistics
/// (exporters), and with, in addition, a dashboard client on the job's and the cluster's live streams and a
/// Prometheus scrape every second (watched). The three alternate, several rounds each. (a) the tiny preset
/// (cl100k vocabulary) with dp=2 over two silos; (b) a step that is nearly only fan-out and collectives: a 1-layer
/// model of width 8 with dp=64 on 4 silos × 16 workers; (c) the added work of (b) piece by piece.
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
        var only = args.Text("only", "tiny,fan-out,components").Split(',');
        if (only.Contains("tiny"))
        {
            var tiny = Presets.Get("tiny");
            tiny = tiny with { Train = tiny.Train with { Steps = args.Int("tiny-steps", 12), Threads = 1 }, Layout = new LayoutConfig { Dp = 2 } };
            await Compare("tiny preset (cl100k), dp=2 on 2 silos × 1", JobValidator.Validate(tiny), nodes: 2, gpus: 1, rounds);
        }
        var fanOut = BenchJobs.Bytes("fan-out", layers: 1, hidden: 8, heads: 1, seqLen: 8, globalBatch: 64, new LayoutConfig { Dp = 64 }, threads: 1);
        fanOut = fanOut with { Train = fanOut.Train with { Steps = args.Int("fan-out-steps", 40) } };
        if (only.Contains("fan-out"))
            await Compare("near-empty step, dp=64 on 4 silos × 16", fanOut, nodes: 4, gpus: 16, rounds);
        if (only.Contains("components"))
        {
            Console.WriteLine();
            await Components(fanOut);
        }
        return 0;
    }

    /// <summary>
    /// The work observation adds, timed piece by piece on an observed cluster that just ran the 64-worker job (its
    /// exporters listening, its 64 ranks' series in /metrics), and added up per step of that job: the coordinator's
    /// figures of a step, every rank's figures, a Prometheus scrape (every 15 s, Prometheus' default, and every
    /// second), and an open job page and cluster map (their reads every 250 ms and 1 s). Each piece is the median of
    /// many timings or a CPU-time measure, so it holds on a busy machine better than the step times above.
    /// </summary>
    private static async Task Components(JobConfig job)
    {
        await using var cluster = await LocalCluster.StartAsync(4, 16, torchThreads: 1, observe: true);
        await using var client = await FlmClusterClient.ConnectAsync(new ClusterProfile { GatewayPorts = cluster.GatewayPorts, ClusterId = cluster.ClusterId });
        var id = await client.Submit(new JobSubmission(Training.Config.JobConfigLoader.ToJson(job)));
        JobStatus status;
        do
        {
            await Task.Delay(100);
            status = await client.Status(id);
        }
        while (!status.State.IsFinal());
        var history = (await client.History(id, 0, 0)).Steps;
        var stepMs = Stats.Median(history.Skip(2).Select(s => s.Point.StepMs));
        var last = history[^1];

        // The coordinator: a step's record, metrics and span, from 64 reports.
        var reports = last.Ranks.Select(r => new WorkerStepReport(last.Point.Step, r.Rank, r.Rank == 0, 1.0, 8, 0.5, false, r.StepMs, r.CommunicationMs, 4096,
            r.PipelineIdleMs, 0)).ToList();
        var workers = last.Ranks.Select(r => r.Worker).ToList();
        var time = new TimeAccount(2, 5, 300, 10, 4, 0, 0, 3, new RecoveryTime(2.7, 0.1, 0.1, 1.1, 0.1, 0.3, 0, 1));
        var coordinator = Median(2000, () =>
        {
            using var activity = StepTelemetry.Start(id, "main", last.Point.Step);
            var record = StepTelemetry.Record(last.Point, job.Model, last.Layout, workers, reports, TimeSpan.FromMilliseconds(last.Point.StepMs), DateTime.UtcNow);
            StepTelemetry.Committed(id, record, time, activity);
        });

        // One rank: its span and metrics of a step.
        using var engine = LocalEngine.Create(job with { Layout = new LayoutConfig() });
        var trainer = engine.Ranks[0];
        var rank = new RankTelemetry(id, "main", "node0/gpu0", trainer.Groups.Coords, trainer.Groups.Rank, new TorchRankExecutors.TorchRank(trainer));
        var report = new RankStepReport(last.Point.Step, 0, true, 1.0, 8, 0.5, false, TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(3), 4096,
            TimeSpan.FromMilliseconds(1));
        var perRank = Median(2000, () =>
        {
            rank.Idle(TimeSpan.FromMilliseconds(1));
            using var activity = rank.StartStep(last.Point.Step, null);
            rank.Stepped(report, activity);
        });

        // The HTTP pieces by the wall time of a request and its answer, all of it counted as work (an upper bound).
        var scrape = await MedianAsync(20, () => Http.GetStringAsync($"{cluster.DashboardUrl}metrics"));
        var jobPoll = await MedianAsync(20, async () =>
        {
            await Task.Delay(250); // past the dashboard's shared read
            await Http.GetStringAsync($"{cluster.DashboardUrl}api/jobs/{id}/history?sinceStep={last.Point.Step + 1}&sinceEvent=1000");
            await Http.GetStringAsync($"{cluster.DashboardUrl}api/jobs/{id}");
        }, excluding: TimeSpan.FromMilliseconds(250));
        var mapPoll = await MedianAsync(10, async () =>
        {
            await Task.Delay(250);
            await Http.GetStringAsync($"{cluster.DashboardUrl}api/cluster");
        }, excluding: TimeSpan.FromMilliseconds(250));
        // What an observed cluster spends when nothing happens (statistics and runtime metrics collected in the
        // background), against a plain one: the process's CPU time over 10 s of each, idle.
        var observedIdle = await IdleCpuPerSecond(observe: true);
        var plainIdle = await IdleCpuPerSecond(observe: false);

        var perStep = new (string Piece, double Ms, double PerStepMs)[]
        {
            ("coordinator: record, metrics and span of a step (64 ranks)", coordinator, coordinator),
            ("every rank: span and metrics of its step (× 64)", perRank, 64 * perRank),
            ("Prometheus scrape of /metrics (64 ranks' series), every 15 s", scrape, scrape * stepMs / 15_000),
            ("open job page: history and status reads, 4 a second", jobPoll, jobPoll * 4 * stepMs / 1000),
            ("open cluster map: 64 workers, jobs, last steps, once a second", mapPoll, mapPoll * stepMs / 1000),
            ($"background collection: CPU ms a second, observed {observedIdle:0.0} − plain {plainIdle:0.0} (idle 4 × 16 cluster)",
                observedIdle - plainIdle, (observedIdle - plainIdle) * stepMs / 1000),
        };
        Console.WriteLine($"(c) the added work piece by piece, per step of the 64-worker job ({stepMs:0.0} ms a step here):");
        Console.WriteLine();

        Console.WriteLine("| piece | ms each | ms per step | share of the step |");
        Console.WriteLine("|---|---|---|---|");
        foreach (var (piece, ms, each) in perStep)
            Console.WriteLine($"| {piece} | {ms:0.000} | {each:0.000} | {100 * each / stepMs:0.00} % |");
        var total = perStep.Sum(p => p.PerStepMs);
        Console.WriteLine($"| total | | {total:0.000} | {100 * total / stepMs:0.00} % |");
        Console.WriteLine($"| with a scrape every second instead | | {total - perStep[2].PerStepMs + scrape * stepMs / 1000:0.000} | {100 * (total - perStep[2].PerStepMs + scrape * stepMs / 1000) / stepMs:0.00} % |");
    }

    /// <summary>Median time of one call, from batches of 100 (ms).</summary>
    private static double Median(int calls, Action call)
    {
        var batches = new List<double>();
        for (var b = 0; b < calls / 100; b++)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            for (var i = 0; i < 100; i++)
                call();
            batches.Add(watch.Elapsed.TotalMilliseconds / 100);
        }
        return Stats.Median(batches);
    }

    private static async Task<double> MedianAsync(int calls, Func<Task> call, TimeSpan excluding = default)
    {
        var times = new List<double>();
        for (var i = 0; i < calls; i++)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            await call();
            times.Add((watch.Elapsed - excluding).TotalMilliseconds);
        }
        return Stats.Median(times);
    }

    /// <summary>CPU ms a second that a fresh 4 × 16 cluster in this process spends idle (after 5 s to settle).</summary>
    private static async Task<double> IdleCpuPerSecond(bool observe)
    {
        await using var cluster = await LocalCluster.StartAsync(4, 16, torchThreads: 1, observe: observe);
        await Task.Delay(5000);
        var process = System.Diagnostics.Process.GetCurrentProcess();
        var cpu = process.TotalProcessorTime;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        await Task.Delay(10_000);
        process.Refresh();
        return (process.TotalProcessorTime - cpu).TotalMilliseconds / watch.Elapsed.TotalSeconds;
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
