using System.Diagnostics;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Bench;

/// <summary>
/// The socket data plane between silo processes on this machine (one rank per silo, loopback TCP between them),
/// each number next to its baseline measured in the same run: all-reduce bus bandwidth for 2, 4 and 8 silos
/// against raw loopback TCP, point-to-point latency against a raw TCP ping-pong, the cost of TLS, the Orleans
/// grain-call plane, and a 2-silo dp=2 job against the in-process engine. The last line is the 2-silo 64 MiB
/// all-reduce's bus bandwidth over one raw TCP stream's, the two measured alternately.
/// </summary>
public static class DataPlaneBenchmark
{
    private const long MiB = 1 << 20;

    public static async Task<int> Run(BenchArgs args)
    {
        var repeats = args.Int("repeats", 5);
        var steps = args.Int("steps", 12);
        Console.WriteLine($"data-plane benchmarks on {Environment.ProcessorCount} cores: silo processes on loopback, one rank (cpu device, 1 torch thread) per silo");
        Console.WriteLine();
        var cert = SelfSignedCertificate();
        double ratio;
        try
        {
            await using var plain = await SiloProcesses.StartAsync(8, 1, "--data-plane", "socket");
            var workers = Enumerable.Range(0, 8).Select(i => $"node{i}/gpu0").ToArray();
            await Times(plain, workers, Enumerable.Repeat(new ProbeOp("all-reduce", 64 * MiB / 4), 3).ToList()); // connections made, code compiled
            await BusBandwidth(plain, workers, repeats);
            await Latency(plain, workers[..2]);
            await using (var tls = await SiloProcesses.StartAsync(2, 1, "--data-plane", "socket", "--data-tls-cert", cert.Certificate, "--data-tls-key", cert.Key))
            await using (var orleans = await SiloProcesses.StartAsync(2, 1, "--data-plane", "orleans"))
                await Planes(plain, tls, orleans, workers[..2], repeats);
            await Throughput(plain, steps);
            ratio = await AgainstTcp(plain, workers[..2], repeats);
        }
        finally
        {
            File.Delete(cert.Certificate);
            File.Delete(cert.Key);
        }
        Console.WriteLine($"bus/tcp ratio: {ratio:0.00}");
        return 0;
    }

    /// <summary>Per op, the slowest rank's milliseconds (every op begins at a barrier).</summary>
    private static async Task<List<double>> Times(SiloProcesses cluster, IReadOnlyList<string> workers, IReadOnlyList<ProbeOp> ops)
    {
        var results = await cluster.Probe(workers, ops);
        return Enumerable.Range(0, ops.Count).Select(i => results.Max(r => r.Milliseconds[i])).ToList();
    }

    /// <summary>All-reduce bus bandwidth, GB/s: bytes ÷ time × 2(n−1)/n, the median of <paramref name="repeats"/> after a warm-up.</summary>
    private static async Task<double> AllReduceBus(SiloProcesses cluster, IReadOnlyList<string> workers, long bytes, int repeats)
    {
        var times = await Times(cluster, workers, Enumerable.Repeat(new ProbeOp("all-reduce", bytes / 4), repeats + 1).ToList());
        var n = workers.Count;
        return bytes / (Stats.Median(times.Skip(1)) / 1000) / 1e9 * 2 * (n - 1) / n;
    }

    private static async Task BusBandwidth(SiloProcesses cluster, string[] workers, int repeats)
    {
        Console.WriteLine($"(a) all-reduce bus bandwidth (bytes ÷ time × 2(n−1)/n), fp32, median of {repeats} after a warm-up; one silo process per rank");
        Console.WriteLine();
        Console.WriteLine("| silos | 4 MiB, GB/s | 64 MiB, GB/s |");
        Console.WriteLine("|---|---|---|");
        foreach (var n in new[] { 2, 4, 8 })
        {
            var small = await AllReduceBus(cluster, workers[..n], 4 * MiB, repeats);
            var large = await AllReduceBus(cluster, workers[..n], 64 * MiB, repeats);
            Console.WriteLine($"| {n} | {small:0.00} | {large:0.00} |");
        }
        Console.WriteLine();
    }

    private static async Task Latency(SiloProcesses cluster, string[] pair)
    {
        const int rounds = 200;
        Console.WriteLine($"(b) point-to-point (pipeline activations and gradients): one-way time of a message sent to the other silo and back, {rounds} round trips");
        Console.WriteLine();
        Console.WriteLine("| bytes | socket data plane, µs | raw loopback TCP, µs |");
        Console.WriteLine("|---|---|---|");
        foreach (var bytes in new[] { 256, 4096, 65536, 1 << 20 })
        {
            var times = await Times(cluster, pair, [new ProbeOp("ping-pong", bytes / 4, Repeat: rounds)]);
            var plane = times[0] * 1000 / rounds / 2;
            Console.WriteLine($"| {bytes:N0} | {plane:0} | {LoopbackTcp.PingPong(bytes, rounds):0} |");
        }
        Console.WriteLine();
    }

    private static async Task Planes(SiloProcesses plain, SiloProcesses tls, SiloProcesses orleans, string[] pair, int repeats)
    {
        // Alternately, so that both see the same machine.
        var (withTls, without, grainCalls) = (new List<double>(), new List<double>(), 0.0);
        for (var i = 0; i < repeats; i++)
        {
            without.Add(await AllReduceBus(plain, pair, 64 * MiB, 1));
            withTls.Add(await AllReduceBus(tls, pair, 64 * MiB, 1));
        }
        grainCalls = await AllReduceBus(orleans, pair, 64 * MiB, Math.Min(repeats, 3));
        var (p, t) = (Stats.Median(without), Stats.Median(withTls));
        Console.WriteLine($"(c) 64 MiB all-reduce between two silos by data plane, measured alternately ({repeats} each)");
        Console.WriteLine();
        Console.WriteLine("| data plane | bus GB/s | vs socket |");
        Console.WriteLine("|---|---|---|");
        Console.WriteLine($"| socket (plain TCP) | {p:0.00} | 1.00 |");
        Console.WriteLine($"| socket with TLS (ECDSA P-256 certificate, TLS 1.3) | {t:0.00} | {t / p:0.00} |");
        Console.WriteLine($"| orleans (grain calls, 4 MiB chunks) | {grainCalls:0.00} | {grainCalls / p:0.00} |");
        Console.WriteLine();
        Console.WriteLine($"TLS cost: the TLS plane moves {t / p:0.00}× the plain plane's bytes per second");
        Console.WriteLine();
    }

    private static async Task Throughput(SiloProcesses cluster, int steps)
    {
        var job = JobConfigLoader.Load("tiny", [$"train.steps={steps}", "train.threads=1"], j => j with { Layout = new LayoutConfig { Dp = 2 } });
        var before = InProcess(job);
        var id = await cluster.Client.Submit(new JobSubmission(JobConfigLoader.ToJson(job)));
        JobStatus status;
        do
        {
            await Task.Delay(200);
            status = await cluster.Client.Status(id);
        }
        while (!status.State.IsFinal());
        if (status.State != JobPhase.Completed)
            throw new InvalidOperationException($"the benchmark job ended {status.State}: {status.Error}");
        // Steady state: the steps after the first two, from the coordinator's per-step wall time.
        var steady = status.Recent.Skip(2).ToList();
        var clustered = steady.Sum(p => p.Tokens) / steady.Sum(p => p.StepMs / 1000);
        var comm = steady.Average(p => p.CommFraction);
        var local = (before + InProcess(job)) / 2; // before and after the cluster's run: the machine's load drifts
        Console.WriteLine($"(d) the tiny preset (4 × 128, cl100k vocabulary: {job.Model.ParameterCount / 1e6:0.0} M parameters, {job.Model.ParameterCount * 4 / 1e6:0} MB of fp32 gradients per step), layout dp=2, {steps} steps, steady state after 2; 1 torch thread per rank");
        Console.WriteLine();
        Console.WriteLine("| engine | tokens/s | vs in-process |");
        Console.WriteLine("|---|---|---|");
        Console.WriteLine($"| in-process (2 ranks as threads of one process; mean of a run before and one after) | {local:N0} | 1.00 |");
        Console.WriteLine($"| 2 silo processes, socket data plane (communication {comm:P0} of a step) | {clustered:N0} | {clustered / local:0.00} |");
        Console.WriteLine();
    }

    private static double InProcess(JobConfig job)
    {
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job, data);
        engine.RunStep();
        engine.RunStep();
        var watch = Stopwatch.StartNew();
        for (var i = 2; i < job.Train.Steps; i++)
            engine.RunStep();
        return (job.Train.Steps - 2.0) * job.Train.GlobalBatch * job.Model.SeqLen / watch.Elapsed.TotalSeconds;
    }

    private static async Task<double> AgainstTcp(SiloProcesses cluster, string[] pair, int repeats)
    {
        var (tcp, duplex, bus) = (new List<double>(), new List<double>(), new List<double>());
        for (var i = 0; i < repeats; i++)
        {
            tcp.Add(LoopbackTcp.Stream(4 * 64 * MiB));
            bus.Add(await AllReduceBus(cluster, pair, 64 * MiB, 1));
            duplex.Add(LoopbackTcp.Duplex(2 * 64 * MiB));
        }
        var (t, d, b) = (Stats.Median(tcp), Stats.Median(duplex), Stats.Median(bus));
        Console.WriteLine($"(e) 64 MiB all-reduce between two silos against raw loopback TCP between two threads, alternately, median of {repeats}");
        Console.WriteLine();
        Console.WriteLine("| measure | GB/s |");
        Console.WriteLine("|---|---|");
        Console.WriteLine($"| raw TCP, one stream, 4 MiB writes | {t:0.00} |");
        Console.WriteLine($"| raw TCP, two streams in opposite directions at once, each (what any 2-rank all-reduce needs: S each way) | {d:0.00} |");
        Console.WriteLine($"| all-reduce bus bandwidth, socket data plane | {b:0.00} |");
        Console.WriteLine($"| bus / two-way TCP | {b / d:0.00} |");
        Console.WriteLine();
        return b / t;
    }

    /// <summary>A self-signed certificate and key as PEM files (one certificate shared by the silos).</summary>
    private static (string Certificate, string Key) SelfSignedCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var certificate = new CertificateRequest("CN=flm-bench", key, HashAlgorithmName.SHA256)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
        var (certFile, keyFile) = (Path.GetTempFileName(), Path.GetTempFileName());
        File.WriteAllText(certFile, certificate.ExportCertificatePem());
        File.WriteAllText(keyFile, key.ExportPkcs8PrivateKeyPem());
        return (certFile, keyFile);
    }
}
