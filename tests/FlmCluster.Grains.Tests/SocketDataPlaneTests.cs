using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.DataPlane.Sockets;
using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// The socket data plane on its own: several silos' data planes in this process on loopback (real sockets,
/// real threads), ranks as threads. Results are compared with the in-process fabric bit for bit.
/// </summary>
public sealed class SocketDataPlaneTests : IDisposable
{
    private readonly List<SocketDataPlane> _planes = [];
    private readonly List<string> _files = [];

    public void Dispose()
    {
        foreach (var plane in _planes)
            plane.Dispose();
        foreach (var file in _files)
            File.Delete(file);
    }

    private SocketDataPlane[] Planes(int count, SocketDataPlaneOptions? options = null)
    {
        var planes = Enumerable.Range(0, count).Select(_ => new SocketDataPlane(options ?? new SocketDataPlaneOptions())).ToArray();
        foreach (var plane in planes)
            plane.Start();
        _planes.AddRange(planes);
        return planes;
    }

    /// <summary>One session per rank; worker "nK/gpuG" lives on plane K.</summary>
    private static SocketSession[] Sessions(SocketDataPlane[] planes, string[] workers, string job = "job", int incarnation = 1, string? key = null, TimeSpan? timeout = null)
    {
        var bytes = SessionKeys.Parse(key ?? SessionKeys.New())!;
        IPEndPoint EndpointOf(string node) => planes[int.Parse(node[1..])].Endpoint;
        return workers.Select((w, rank) =>
        {
            var node = w[..w.IndexOf('/')];
            return planes[int.Parse(node[1..])].Open(new SessionSpec(job, incarnation, rank, workers, bytes, node, EndpointOf, timeout ?? TimeSpan.FromSeconds(60)));
        }).ToArray();
    }

    /// <summary>Runs <paramref name="work"/> on one thread per rank; rethrows the first failure.</summary>
    private static T[] OnRanks<T>(int ranks, Func<int, T> work)
    {
        var results = new T[ranks];
        var errors = new Exception?[ranks];
        var threads = Enumerable.Range(0, ranks).Select(r => new Thread(() =>
        {
            try
            {
                results[r] = work(r);
            }
            catch (Exception ex)
            {
                errors[r] = ex;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        if (errors.FirstOrDefault(e => e is not null) is { } error)
            throw new AggregateException(errors.Where(e => e is not null)!);
        return results;
    }

    private static Tensor Input(int rank, int op, long elements, ScalarType type)
    {
        using var generator = new Generator((ulong)(1000 * op + rank + 1));
        var values = randn(elements, dtype: ScalarType.Float64, generator: generator) * 10;
        return type == ScalarType.Int64 ? values.round().to(ScalarType.Int64) : values.to(type);
    }

    private sealed record Case(string Kind, long Elements, ScalarType Type = ScalarType.Float32, int Root = 0);

    /// <summary>The cases, run one after another on one set of links (so links are reused across operations).</summary>
    private static readonly Case[] Cases =
    [
        new("all-reduce", 1), new("all-reduce", 7), new("all-reduce", 1001, ScalarType.Float64),
        new("all-reduce", 3_000_001),                       // 12 MB: 23 pieces, pipelined through the chain
        new("all-reduce", 33, ScalarType.BFloat16), new("all-reduce", 17, ScalarType.Int64), new("all-reduce-max", 999),
        new("all-reduce", 0),
        new("reduce-scatter", 5), new("reduce-scatter", 1_100_003), new("reduce-scatter", 131_073, ScalarType.BFloat16),
        new("all-gather", 3), new("all-gather", 1_500_001),
        new("broadcast", 13, Root: 2), new("broadcast", 700_000, Root: 1),
        new("send-recv", 101), new("send-recv", 1_200_000), new("barrier", 0),
    ];

    /// <summary>Every case on every rank, through <paramref name="comm"/>; returns the outputs.</summary>
    private static List<Tensor> RunCases(ICollectives comm, int rank, int world, IReadOnlyList<int> members)
    {
        var group = new ProcessGroup("g", members.ToArray());
        var outputs = new List<Tensor>();
        if (!group.Contains(rank))
            return outputs;
        var index = group.IndexOf(rank);
        var n = group.Size;
        for (var op = 0; op < Cases.Length; op++)
        {
            var c = Cases[op];
            var input = Input(rank, op, c.Kind == "reduce-scatter" ? c.Elements * n : c.Elements, c.Type);
            switch (c.Kind)
            {
                case "all-reduce":
                    comm.AllReduce(group, input);
                    outputs.Add(input);
                    break;
                case "all-reduce-max":
                    comm.AllReduce(group, input, ReduceOp.Max);
                    outputs.Add(input);
                    break;
                case "reduce-scatter":
                    {
                        // Every other time the output is this member's own chunk of the input (how ZeRO calls it).
                        var output = op % 2 == 0 ? zeros(c.Elements, dtype: c.Type) : input.narrow(0, index * c.Elements, c.Elements);
                        comm.ReduceScatter(group, input, output);
                        outputs.Add(output.clone());
                        break;
                    }
                case "all-gather":
                    {
                        var output = zeros(c.Elements * n, dtype: c.Type);
                        comm.AllGather(group, input, output);
                        outputs.Add(output);
                        break;
                    }
                case "broadcast":
                    comm.Broadcast(group, input, c.Root % n);
                    outputs.Add(input);
                    break;
                case "send-recv":
                    {
                        var received = zeros_like(input);
                        var next = group.Ranks[(index + 1) % n];
                        var prev = group.Ranks[(index + n - 1) % n];
                        comm.Send(input, next, op);
                        comm.Recv(received, prev, op);
                        outputs.Add(received);
                        break;
                    }
                case "barrier":
                    comm.Barrier(group);
                    outputs.Add(input);
                    break;
            }
        }
        return outputs;
    }

    private static List<Tensor>[] InProcess(int world, IReadOnlyList<int> members)
    {
        using var fabric = new InProcessFabric(world);
        return OnRanks(world, rank => RunCases(fabric.ForRank(rank), rank, world, members));
    }

    private static void AssertIdentical(List<Tensor>[] expected, List<Tensor>[] actual)
    {
        for (var rank = 0; rank < expected.Length; rank++)
        {
            Assert.Equal(expected[rank].Count, actual[rank].Count);
            for (var op = 0; op < expected[rank].Count; op++)
                Assert.True(SameBits(expected[rank][op], actual[rank][op]),
                    $"{Cases[op].Kind} of {Cases[op].Elements} {Cases[op].Type} differs from the in-process fabric on rank {rank}");
        }
    }

    private static bool SameBits(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.contiguous().bytes.SequenceEqual(b.contiguous().bytes);

    [Theory]
    [InlineData(new[] { "n0/gpu0", "n1/gpu0" }, new[] { 0, 1 })]
    [InlineData(new[] { "n0/gpu0", "n1/gpu0", "n0/gpu1", "n1/gpu1" }, new[] { 0, 1, 2, 3 })]          // every hop crosses
    [InlineData(new[] { "n0/gpu0", "n0/gpu1", "n1/gpu0", "n1/gpu1", "n2/gpu0" }, new[] { 0, 1, 2, 3, 4 })] // runs per server: hierarchical
    [InlineData(new[] { "n0/gpu0", "n1/gpu0", "n2/gpu0", "n0/gpu1" }, new[] { 3, 1, 2 })]               // a group that is not the world
    public void Every_collective_is_bit_identical_to_the_in_process_fabric(string[] workers, int[] members)
    {
        var planes = Planes(workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        var sessions = Sessions(planes, workers);
        var actual = OnRanks(workers.Length, rank => RunCases(new SocketCollectives(rank, sessions[rank]), rank, workers.Length, members));
        AssertIdentical(InProcess(workers.Length, members), actual);
    }

    /// <summary>Dials a plane as rank <paramref name="from"/> would and returns the acceptor's answer, with the open connection.</summary>
    private static (Socket Socket, Stream Stream, Handshake.Status Status) Dial(SocketDataPlane plane, string job, int incarnation, int from, int to, byte[] key)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Connect(plane.Endpoint);
        var stream = new NetworkStream(socket, ownsSocket: true);
        return (socket, stream, Handshake.Dial(stream, job, incarnation, from, to, key).Status);
    }

    private static byte[] DataFrame(uint tag, int length)
    {
        var frame = new byte[Wire.HeaderBytes + length];
        var shape = MessageShape.Whole(length);
        Wire.Write(frame, new Wire.Header(Wire.Kind.Data, tag, shape, 0, shape.Size(0)));
        return frame;
    }

    private static float[] AllReduce(SocketSession[] sessions, int elements)
    {
        var group = new ProcessGroup("world", Enumerable.Range(0, sessions.Length).ToArray());
        return OnRanks(sessions.Length, rank =>
        {
            var t = full(elements, rank + 1.0f);
            new SocketCollectives(rank, sessions[rank]).AllReduce(group, t);
            return t.data<float>().ToArray();
        }).SelectMany(x => x).Distinct().ToArray();
    }

    [Fact]
    public void A_connection_of_an_older_incarnation_is_refused_and_nothing_it_sends_reaches_the_new_one()
    {
        var planes = Planes(2);
        string[] workers = ["n0/gpu0", "n1/gpu0"];
        var oldKey = SessionKeys.New();
        var old = Sessions(planes, workers, incarnation: 1, key: oldKey);
        Assert.Equal([3f], AllReduce(old, 1000));
        foreach (var session in old)
            session.Leave("the job was rebuilt");

        var current = Sessions(planes, workers, incarnation: 2);
        // Rank 0 of incarnation 1, with incarnation 1's key, tries again: the silo of rank 1 refuses it as stale,
        // and closes the connection without reading what it sends.
        var (socket, stream, status) = Dial(planes[1], "job", 1, 0, 1, SessionKeys.Parse(oldKey)!);
        Assert.Equal(Handshake.Status.Stale, status);
        try
        {
            stream.Write(DataFrame(0x1234, 1000));
        }
        catch (IOException)
        {
            // the silo may already have closed it
        }
        Assert.Equal(0, stream.Read(new byte[1]));
        stream.Dispose();
        socket.Dispose();
        Assert.Equal([3f], AllReduce(current, 1000));
    }

    [Fact]
    public void A_connection_without_the_session_key_is_refused()
    {
        var planes = Planes(2);
        string[] workers = ["n0/gpu0", "n1/gpu0"];
        var sessions = Sessions(planes, workers);
        var (socket, stream, status) = Dial(planes[1], "job", 1, 0, 1, SessionKeys.Parse(SessionKeys.New())!);
        Assert.Equal(Handshake.Status.WrongKey, status);
        stream.Dispose();
        socket.Dispose();
        Assert.Equal([3f], AllReduce(sessions, 10));
    }

    [Fact]
    public void A_peer_whose_connection_breaks_fails_the_collective_at_once_as_a_lost_peer()
    {
        var planes = Planes(2);
        string[] workers = ["n0/gpu0", "n1/gpu0"];
        var key = SessionKeys.New();
        var sessions = Sessions(planes, workers, key: key, timeout: TimeSpan.FromSeconds(60));
        // "Rank 0" connects properly, then its process is gone: the connection closes without a goodbye.
        var (socket, stream, status) = Dial(planes[1], "job", 1, 0, 1, SessionKeys.Parse(key)!);
        Assert.Equal(Handshake.Status.Accepted, status);
        var watch = Stopwatch.StartNew();
        var receive = Task.Run(() => new SocketCollectives(1, sessions[1]).Recv(zeros(1000), 0, 7), TestContext.Current.CancellationToken);
        Thread.Sleep(300);
        stream.Dispose();
        socket.Dispose();
        var ex = Assert.Throws<CollectiveTimeoutException>(() => receive.GetAwaiter().GetResult());
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed.TotalSeconds:0.0} s against a 60 s collective timeout");
        Assert.Contains("lost the connection to rank 0 (n0/gpu0): the connection was closed by the peer", ex.Message);
    }

    [Fact]
    public void A_peer_that_falls_silent_is_lost_after_the_silence_limit_not_the_collective_timeout()
    {
        var planes = Planes(2, new SocketDataPlaneOptions { Silence = TimeSpan.FromSeconds(3) });
        string[] workers = ["n0/gpu0", "n1/gpu0"];
        var key = SessionKeys.New();
        var sessions = Sessions(planes, workers, key: key, timeout: TimeSpan.FromSeconds(120));
        // "Rank 0" connects and then sends nothing at all, not even heartbeats (a machine that froze).
        var (socket, stream, status) = Dial(planes[1], "job", 1, 0, 1, SessionKeys.Parse(key)!);
        Assert.Equal(Handshake.Status.Accepted, status);
        var watch = Stopwatch.StartNew();
        var ex = Assert.Throws<CollectiveTimeoutException>(() => new SocketCollectives(1, sessions[1]).Recv(zeros(1000), 0, 7));
        Assert.InRange(watch.Elapsed.TotalSeconds, 2.5, 30);
        Assert.Contains("nothing arrived for 3s (not even a heartbeat)", ex.Message);
        stream.Dispose();
        socket.Dispose();
    }

    [Fact]
    public void A_peer_that_leaves_the_job_ends_the_others_collectives_as_an_echo()
    {
        var planes = Planes(2);
        string[] workers = ["n0/gpu0", "n1/gpu0"];
        var sessions = Sessions(planes, workers);
        Assert.Equal([3f], AllReduce(sessions, 10)); // connected
        var watch = Stopwatch.StartNew();
        var receive = Task.Run(() => new SocketCollectives(1, sessions[1]).Recv(zeros(1000), 0, 7), TestContext.Current.CancellationToken);
        Thread.Sleep(300);
        sessions[0].Leave("another rank failed");
        var ex = Assert.Throws<CollectiveAbortedException>(() => receive.GetAwaiter().GetResult());
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10));
        Assert.Contains("rank 0 (n0/gpu0) left the job", ex.Message);
    }

    [Theory]
    [InlineData((object)new[] { "n0/gpu0", "n1/gpu0" })] // over TCP
    [InlineData((object)new[] { "n0/gpu0", "n0/gpu1" })] // in memory
    public void A_message_sent_before_its_sender_left_is_still_received(string[] workers)
    {
        var planes = Planes(workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        var sessions = Sessions(planes, workers);
        using var sent = arange(1000, dtype: ScalarType.Float32);
        new SocketCollectives(0, sessions[0]).Send(sent, 1, 3);
        sessions[0].Leave("its probe is done");
        using var received = zeros(1000);
        new SocketCollectives(1, sessions[1]).Recv(received, 0, 3);
        Assert.True(received.equal(sent).all().item<bool>());
        // Anything asked for after that is an echo of the leaving.
        Assert.Throws<CollectiveAbortedException>(() => new SocketCollectives(1, sessions[1]).Recv(received, 0, 4));
    }

    [Fact]
    public void A_malformed_frame_fails_the_link_before_anything_is_allocated_for_it()
    {
        var planes = Planes(2);
        string[] workers = ["n0/gpu0", "n1/gpu0"];
        var key = SessionKeys.New();
        var sessions = Sessions(planes, workers, key: key);
        var (socket, stream, status) = Dial(planes[1], "job", 1, 0, 1, SessionKeys.Parse(key)!);
        Assert.Equal(Handshake.Status.Accepted, status);
        var frame = DataFrame(0x8000_0007, 16);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(24), int.MaxValue); // a piece longer than its message
        stream.Write(frame);
        var ex = Assert.Throws<CollectiveTimeoutException>(() => new SocketCollectives(1, sessions[1]).Recv(zeros(4), 0, 7));
        Assert.Contains("sent a malformed frame", ex.Message);
        stream.Dispose();
        socket.Dispose();
    }

    private (string Certificate, string Key) SelfSigned(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        var certFile = Path.GetTempFileName();
        var keyFile = Path.GetTempFileName();
        File.WriteAllText(certFile, certificate.ExportCertificatePem());
        File.WriteAllText(keyFile, key.ExportPkcs8PrivateKeyPem());
        _files.AddRange([certFile, keyFile]);
        return (certFile, keyFile);
    }

    [Fact]
    public void Over_tls_the_collectives_give_the_same_bits_and_a_peer_with_another_certificate_is_refused()
    {
        var (cert, key) = SelfSigned("flm-cluster");
        var tls = new SocketDataPlaneOptions { TlsCertificate = cert, TlsKey = key };
        var planes = Planes(2, tls);
        string[] workers = ["n0/gpu0", "n1/gpu0", "n0/gpu1", "n1/gpu1"];
        var sessions = Sessions(planes, workers);
        var actual = OnRanks(4, rank => RunCases(new SocketCollectives(rank, sessions[rank]), rank, 4, [0, 1, 2, 3]));
        AssertIdentical(InProcess(4, [0, 1, 2, 3]), actual);

        var (otherCert, otherKey) = SelfSigned("someone-else");
        var stranger = Planes(1, new SocketDataPlaneOptions { TlsCertificate = otherCert, TlsKey = otherKey })[0];
        var mixed = new[] { stranger, planes[1] };
        // The accepting rank waits for a connection that never passes TLS: until its (short) timeout.
        var refused = Sessions(mixed, ["n0/gpu0", "n1/gpu0"], job: "other", timeout: TimeSpan.FromSeconds(3));
        var ex = Assert.Throws<AggregateException>(() => AllReduce(refused, 10));
        Assert.Contains(ex.InnerExceptions, e => e is CollectiveTimeoutException && e.Message.Contains("the data connection to"));
    }
}
