using FlmCluster.Client;

namespace FlmCluster.Bench;

/// <summary>
/// What secure mode costs (mutual TLS between silos, TLS at the gateway, the access filter checking the operator's
/// token on every client call) against open mode, on the same local clusters of this process's silos (loopback
/// TCP): (a) the empty-step fan-out to 4, 16 and 64 workers on 4 silos; (b) a 64 MiB all-reduce between two silos,
/// every byte by grain calls. Open and secure clusters alternate, pass after pass; each figure is the median of its passes.
/// </summary>
public static class SecurityBenchmark
{
    public static async Task<int> Run(BenchArgs args)
    {
        var rounds = args.Int("rounds", 200);
        var passes = args.Int("passes", 3);
        var mib = args.Int("mib", 64);
        var repeats = args.Int("repeats", 5);
        var folder = Directory.CreateTempSubdirectory("flm-bench-credentials-").FullName;
        try
        {
            var credentials = CredentialFiles.Create(folder, [], TimeSpan.FromDays(1));
            Console.WriteLine($"secure vs open mode on {Environment.ProcessorCount} cores; silos in this process, loopback TCP; {passes} passes, open and secure alternating");
            Console.WriteLine();
            var fanOut = new Dictionary<(bool Secure, int PerSilo), List<double>>();
            var allReduce = new Dictionary<bool, List<double>>();
            for (var pass = 0; pass < passes; pass++)
            {
                foreach (var secure in new[] { false, true })
                {
                    var (cluster, client) = await ClusterBenchmark.Start(4, 16, secure ? credentials : null);
                    await using (cluster)
                    await using (client)
                        foreach (var perSilo in ClusterBenchmark.FanOutWidths)
                            Add(fanOut, (secure, perSilo), Stats.Median(await ClusterBenchmark.FanOut(client, perSilo, rounds)));
                    (cluster, client) = await ClusterBenchmark.Start(2, 1, secure ? credentials : null);
                    await using (cluster)
                    await using (client)
                        Add(allReduce, secure, await ClusterBenchmark.AllReduce(client, (long)mib << 20, repeats));
                }
            }
            Console.WriteLine($"(a) empty step to every worker, median ms of {rounds} rounds (after 20 warm-up), median of the passes");
            Console.WriteLine();
            Console.WriteLine("| workers | open ms | secure ms | secure / open |");
            Console.WriteLine("|---|---|---|---|");
            foreach (var perSilo in ClusterBenchmark.FanOutWidths)
            {
                var (open, secure) = (Stats.Median(fanOut[(false, perSilo)]), Stats.Median(fanOut[(true, perSilo)]));
                Console.WriteLine($"| {4 * perSilo} | {open:0.00} | {secure:0.00} | {secure / open:0.00} |");
            }
            Console.WriteLine();
            Console.WriteLine($"(b) all-reduce of {mib} MiB between two silos by grain calls, {repeats} repeats, GB/s (algorithm bandwidth), median of the passes");
            Console.WriteLine();
            Console.WriteLine("| open GB/s | secure GB/s | secure / open |");
            Console.WriteLine("|---|---|---|");
            var (openBw, secureBw) = (Stats.Median(allReduce[false]), Stats.Median(allReduce[true]));
            Console.WriteLine($"| {openBw:0.000} | {secureBw:0.000} | {secureBw / openBw:0.00} |");
            Console.WriteLine();
            Console.WriteLine($"passes: fan-out open {Join(fanOut, false)}; secure {Join(fanOut, true)}; all-reduce open {string.Join(", ", allReduce[false].Select(v => $"{v:0.000}"))}, secure {string.Join(", ", allReduce[true].Select(v => $"{v:0.000}"))}");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
        return 0;
    }

    private static void Add<TKey>(Dictionary<TKey, List<double>> figures, TKey key, double value) where TKey : notnull
    {
        if (!figures.TryGetValue(key, out var list))
            figures[key] = list = [];
        list.Add(value);
    }

    private static string Join(Dictionary<(bool Secure, int PerSilo), List<double>> fanOut, bool secure) =>
        string.Join(" / ", ClusterBenchmark.FanOutWidths.Select(w => string.Join(", ", fanOut[(secure, w)].Select(v => $"{v:0.00}"))));
}
