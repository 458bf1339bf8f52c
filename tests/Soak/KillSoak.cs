using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Tests.Process;
using FlmCluster.Training.Checkpoint;

namespace FlmCluster.Tests.Soak;

/// <summary>What a soak does: how many kill -9s, from which seed, on which ports, in which folder.</summary>
public sealed record SoakOptions(string Home, int Kills, int Seed, int BasePort, IReadOnlyList<long> StageSteps, Action<string> Log);

/// <summary>One kill -9: when (in the job's steps), of what, and what the job was doing.</summary>
public sealed record SoakKill(int Index, string Moment, string Node, long AtStep);

/// <summary>What a soak found: the job under kills and the same job uninterrupted, compared.</summary>
public sealed record SoakResult(
    JobStatus Killed,
    JobStatus Uninterrupted,
    IReadOnlyList<SoakKill> Kills,
    IReadOnlyList<double> RecoverySeconds,
    bool LayoutChanged,
    double MaxParameterDifference,
    IReadOnlyList<string> InvalidCheckpoints,
    TimeSpan Wall);

/// <summary>
/// A kill -9 soak: a local cluster of four two-GPU servers and a control node on Redis, a job with three growth
/// stages (dp=4; dp=2·tp=2; tp=2·pp=2) on two of them — two servers spare —, in-memory replicas every 2 steps and
/// checkpoints every 10; servers killed with SIGKILL at moments drawn from a seeded schedule (mid-step, mid-replica,
/// mid-shard-write, mid-growth, the coordinator's server, during a restore) and started again after a random
/// delay. Then the same job runs uninterrupted, and the two are compared.
/// </summary>
public sealed class KillSoak(SoakOptions options, Func<string[], FlmResult> flm)
{
    private static readonly string[] Moments = ["mid-step", "mid-shard-write", "coordinator", "mid-growth", "mid-replica", "during-restore"];

    private readonly Random _random = new(options.Seed);
    private readonly List<SoakKill> _kills = [];
    private readonly List<Task> _restarts = [];
    private FlmClusterClient _client = null!;

    public async Task<SoakResult> Run(string redis)
    {
        var watch = Stopwatch.StartNew();
        Must(flm(["cluster", "up", "--nodes", "4", "--gpus-per-node", "2", "--control-nodes", "1", "--redis", redis, "--base-port", $"{options.BasePort}"]));
        _client = await FlmClusterClient.ConnectAsync(Profile());
        try
        {
            var killedDir = Path.Combine(options.Home, "killed");
            var id = Submit(killedDir);
            while (_kills.Count < options.Kills)
            {
                var status = await _client.Status(id);
                if (status.State.IsFinal())
                    break;
                await Kill(id, Moments[_kills.Count % Moments.Length]);
                await Task.Delay(_random.Next(1000, 4000));
            }
            var killed = await Finish(id);
            await Task.WhenAll(_restarts);
            var wall = watch.Elapsed;
            var straightDir = Path.Combine(options.Home, "straight");
            var uninterrupted = await Finish(Submit(straightDir));
            var changed = killed.Events.Any(e => e.Kind is "shrunk" or "grown-back");
            var last = options.StageSteps.Sum();
            var invalid = CheckpointStore.List(killedDir, verifyChecksums: true).Where(e => !e.Valid).Select(e => $"{e.Directory}: {e.Problem}").ToList();
            return new SoakResult(killed, uninterrupted, _kills, Recoveries(killed), changed,
                MaxDifference(CheckpointStore.DirectoryFor(killedDir, last), CheckpointStore.DirectoryFor(straightDir, last)), invalid, wall);
        }
        finally
        {
            await _client.DisposeAsync();
        }
    }

    /// <summary>The soak job: three growth stages, widest on four GPUs (two servers).</summary>
    private string Submit(string dir)
    {
        var s = options.StageSteps;
        var job = $$"""
            {
              "name": "soak", "tokenizer": "bytes",
              "model": { "layers": 2, "hidden": 64, "heads": 4, "seq_len": 64, "vocab_pad_multiple": 128, "mup": { "base_width": 32 } },
              "train": { "global_batch": 16, "precision": "fp32", "seed": 5 },
              "optimizer": { "lr": 0.003, "min_lr": 0.0003, "warmup_steps": 5 },
              "checkpoint": { "dir": "{{dir}}", "interval": 10, "memory_interval": 2, "keep_last": 4 },
              "recovery": { "wait_seconds": 5, "restore_limit": 10 },
              "stages": [
                { "name": "a", "steps": {{s[0]}}, "layout": { "dp": 4 } },
                { "name": "b", "steps": {{s[1]}}, "hidden": 128, "heads": 8, "mask_ramp_steps": 5, "layout": { "dp": 2, "tp": 2 } },
                { "name": "c", "steps": {{s[2]}}, "layers": 4, "mask_ramp_steps": 5, "layout": { "tp": 2, "pp": 2, "micro_batches": 2 } }
              ]
            }
            """;
        var file = Path.Combine(options.Home, $"{Path.GetFileName(dir)}.json");
        File.WriteAllText(file, job);
        return Must(flm(["submit", "--config", file])).Output.Trim();
    }

    private async Task Kill(string id, string moment)
    {
        // Wait for the moment (for at most 20 s; a moment not reached is logged and the kill happens anyway).
        var reached = moment switch
        {
            "mid-shard-write" => await Until(id, s => s.CheckpointDir is { } dir && Directory.Exists(dir)
                && Directory.EnumerateDirectories(dir, "step-*").Any(d => !File.Exists(Path.Combine(d, "manifest.json")))),
            "mid-growth" => await Until(id, s => s.Events.LastOrDefault(e => e.Kind is "growing" or "growth")?.Kind == "growing"),
            "mid-replica" => await Until(id, s => s.Step % 2 == 0),
            _ => true,
        };
        var status = await _client.Status(id);
        var node = moment == "coordinator" ? NodeOfSilo(status.Coordinator) : RankNode(status);
        KillNode(node, reached ? moment : $"{moment} (not reached)", status.Step);
        if (moment == "during-restore" && _kills.Count < options.Kills
            && await Until(id, s => s.Events.LastOrDefault(e => e.Kind is "restoring" or "replaced" or "recovered")?.Kind is "restoring" or "replaced"))
        {
            var during = await _client.Status(id);
            KillNode(RankNode(during, except: node), "during-restore (second)", during.Step);
        }
    }

    private void KillNode(string node, string moment, long step)
    {
        var pid = Profile().Silos.Single(s => s.Node == node).Pid;
        try
        {
            System.Diagnostics.Process.GetProcessById(pid).Kill();
        }
        catch (ArgumentException)
        {
            return; // already down (killed just before, not started again yet)
        }
        _kills.Add(new SoakKill(_kills.Count + 1, moment, node, step));
        options.Log($"kill {_kills.Count}: {node} {moment} at step {step}");
        var delay = _random.Next(1000, 5000);
        _restarts.Add(Task.Run(async () =>
        {
            await Task.Delay(delay);
            for (var attempt = 0; attempt < 5; attempt++)
            {
                var r = flm(["cluster", "restart", node]);
                if (r.ExitCode == 0)
                    return;
                await Task.Delay(1000);
            }
        }));
    }

    /// <summary>A server that holds one of the job's ranks, drawn at random.</summary>
    private string RankNode(JobStatus status, string? except = null)
    {
        var nodes = status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Where(n => n != except).Order().ToList();
        return nodes.Count == 0 ? "node0" : nodes[_random.Next(nodes.Count)];
    }

    private string NodeOfSilo(string? silo)
    {
        var port = silo is null ? -1 : int.Parse(Regex.Match(silo, @":(\d+):").Groups[1].Value);
        return Profile().Silos.FirstOrDefault(s => s.SiloPort == port)?.Node ?? "control";
    }

    /// <summary>Polls the job (every 20 ms, up to 20 s) until <paramref name="condition"/> holds; false if it did not.</summary>
    private async Task<bool> Until(string id, Func<JobStatus, bool> condition)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(20))
        {
            try
            {
                var status = await _client.Status(id);
                if (condition(status))
                    return true;
                if (status.State.IsFinal())
                    return false;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // the gateway went away with a killed server: ask again
            }
            await Task.Delay(20);
        }
        return false;
    }

    private async Task<JobStatus> Finish(string id)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                var status = await _client.Status(id);
                if (status.State.IsFinal())
                    return status;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException && watch.Elapsed < TimeSpan.FromMinutes(20))
            {
                // the gateway went away with a killed server: ask again
            }
            if (watch.Elapsed > TimeSpan.FromMinutes(20))
                throw new TimeoutException($"job {id} did not end within 20 minutes");
            await Task.Delay(200);
        }
    }

    private static IReadOnlyList<double> Recoveries(JobStatus status) =>
        status.Events.Where(e => e.Kind == "recovered").Select(e => double.Parse(Regex.Match(e.Message, @" in (\d+\.\d) s").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();

    /// <summary>The largest difference between the parameters of two checkpoints (0 when they hold the same bytes).</summary>
    private static double MaxDifference(string a, string b)
    {
        var left = CheckpointReader.Open(a);
        var right = CheckpointReader.Open(b);
        if (left.Manifest.Shards.Select(s => s.Sha256).SequenceEqual(right.Manifest.Shards.Select(s => s.Sha256)))
            return 0;
        double worst = 0;
        foreach (var record in left.Manifest.Tensors.Where(t => t.Kind == "param"))
        {
            using var x = left.ReadWhole("param", record.Name);
            using var y = right.ReadWhole("param", record.Name);
            using var difference = (x - y).abs().max();
            worst = Math.Max(worst, difference.to_type(TorchSharp.torch.ScalarType.Float64).item<double>());
        }
        return worst;
    }

    private ClusterProfile Profile() => ClusterProfile.Load(Path.Combine(options.Home, "cluster.json"));

    private static FlmResult Must(FlmResult r) =>
        r.ExitCode == 0 ? r : throw new InvalidOperationException($"flm exited {r.ExitCode}: {r.Output} {r.Error}");
}
