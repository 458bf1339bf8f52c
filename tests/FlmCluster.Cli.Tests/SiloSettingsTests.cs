using System.Diagnostics;

namespace FlmCluster.Cli.Tests;

/// <summary>A silo process given bad observability settings stops at once with one error line and exit code 2.</summary>
public sealed class SiloSettingsTests
{
    [Theory]
    [InlineData("--exporters prometheus,statsd", "Flm:Exporters (--exporters) 'statsd' is not one of prometheus, otlp, console")]
    [InlineData("--exporters otlp", "Flm:OtlpEndpoint (--otlp-endpoint) '' must be an http(s) address")]
    [InlineData("--exporters otlp --otlp-endpoint ftp://collector:21", "Flm:OtlpEndpoint (--otlp-endpoint) 'ftp://collector:21' must be an http(s) address")]
    [InlineData("--http-port 0", "Flm:Exporters: prometheus is served on the web port")]
    [InlineData("--http-port 70000", "Flm:HttpPort (--http-port) 70000 is not a TCP port")]
    [InlineData("--peak-tflops NaN", "Flm:PeakTflops (--peak-tflops) NaN must be a finite number")]
    [InlineData("--peak-tflops -1", "Flm:PeakTflops (--peak-tflops) -1 must be a finite number")]
    public async Task Bad_observability_settings_stop_the_silo_before_it_starts(string settings, string expected)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetTempPath(),
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "FlmCluster.Silo.dll"));
        foreach (var a in $"--node gpu-a --devices cpu:1 {settings}".Split(' '))
            start.ArgumentList.Add(a);
        using var silo = Process.Start(start)!;
        var cancel = TestContext.Current.CancellationToken;
        var output = silo.StandardOutput.ReadToEndAsync(cancel);
        var error = silo.StandardError.ReadToEndAsync(cancel);
        await silo.WaitForExitAsync(cancel).WaitAsync(TimeSpan.FromSeconds(60), cancel);
        Assert.Equal(2, silo.ExitCode);
        var line = Assert.Single((await error).Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: ", line);
        Assert.Contains(expected, line);
        Assert.Equal("", await output);
    }
}
