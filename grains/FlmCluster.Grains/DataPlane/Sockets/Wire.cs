using System.Buffers.Binary;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// How a message is cut into pieces: pieces of <see cref="Piece"/> bytes within each segment of
/// <see cref="Segment"/> bytes (a reduce-scatter's chunks are segments, so no piece straddles two chunks).
/// Sender and receiver derive the same pieces from the shape; a piece is the unit that is pipelined.
/// </summary>
public readonly record struct MessageShape(int Length, int Segment, int Piece)
{
    public const int MinPieceBytes = 64 << 10;
    public const int MaxPieceBytes = 1 << 20;

    /// <summary>
    /// Pieces of about 1/32 of a segment, a power of two between 64 KiB and 1 MiB: enough pieces to keep a chain
    /// of members busy, few enough that each costs little.
    /// </summary>
    public static MessageShape For(int length, int segment) =>
        new(length, segment, (int)Math.Clamp(System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, segment / 32)), MinPieceBytes, MaxPieceBytes));

    public static MessageShape Whole(int length) => For(length, length);

    /// <summary>A message nobody works on piece by piece (point to point): pieces as large as allowed, so fewer hand-overs.</summary>
    public static MessageShape Direct(int length) => new(length, length, Math.Clamp(length, 1, MaxPieceBytes));

    /// <summary>Whole segments in pieces of at most <see cref="MaxPieceBytes"/>; an empty message is one empty piece.</summary>
    public bool IsValid => Piece is > 0 and <= MaxPieceBytes && (Length == 0 ? Segment >= 0 : Segment > 0 && Length % Segment == 0);

    private int PerSegment => (int)(((long)Segment + Piece - 1) / Piece);

    public int Pieces => Length == 0 ? 1 : Length / Segment * PerSegment;

    public int Offset(int piece) => Length == 0 ? 0 : piece / PerSegment * Segment + piece % PerSegment * Piece;

    public int Size(int piece) => Length == 0 ? 0 : Math.Min(Piece, Segment - piece % PerSegment * Piece);
}

/// <summary>Frames on a data-plane connection after the handshake: a fixed header, then the piece's bytes.</summary>
internal static class Wire
{
    public const int HeaderBytes = 32;

    /// <summary>The largest message a peer may announce (a collective splits larger tensors before it gets here).</summary>
    public const int MaxMessageBytes = int.MaxValue;

    public enum Kind : byte
    {
        Data = 1,

        /// <summary>Sent by an idle sender every <see cref="SocketDataPlaneOptions.Heartbeat"/>: silence means the peer is gone.</summary>
        Heartbeat = 2,

        /// <summary>The peer leaves the session on purpose (its job was aborted or released): not a lost peer.</summary>
        Goodbye = 3,
    }

    public readonly record struct Header(Kind Kind, uint Tag, MessageShape Shape, int Piece, int PieceLength);

    public static void Write(Span<byte> into, in Header h)
    {
        into[0] = (byte)h.Kind;
        into[1] = into[2] = into[3] = 0;
        BinaryPrimitives.WriteUInt32LittleEndian(into[4..], h.Tag);
        BinaryPrimitives.WriteInt32LittleEndian(into[8..], h.Shape.Length);
        BinaryPrimitives.WriteInt32LittleEndian(into[12..], h.Shape.Segment);
        BinaryPrimitives.WriteInt32LittleEndian(into[16..], h.Shape.Piece);
        BinaryPrimitives.WriteInt32LittleEndian(into[20..], h.Piece);
        BinaryPrimitives.WriteInt32LittleEndian(into[24..], h.PieceLength);
        BinaryPrimitives.WriteInt32LittleEndian(into[28..], 0);
    }

    /// <summary>Parses and checks a header from a peer: a frame that does not describe a valid piece is refused before anything is allocated for it.</summary>
    public static Header Read(ReadOnlySpan<byte> from)
    {
        var kind = (Kind)from[0];
        var shape = new MessageShape(BinaryPrimitives.ReadInt32LittleEndian(from[8..]), BinaryPrimitives.ReadInt32LittleEndian(from[12..]),
            BinaryPrimitives.ReadInt32LittleEndian(from[16..]));
        var h = new Header(kind, BinaryPrimitives.ReadUInt32LittleEndian(from[4..]), shape,
            BinaryPrimitives.ReadInt32LittleEndian(from[20..]), BinaryPrimitives.ReadInt32LittleEndian(from[24..]));
        if (kind is Kind.Heartbeat or Kind.Goodbye)
            return h;
        if (kind != Kind.Data || !shape.IsValid || h.Piece < 0 || h.Piece >= shape.Pieces || h.PieceLength != shape.Size(h.Piece))
            throw new InvalidDataException($"malformed data-plane frame (kind {(byte)kind}, {shape.Length} bytes in segments of {shape.Segment}, piece {h.Piece} of {h.PieceLength} bytes)");
        return h;
    }
}
