using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// How a data connection starts. The accepting silo sends a fresh nonce; the dialling rank names the job,
/// incarnation and both ranks and proves it holds the job's session key (HMAC over both nonces and those
/// names); the acceptor answers with a status and its own proof. Nothing a dialler sends can make the acceptor
/// allocate more than <see cref="MaxHelloBytes"/>, and a session of an older incarnation is refused as stale.
/// </summary>
internal static class Handshake
{
    private const uint Magic = 0x444D4C46; // "FLMD"
    private const ushort Version = 1;
    private const int NonceBytes = 32;
    private const int ProofBytes = 32;
    public const int MaxJobIdBytes = 256;
    public const int MaxHelloBytes = 4 + 2 + 2 + MaxJobIdBytes + 12 + NonceBytes + ProofBytes;
    public const int ChallengeBytes = 4 + 2 + NonceBytes;
    public const int AnswerBytes = 1 + ProofBytes;

    public enum Status : byte
    {
        Accepted = 0,

        /// <summary>No rank of that session is (or became) active here in time.</summary>
        UnknownSession = 1,

        /// <summary>This silo's rank already runs a newer incarnation of the job.</summary>
        Stale = 2,

        /// <summary>The proof does not match this session's key.</summary>
        WrongKey = 3,

        /// <summary>Malformed, or the pair of ranks is impossible or already connected.</summary>
        Refused = 4,
    }

    /// <summary>What the dialler says about itself.</summary>
    public sealed record Hello(string JobId, int Incarnation, int From, int To, byte[] Nonce, byte[] Proof);

    public static byte[] NewNonce() => RandomNumberGenerator.GetBytes(NonceBytes);

    public static byte[] Challenge(byte[] nonce)
    {
        var bytes = new byte[ChallengeBytes];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(4), Version);
        nonce.CopyTo(bytes, 6);
        return bytes;
    }

    /// <summary>The acceptor's nonce from its challenge; throws on anything that is not one.</summary>
    public static byte[] ReadChallenge(ReadOnlySpan<byte> bytes)
    {
        if (BinaryPrimitives.ReadUInt32LittleEndian(bytes) != Magic || BinaryPrimitives.ReadUInt16LittleEndian(bytes[4..]) != Version)
            throw new InvalidDataException("the peer is not an FlmCluster data port of this version (or TLS is on at one end only)");
        return bytes.Slice(6, NonceBytes).ToArray();
    }

    /// <summary>The dialler's hello (with its proof) as bytes, and as the record its answer is checked against.</summary>
    public static (byte[] Bytes, Hello Hello) WriteHello(string jobId, int incarnation, int from, int to, byte[] acceptorNonce, byte[] key)
    {
        var job = Encoding.UTF8.GetBytes(jobId);
        if (job.Length > MaxJobIdBytes)
            throw new ArgumentException($"job id '{jobId}' is longer than {MaxJobIdBytes} bytes");
        var nonce = NewNonce();
        var bytes = new byte[8 + job.Length + 12 + NonceBytes + ProofBytes];
        var span = bytes.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(span, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(span[4..], Version);
        BinaryPrimitives.WriteUInt16LittleEndian(span[6..], (ushort)job.Length);
        job.CopyTo(span[8..]);
        var at = 8 + job.Length;
        BinaryPrimitives.WriteInt32LittleEndian(span[at..], incarnation);
        BinaryPrimitives.WriteInt32LittleEndian(span[(at + 4)..], from);
        BinaryPrimitives.WriteInt32LittleEndian(span[(at + 8)..], to);
        nonce.CopyTo(span[(at + 12)..]);
        var hello = new Hello(jobId, incarnation, from, to, nonce, []);
        Proof(key, "dial", acceptorNonce, hello).CopyTo(span[(at + 12 + NonceBytes)..]);
        return (bytes, hello);
    }

    /// <summary>Reads a hello from a stream (the acceptor side), bounded by <see cref="MaxHelloBytes"/>.</summary>
    public static async Task<Hello> ReadHelloAsync(Stream stream, CancellationToken cancel)
    {
        var head = new byte[8];
        await stream.ReadExactlyAsync(head, cancel);
        if (BinaryPrimitives.ReadUInt32LittleEndian(head) != Magic || BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(4)) != Version)
            throw new InvalidDataException("not an FlmCluster data-plane hello of this version");
        var jobLength = BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(6));
        if (jobLength is 0 or > MaxJobIdBytes)
            throw new InvalidDataException($"a job id of {jobLength} bytes");
        var rest = new byte[jobLength + 12 + NonceBytes + ProofBytes];
        await stream.ReadExactlyAsync(rest, cancel);
        var span = rest.AsSpan();
        string jobId;
        try
        {
            jobId = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(span[..jobLength]);
        }
        catch (DecoderFallbackException)
        {
            throw new InvalidDataException("a job id that is not UTF-8");
        }
        return new Hello(jobId, BinaryPrimitives.ReadInt32LittleEndian(span[jobLength..]), BinaryPrimitives.ReadInt32LittleEndian(span[(jobLength + 4)..]),
            BinaryPrimitives.ReadInt32LittleEndian(span[(jobLength + 8)..]), span.Slice(jobLength + 12, NonceBytes).ToArray(),
            span.Slice(jobLength + 12 + NonceBytes, ProofBytes).ToArray());
    }

    /// <summary>The dialler's side on a connected stream: the acceptor's challenge, this hello, the acceptor's answer.</summary>
    public static (Status Status, bool Authentic) Dial(Stream stream, string jobId, int incarnation, int from, int to, byte[] key)
    {
        var challenge = new byte[ChallengeBytes];
        stream.ReadExactly(challenge);
        var nonce = ReadChallenge(challenge);
        var (bytes, hello) = WriteHello(jobId, incarnation, from, to, nonce, key);
        stream.Write(bytes);
        var answer = new byte[AnswerBytes];
        stream.ReadExactly(answer);
        return ReadAnswer(answer, hello, nonce, key);
    }

    public static bool ProvesKey(Hello hello, byte[] acceptorNonce, byte[] key) =>
        CryptographicOperations.FixedTimeEquals(hello.Proof, Proof(key, "dial", acceptorNonce, hello));

    public static byte[] Answer(Status status, Hello hello, byte[] acceptorNonce, byte[]? key)
    {
        var bytes = new byte[AnswerBytes];
        bytes[0] = (byte)status;
        if (status == Status.Accepted)
            Proof(key!, "accept", acceptorNonce, hello).CopyTo(bytes, 1);
        return bytes;
    }

    /// <summary>The acceptor's status; for an accepted hello, whether its proof shows it holds the key too.</summary>
    public static (Status Status, bool Authentic) ReadAnswer(ReadOnlySpan<byte> bytes, Hello hello, byte[] acceptorNonce, byte[] key)
    {
        var status = (Status)bytes[0];
        return (status, status == Status.Accepted && CryptographicOperations.FixedTimeEquals(bytes[1..AnswerBytes], Proof(key, "accept", acceptorNonce, hello)));
    }

    private static byte[] Proof(byte[] key, string role, byte[] acceptorNonce, Hello hello)
    {
        using var hmac = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, key);
        hmac.AppendData(Encoding.ASCII.GetBytes($"flm-data-plane/{role}"));
        hmac.AppendData(acceptorNonce);
        hmac.AppendData(hello.Nonce);
        var job = Encoding.UTF8.GetBytes(hello.JobId);
        Span<byte> numbers = stackalloc byte[16];
        BinaryPrimitives.WriteInt32LittleEndian(numbers, job.Length);
        BinaryPrimitives.WriteInt32LittleEndian(numbers[4..], hello.Incarnation);
        BinaryPrimitives.WriteInt32LittleEndian(numbers[8..], hello.From);
        BinaryPrimitives.WriteInt32LittleEndian(numbers[12..], hello.To);
        hmac.AppendData(numbers);
        hmac.AppendData(job);
        return hmac.GetHashAndReset();
    }
}
