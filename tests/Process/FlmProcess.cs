using System.Diagnostics;

namespace FlmCluster.Tests.Process;

/// <summary>What a run of `flm` returned.</summary>
public sealed record FlmResult(int ExitCode, string Output, string Error)
{
    public string[] ErrorLines => Error.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}

/// <summary>Runs the built `flm` program (flm.dll next to the tests), or the silo program, as a child process.</summary>
public static class FlmProcess
{
    public static FlmResult Run(string workingDirectory, params string[] args) =>
        Run(workingDirectory, new Dictionary<string, string>(), TimeSpan.FromMinutes(5), args);

    public static FlmResult Run(string workingDirectory, IReadOnlyDictionary<string, string> environment, TimeSpan timeout, params string[] args) =>
        Run("flm.dll", workingDirectory, environment, timeout, args);

    /// <summary>Runs the built silo program (FlmCluster.Silo.dll next to the tests) until it exits.</summary>
    public static FlmResult RunSilo(string workingDirectory, TimeSpan timeout, params string[] args) =>
        Run("FlmCluster.Silo.dll", workingDirectory, new Dictionary<string, string>(), timeout, args);

    private static FlmResult Run(string program, string workingDirectory, IReadOnlyDictionary<string, string> environment, TimeSpan timeout, string[] args)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, program));
        foreach (var a in args)
            start.ArgumentList.Add(a);
        foreach (var (key, value) in environment)
            start.Environment[key] = value;
        using var process = System.Diagnostics.Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{program} {string.Join(' ', args)} did not finish: {output.Result} {error.Result}");
        }
        return new FlmResult(process.ExitCode, output.Result, error.Result);
    }
}
