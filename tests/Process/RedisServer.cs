using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace FlmCluster.Tests.Process;

/// <summary>
/// A private redis-server process on a free port (Debian's redis-server package). Its data is kept in an
/// append-only file (fsync on every write), so it can be stopped and started again with the cluster's state.
/// </summary>
public sealed class RedisServer : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-redis-").FullName;
    private System.Diagnostics.Process _process = null!;

    public int Port { get; }
    public string ConnectionString => $"127.0.0.1:{Port}";

    public RedisServer()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        Port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        Start();
    }

    /// <summary>Stops the server (SIGKILL: what it wrote is in the append-only file already).</summary>
    public void Stop()
    {
        if (!_process.HasExited)
            _process.Kill();
        _process.WaitForExit(5000);
        _process.Dispose();
    }

    /// <summary>Starts the server on its port, with the data it had.</summary>
    public void Start()
    {
        var binary = new[] { "/usr/bin/redis-server", "/usr/local/bin/redis-server" }.FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException("redis-server is not installed (apt-get install redis-server); .ci/run installs it");
        var start = new ProcessStartInfo(binary) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--port", $"{Port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", _dir, "--daemonize", "no" })
            start.ArgumentList.Add(a);
        _process = System.Diagnostics.Process.Start(start)!;
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            try
            {
                using var client = new TcpClient();
                client.Connect(IPAddress.Loopback, Port);
                break;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline && !_process.HasExited)
            {
                Thread.Sleep(100);
            }
        }
    }

    public void Dispose()
    {
        Stop();
        Directory.Delete(_dir, recursive: true);
    }
}
