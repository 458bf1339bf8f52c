using System.Diagnostics;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>Runs the built `flm` (next to the tests) with a private cluster profile.</summary>
public sealed class Flm(string home)
{
    public string Profile => Path.Combine(home, "cluster.json");

    public sealed record Result(int ExitCode, string Output, string Error);

    public Result Run(params string[] args) => Run(TimeSpan.FromMinutes(5), args);

    public Result Run(TimeSpan timeout, params string[] args)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            WorkingDirectory = home,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "flm.dll"));
        foreach (var a in args)
            start.ArgumentList.Add(a);
        start.Environment["FLM_PROFILE"] = Profile;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"flm {string.Join(' ', args)} did not finish: {output.Result} {error.Result}");
        }
        return new Result(process.ExitCode, output.Result, error.Result);
    }
}
