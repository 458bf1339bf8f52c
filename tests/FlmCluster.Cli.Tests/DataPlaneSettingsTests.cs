using System.Net;
using System.Net.Sockets;
using FlmCluster.Tests.Process;

namespace FlmCluster.Cli.Tests;

/// <summary>The silo program refuses bad data-plane settings with one error line and exit code 2, before it starts.</summary>
public sealed class DataPlaneSettingsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-silo-settings-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private FlmResult Silo(params string[] args) =>
        FlmProcess.RunSilo(_dir, TimeSpan.FromMinutes(2), ["--node", "gpu-a", "--devices", "cpu:1", "--storage-dir", Path.Combine(_dir, "storage"), .. args]);

    private static void AssertRefused(FlmResult r, string expected)
    {
        Assert.True(r.ExitCode == 2, $"exit code {r.ExitCode}: {r.Output} {r.Error}");
        var line = Assert.Single(r.ErrorLines);
        Assert.StartsWith("error: ", line);
        Assert.Contains(expected, line);
    }

    [Fact]
    public void Nccl_on_a_server_without_cuda_is_refused() =>
        AssertRefused(Silo("--data-plane", "nccl"), "Flm:DataPlane (--data-plane) nccl needs CUDA GPUs (--devices cuda:N) and a CUDA build (-p:FlmDevice=cuda); this server has cpu:1: use socket");

    [Fact]
    public void A_data_port_out_of_range_is_refused() =>
        AssertRefused(Silo("--data-plane", "socket", "--data-port", "70000"), "Flm:DataPort (--data-port) 70000 is not a TCP port");

    [Fact]
    public void A_data_port_in_use_is_refused()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;
        AssertRefused(Silo("--data-plane", "socket", "--data-port", $"{port}"), $"data port 127.0.0.1:{port} cannot be bound");
    }

    [Fact]
    public void A_tls_certificate_without_its_key_or_a_missing_file_is_refused()
    {
        AssertRefused(Silo("--data-plane", "socket", "--data-tls-cert", Path.Combine(_dir, "cert.pem")),
            "Flm:DataTlsCertificate (--data-tls-cert) and Flm:DataTlsKey (--data-tls-key) go together");
        AssertRefused(Silo("--data-plane", "socket", "--data-tls-cert", Path.Combine(_dir, "cert.pem"), "--data-tls-key", Path.Combine(_dir, "key.pem")),
            $"Flm:DataTlsCertificate '{Path.Combine(_dir, "cert.pem")}' does not exist");
        File.WriteAllText(Path.Combine(_dir, "cert.pem"), "not a certificate");
        File.WriteAllText(Path.Combine(_dir, "key.pem"), "not a key");
        AssertRefused(Silo("--data-plane", "socket", "--data-tls-cert", Path.Combine(_dir, "cert.pem"), "--data-tls-key", Path.Combine(_dir, "key.pem")),
            "the data plane's TLS certificate");
    }
}
