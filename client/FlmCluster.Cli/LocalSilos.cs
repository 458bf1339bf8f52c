using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using FlmCluster.Client;

namespace FlmCluster.Cli;

/// <summary>
/// Silo processes on this machine, as 'flm cluster up' and 'flm sim --processes' start them: detached (they outlive
/// the command that started them), each with its log file, stopped by signal.
/// </summary>
public static partial class LocalSilos
{
    /// <summary>The silo program next to this one.</summary>
    public static string Program => Path.Combine(AppContext.BaseDirectory, "FlmCluster.Silo.dll");

    /// <summary>
    /// The arguments of silo <paramref name="index"/> of a local cluster: silo port base+index, gateway base+1000+index,
    /// web base+2000+index, the primary at base (development clustering), loopback only.
    /// </summary>
    public static List<string> Arguments(string node, string devices, int index, int basePort, string clusterId, string home) =>
    [
        Program, "--node", node, "--devices", devices, "--silo-port", $"{basePort + index}", "--gateway-port", $"{GatewayPort(basePort, index)}",
        "--primary-port", $"{basePort}", "--cluster-id", clusterId, "--storage-dir", Path.Combine(home, "storage"),
        "--http-port", $"{WebPort(basePort, index)}", "--listen", "loopback",
    ];

    public static int GatewayPort(int basePort, int index) => basePort + 1000 + index;

    public static int WebPort(int basePort, int index) => basePort + 2000 + index;

    /// <summary>Starts a silo detached from this process and its terminal; its output goes to <paramref name="log"/>. Returns its pid.</summary>
    public static int Start(IReadOnlyList<string> args, string log, bool append = false)
    {
        // setsid: the silo keeps running after this command exits and ignores the terminal's Ctrl+C.
        var start = new ProcessStartInfo("setsid") { UseShellExecute = false };
        start.ArgumentList.Add("sh");
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(append ? "exec \"$0\" \"$@\" >> \"$FLM_SILO_LOG\" 2>&1 < /dev/null" : "exec \"$0\" \"$@\" > \"$FLM_SILO_LOG\" 2>&1 < /dev/null");
        start.ArgumentList.Add(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet");
        foreach (var a in args)
            start.ArgumentList.Add(a);
        start.Environment["FLM_SILO_LOG"] = log;
        using var process = System.Diagnostics.Process.Start(start) ?? throw new InvalidOperationException("could not start a silo process");
        return process.Id;
    }

    /// <summary>
    /// Waits until a silo's readiness endpoint answers 200 (an active member, its devices and storage there); the
    /// problem when it exits or the time is up first, else null.
    /// </summary>
    public static async Task<string?> WaitReady(ClusterProfile profile, SiloProcess silo, Stopwatch watch, TimeSpan timeout, CancellationToken cancel = default)
    {
        using var web = new SiloWeb(profile, TimeSpan.FromSeconds(5), withToken: false);
        var ready = $"{web.At(silo.HttpPort)}/health/ready";
        while (true)
        {
            try
            {
                using var response = await web.Http.GetAsync(ready, cancel);
                if (response.IsSuccessStatusCode)
                    return null;
            }
            catch (Exception ex) when (ex is HttpRequestException || (ex is TaskCanceledException && !cancel.IsCancellationRequested))
            {
                // not listening yet
            }
            if (!IsAlive(silo.Pid) || watch.Elapsed > timeout)
            {
                var tail = File.Exists(silo.Log) ? string.Join(" | ", File.ReadLines(silo.Log).TakeLast(3)) : "";
                return $"silo {silo.Node} did not become ready{(IsAlive(silo.Pid) ? $" within {timeout.TotalSeconds:0} s" : " (it exited)")}: {tail} (log {silo.Log}, readiness {ready})";
            }
            await Task.Delay(200, cancel);
        }
    }

    /// <summary>kill -9: the server dies with no goodbye.</summary>
    public static void KillNow(int pid) => Kill(pid, 9);

    /// <summary>SIGTERM (the silo leaves the cluster in order), then SIGKILL after the grace period.</summary>
    public static async Task Stop(int pid, TimeSpan grace)
    {
        if (!IsAlive(pid))
            return;
        Kill(pid, 15);
        var watch = Stopwatch.StartNew();
        while (IsAlive(pid) && watch.Elapsed < grace)
            await Task.Delay(100);
        if (IsAlive(pid))
            Kill(pid, 9);
    }

    public static bool IsAlive(int pid) => Kill(pid, 0) == 0 && !IsZombie(pid);

    /// <summary>The CPU time a live process has used (user and system), or zero once it is gone.</summary>
    public static TimeSpan CpuTime(int pid)
    {
        try
        {
            // /proc/PID/stat: the command is in parentheses and may hold spaces; utime and stime are the 12th and 13th fields after it.
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            return TimeSpan.FromSeconds((double)ticks / ClockTicksPerSecond);
        }
        catch (IOException)
        {
            return TimeSpan.Zero;
        }
    }

    private static readonly long ClockTicksPerSecond = Math.Max(1, SysConf(2 /* _SC_CLK_TCK */));

    private static bool IsZombie(int pid)
    {
        var stat = $"/proc/{pid}/stat";
        return File.Exists(stat) && File.ReadAllText(stat).Split(' ') is { Length: > 2 } fields && fields[2] == "Z";
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "sysconf")]
    private static partial long SysConf(int name);
}
