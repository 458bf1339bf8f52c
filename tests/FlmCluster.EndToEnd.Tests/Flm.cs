using System.Text.Json;
using FlmCluster.Tests.Process;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// A private home for `flm` (its own cluster profile) with its own Redis server; runs the built `flm` there.
/// Disposing stops the cluster it started, Redis, and deletes the home.
/// </summary>
public sealed class Flm : IDisposable
{
    /// <summary>
    /// `flm submit` of the tiny preset on byte tokens and 64-token sequences, in <paramref name="layout"/>, checkpointing
    /// into <paramref name="dir"/>, with more `--set` key=value pairs.
    /// </summary>
    public static string[] TinySubmit(string layout, int steps, string dir, params string[] settings) =>
    [
        "submit", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128", "--set", "model.seq_len=64",
        "--layout", layout, "--steps", $"{steps}", "--set", $"checkpoint.dir={dir}", .. settings.SelectMany(kv => new[] { "--set", kv }),
    ];

    public string Home { get; }
    public RedisServer Redis { get; } = new();
    public string Profile => Path.Combine(Home, "cluster.json");

    public Flm(string prefix) => Home = Directory.CreateTempSubdirectory(prefix).FullName;

    public FlmResult Run(params string[] args) => Run(TimeSpan.FromMinutes(5), args);

    /// <summary>Environment of every `flm` run (and so of the silos `flm cluster up` starts): silo settings as Flm__Key.</summary>
    public Dictionary<string, string> Environment { get; } = [];

    public FlmResult Run(TimeSpan timeout, params string[] args) =>
        FlmProcess.Run(Home, new Dictionary<string, string>(Environment) { ["FLM_PROFILE"] = Profile }, timeout, args);

    /// <summary>
    /// `flm cluster up` with Redis membership and control-plane nodes (one by default); asserts that it worked.
    /// Test classes run in parallel: each takes its own base port, 100 apart (a cluster uses base…base+n−1,
    /// +1000…, +2000…), below the kernel's ephemeral ports (32768…).
    /// </summary>
    public FlmResult Up(int nodes, int gpusPerNode, int basePort, int controlNodes = 1, bool sim = false, int readySeconds = 120)
    {
        var up = Run(TimeSpan.FromSeconds(readySeconds + 120), ["cluster", "up", "--nodes", $"{nodes}", "--gpus-per-node", $"{gpusPerNode}", "--control-nodes", $"{controlNodes}",
            "--redis", Redis.ConnectionString, "--base-port", $"{basePort}", "--timeout", $"{readySeconds}", .. sim ? ["--sim"] : Array.Empty<string>()]);
        Assert.True(up.ExitCode == 0, up.Output + up.Error);
        return up;
    }

    /// <summary>The committed step `flm status` reports for a job (-1 when it does not answer).</summary>
    public long Step(string jobId)
    {
        var r = Run("status", jobId);
        return r.ExitCode == 0 && System.Text.RegularExpressions.Regex.Match(r.Output, @", step (\d+)/") is { Success: true } m ? long.Parse(m.Groups[1].Value) : -1;
    }

    /// <summary>Polls `flm status` until the job has committed <paramref name="step"/> steps.</summary>
    public void WaitForStep(string jobId, long step)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (Step(jobId) < step)
            Assert.True(watch.Elapsed < TimeSpan.FromMinutes(5), $"job {jobId} did not reach step {step}");
    }

    /// <summary>
    /// Once the job holds in-memory replicas, kill -9 of the server of its rank 0 (the first server `flm status`
    /// lists); returns that server's name.
    /// </summary>
    public string KillRankZerosServerOnceReplicated(string jobId, TimeSpan within)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var status = Run("status", jobId);
            if (System.Text.RegularExpressions.Regex.IsMatch(status.Output, @"in-memory replicas at step \d+"))
            {
                var victim = System.Text.RegularExpressions.Regex.Match(status.Output, @"^  (\w+): rank", System.Text.RegularExpressions.RegexOptions.Multiline).Groups[1].Value;
                System.Diagnostics.Process.GetProcessById(SiloPid(victim)).Kill();
                return victim;
            }
            Assert.True(watch.Elapsed < within, status.Output + status.Error);
        }
    }

    /// <summary>The checksums of the shards of a committed checkpoint: equal lists mean the same bytes.</summary>
    public static List<string> ShardChecksums(string dir, long step)
    {
        using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, $"step-{step:D8}", "manifest.json")));
        return manifest.RootElement.GetProperty("shards").EnumerateArray().Select(s => s.GetProperty("sha256").GetString()!).ToList();
    }

    /// <summary>The process id of a node's silo, from the cluster profile.</summary>
    public int SiloPid(string node)
    {
        using var profile = JsonDocument.Parse(File.ReadAllText(Profile));
        return profile.RootElement.GetProperty("silos").EnumerateArray()
            .Single(s => s.GetProperty("node").GetString() == node).GetProperty("pid").GetInt32();
    }

    /// <summary>The web ports of the cluster's silos (dashboards and /metrics), in the order 'flm cluster up' started them.</summary>
    public IReadOnlyList<int> SiloHttpPorts()
    {
        using var profile = JsonDocument.Parse(File.ReadAllText(Profile));
        return profile.RootElement.GetProperty("silos").EnumerateArray().Select(s => s.GetProperty("http_port").GetInt32()).ToList();
    }

    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };

    /// <summary>A silo's health endpoint (/health/live or /health/ready): its status code and body.</summary>
    public static (int Status, string Body) Health(int httpPort, string path)
    {
        using var response = Http.GetAsync($"http://127.0.0.1:{httpPort}{path}").GetAwaiter().GetResult();
        return ((int)response.StatusCode, response.Content.ReadAsStringAsync().GetAwaiter().GetResult());
    }

    /// <summary>Polls a health endpoint until it answers <paramref name="status"/>; returns that answer's body.</summary>
    public static string WaitForHealth(int httpPort, string path, int status, TimeSpan patience)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var (code, body) = Health(httpPort, path);
            if (code == status)
                return body;
            Assert.True(watch.Elapsed < patience, $"{path} on port {httpPort} answered {code} for {patience.TotalSeconds:0} s: {body}");
            Thread.Sleep(200);
        }
    }

    public void Dispose()
    {
        if (File.Exists(Profile))
            Run("cluster", "down");
        Redis.Dispose();
        Directory.Delete(Home, recursive: true);
    }
}
