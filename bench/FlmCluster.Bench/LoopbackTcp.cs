using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace FlmCluster.Bench;

/// <summary>Raw TCP over loopback between two threads of this process: the wire the data planes are measured against.</summary>
public static class LoopbackTcp
{
    private const int Chunk = 4 << 20;

    private static (Socket Sender, Socket Receiver) Pair()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var sender = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        sender.Connect(listener.LocalEndPoint!);
        var receiver = listener.Accept();
        receiver.NoDelay = true;
        return (sender, receiver);
    }

    private static void Pump(Socket from, Socket to, long total)
    {
        var reader = new Thread(() =>
        {
            var buffer = new byte[Chunk];
            for (long received = 0; received < total;)
            {
                var n = to.Receive(buffer);
                if (n == 0)
                    break;
                received += n;
            }
        });
        reader.Start();
        var chunk = new byte[Chunk];
        Random.Shared.NextBytes(chunk);
        for (long sent = 0; sent < total; sent += chunk.Length)
            from.Send(chunk, 0, (int)Math.Min(chunk.Length, total - sent), SocketFlags.None);
        reader.Join();
    }

    /// <summary>GB/s of one stream, 4 MiB writes.</summary>
    public static double Stream(long total)
    {
        var (a, b) = Pair();
        using (a)
        using (b)
        {
            var watch = Stopwatch.StartNew();
            Pump(a, b, total);
            return total / watch.Elapsed.TotalSeconds / 1e9;
        }
    }

    /// <summary>GB/s of each of two streams in opposite directions at once (what an all-reduce of two needs).</summary>
    public static double Duplex(long total)
    {
        var (a, b) = Pair();
        using (a)
        using (b)
        {
            var watch = Stopwatch.StartNew();
            var forth = new Thread(() => Pump(a, b, total));
            forth.Start();
            Pump(b, a, total);
            forth.Join();
            return total / watch.Elapsed.TotalSeconds / 1e9;
        }
    }

    /// <summary>Median one-way microseconds of a message of <paramref name="bytes"/> sent there and back.</summary>
    public static double PingPong(int bytes, int rounds)
    {
        var (a, b) = Pair();
        using (a)
        using (b)
        {
            var echo = new Thread(() =>
            {
                var buffer = new byte[bytes];
                for (var i = 0; i < rounds; i++)
                {
                    Receive(b, buffer);
                    b.Send(buffer);
                }
            });
            echo.Start();
            var message = new byte[bytes];
            var times = new List<double>(rounds);
            for (var i = 0; i < rounds; i++)
            {
                var start = Stopwatch.GetTimestamp();
                a.Send(message);
                Receive(a, message);
                times.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds / 2);
            }
            echo.Join();
            return Stats.Median(times);
        }
    }

    private static void Receive(Socket socket, byte[] buffer)
    {
        for (var at = 0; at < buffer.Length;)
            at += socket.Receive(buffer, at, buffer.Length - at, SocketFlags.None);
    }
}
