using System.Diagnostics;
using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Silo;

namespace FlmCluster.Bench;

/// <summary>
/// A cluster of silo processes on this machine, as 'flm cluster up' starts them: a control node (the primary of
/// development clustering, home of the scheduler and coordinators) and GPU nodes "node0"… with CPU devices; a
/// client through the control node's gateway. Disposing kills the processes and deletes their folder.
/// </summary>
public sealed class SiloProcesses : IAsyncDisposable
{
    private readonly List<Process> _processes = [];
    private readonly string _home = Directory.CreateTempSubdirectory("flm-bench-silos-").FullName;

    public FlmClusterClient Client { get; private set; } = null!;

    /// <summary>Starts <paramref name="nodes"/> GPU nodes with <paramref name="gpus"/> devices each; <paramref name="settings"/> go to every silo.</summary>
    public static async Task<SiloProcesses> StartAsync(int nodes, int gpus, params string[] settings)
    {
        for (var attempt = 1; ; attempt++)
        {
            var cluster = new SiloProcesses();
            try
            {
                await cluster.Start(nodes, gpus, settings);
                return cluster;
            }
            catch (PortTakenException) when (attempt < 3)
            {
                await cluster.DisposeAsync(); // a port found free was taken before its silo bound it: other ports
            }
            catch
            {
                await cluster.DisposeAsync();
                throw;
            }
        }
    }

    private sealed class PortTakenException(string message) : Exception(message);

    private async Task Start(int nodes, int gpus, string[] settings)
    {
        var specs = new List<(string Node, string Devices)> { ("control", "cpu:0") };
        specs.AddRange(Enumerable.Range(0, nodes).Select(i => ($"node{i}", $"cpu:{gpus}")));
        var ports = LocalCluster.FreePorts(3 * specs.Count);
        var clusterId = $"bench-{Guid.NewGuid():N}"[..14];
        var silo = Path.Combine(AppContext.BaseDirectory, "FlmCluster.Silo.dll");
        for (var i = 0; i < specs.Count; i++)
        {
            var start = new ProcessStartInfo("sh") { UseShellExecute = false };
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add("exec \"$0\" \"$@\" > \"$FLM_SILO_LOG\" 2>&1 < /dev/null");
            start.ArgumentList.Add(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet");
            foreach (var a in (string[])[silo, "--node", specs[i].Node, "--devices", specs[i].Devices, "--silo-port", $"{ports[3 * i]}",
                "--gateway-port", $"{ports[3 * i + 1]}", "--data-port", $"{ports[3 * i + 2]}", "--primary-port", $"{ports[0]}", "--cluster-id", clusterId, "--torch-threads", "1",
                "--storage-dir", Path.Combine(_home, "storage"), "--ready-file", Path.Combine(_home, $"{specs[i].Node}.ready"), .. settings])
                start.ArgumentList.Add(a);
            start.Environment["FLM_SILO_LOG"] = Path.Combine(_home, $"{specs[i].Node}.log");
            _processes.Add(Process.Start(start) ?? throw new InvalidOperationException("could not start a silo process"));
        }
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < specs.Count; i++)
            while (!File.Exists(Path.Combine(_home, $"{specs[i].Node}.ready")))
            {
                if (_processes[i].HasExited || watch.Elapsed > TimeSpan.FromMinutes(3))
                {
                    var log = File.ReadAllText(Path.Combine(_home, $"{specs[i].Node}.log"));
                    if (log.Contains("Address already in use", StringComparison.Ordinal) || log.Contains("cannot be bound", StringComparison.Ordinal))
                        throw new PortTakenException(log);
                    throw new InvalidOperationException($"silo {specs[i].Node} did not start: {log}");
                }
                await Task.Delay(100);
            }
        Client = await FlmClusterClient.ConnectAsync(new ClusterProfile { GatewayPorts = [ports[1]], ClusterId = clusterId }, TimeSpan.FromSeconds(30));
        while ((await Client.Inventory()).Nodes.Count(n => n.Status == "active" && n.Gpus.Count > 0) < nodes)
        {
            if (watch.Elapsed > TimeSpan.FromMinutes(3))
                throw new InvalidOperationException("the scheduler does not see every silo");
            await Task.Delay(200);
        }
    }

    /// <summary>Runs the same probe on every worker at once (rank = position); one result per rank.</summary>
    public Task<ProbeResult[]> Probe(IReadOnlyList<string> workers, IReadOnlyList<ProbeOp> ops)
    {
        var id = $"probe-{Guid.NewGuid():N}";
        var key = SessionKeys.New();
        return Task.WhenAll(workers.Select((w, rank) => Client.Grains.GetGrain<IGpuWorkerGrain>(w).Probe(new ProbeRequest(id, rank, workers, ops, 3, false, key))));
    }

    public async ValueTask DisposeAsync()
    {
        if (Client is not null)
            await Client.DisposeAsync();
        foreach (var process in _processes)
        {
            if (!process.HasExited)
                process.Kill();
            await process.WaitForExitAsync();
            process.Dispose();
        }
        Directory.Delete(_home, recursive: true);
    }
}
