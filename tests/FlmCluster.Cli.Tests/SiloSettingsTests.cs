using System.Diagnostics;

namespace FlmCluster.Cli.Tests;

/// <summary>A silo process given bad observability or security settings stops at once with one error line and exit code 2.</summary>
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
    public Task Bad_observability_settings_stop_the_silo_before_it_starts(string settings, string expected) => AssertRefusedAtStart(settings, expected);

    [Theory]
    [InlineData("--listen everywhere", "Flm:Listen (--listen) 'everywhere' is not loopback or any")]
    [InlineData("--tls-key silo.key", "Flm:TlsKey is set without Flm:TlsCertificate (--tls-cert)")]
    [InlineData("--tls-cert silo.pem --tls-key silo.key", "Flm:TlsCa (--tls-ca) must name the cluster's certificate authority")]
    [InlineData("--tls-cert silo.pem --tls-key silo.key --tls-ca ca.pem", "Flm:ClusterKeyFile (--cluster-key) must name the file of the cluster key")]
    [InlineData("--tls-cert /nonexistent/silo.pem --tls-key silo.key --tls-ca ca.pem --cluster-key cluster.key", "Flm:TlsCertificate '/nonexistent/silo.pem' does not exist")]
    [InlineData("--advertise 10.1.2.3", "Flm:AdvertisedAddress 10.1.2.3 is not a loopback address, but the silo listens on loopback only")]
    [InlineData("--kubernetes true", "Flm:Kubernetes needs Redis clustering")]
    [InlineData("--tls-cert store:Nowhere/My/0123456789abcdef0123456789abcdef01234567 --tls-ca ca.pem --cluster-key cluster.key", "Flm:TlsCertificate: 'store:Nowhere/My/0123456789abcdef0123456789abcdef01234567' is not store:LOCATION/STORE/THUMBPRINT")]
    [InlineData("--tls-cert store:CurrentUser/My/abc --tls-ca ca.pem --cluster-key cluster.key", "Flm:TlsCertificate: 'store:CurrentUser/My/abc' is not store:LOCATION/STORE/THUMBPRINT")]
    [InlineData("--tls-cert store:CurrentUser/My/0123456789abcdef0123456789abcdef01234567 --tls-key silo.key --tls-ca ca.pem --cluster-key cluster.key", "Flm:TlsKey (--tls-key) is set, but Flm:TlsCertificate names a certificate store")]
    public Task Bad_security_settings_stop_the_silo_before_it_starts(string settings, string expected) => AssertRefusedAtStart(settings, expected);

    private static async Task AssertRefusedAtStart(string settings, string expected)
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
