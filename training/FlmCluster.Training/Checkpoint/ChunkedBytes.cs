namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// Bytes held as a list of fixed-size chunks: unlimited by the 2 GiB array limit, and already cut into
/// pieces the size of one transport message.
/// </summary>
public sealed class ChunkedBytes(IReadOnlyList<byte[]> chunks)
{
    public IReadOnlyList<byte[]> Chunks { get; } = chunks;
    public long Length { get; } = chunks.Sum(c => (long)c.Length);

    /// <summary>A checksum of the bytes (XxHash128, hex: fast, against corruption in memory and on the way).</summary>
    public string Checksum()
    {
        var hash = new System.IO.Hashing.XxHash128();
        foreach (var chunk in Chunks)
            hash.Append(chunk);
        return Convert.ToHexStringLower(hash.GetCurrentHash());
    }

    /// <summary>Copies the bytes from <paramref name="offset"/> into <paramref name="destination"/> (chunks of equal size but the last).</summary>
    public void ReadAt(long offset, Span<byte> destination)
    {
        if (offset < 0 || offset + destination.Length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"bytes {offset} … {offset + destination.Length} of {Length}");
        var size = Chunks.Count > 0 ? Chunks[0].Length : 1;
        while (destination.Length > 0)
        {
            var chunk = Chunks[(int)(offset / size)];
            var at = (int)(offset % size);
            var n = Math.Min(destination.Length, chunk.Length - at);
            chunk.AsSpan(at, n).CopyTo(destination);
            destination = destination[n..];
            offset += n;
        }
    }

    /// <summary>A stream that appends to chunks of <paramref name="chunkSize"/> bytes; <see cref="Writer.ToBytes"/> ends it.</summary>
    public sealed class Writer(int chunkSize) : Stream
    {
        private readonly List<byte[]> _chunks = [];
        private byte[] _current = GC.AllocateUninitializedArray<byte>(chunkSize);
        private int _used;
        private long _length;

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            while (buffer.Length > 0)
            {
                if (_used == _current.Length)
                {
                    _chunks.Add(_current);
                    _current = GC.AllocateUninitializedArray<byte>(chunkSize);
                    _used = 0;
                }
                var n = Math.Min(buffer.Length, _current.Length - _used);
                buffer[..n].CopyTo(_current.AsSpan(_used));
                _used += n;
                _length += n;
                buffer = buffer[n..];
            }
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public ChunkedBytes ToBytes()
        {
            if (_used > 0)
                _chunks.Add(_current.AsSpan(0, _used).ToArray());
            _current = [];
            _used = 0;
            return new ChunkedBytes(_chunks);
        }

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => _length;
        public override long Position { get => _length; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }

    /// <summary>Reads the chunks in order.</summary>
    public Stream OpenRead() => new Reader(Chunks, Length);

    private sealed class Reader(IReadOnlyList<byte[]> chunks, long length) : Stream
    {
        private int _chunk;
        private int _offset;
        private long _position;

        public override int Read(Span<byte> buffer)
        {
            var total = 0;
            while (buffer.Length > 0 && _chunk < chunks.Count)
            {
                var current = chunks[_chunk];
                var n = Math.Min(buffer.Length, current.Length - _offset);
                current.AsSpan(_offset, n).CopyTo(buffer);
                buffer = buffer[n..];
                _offset += n;
                total += n;
                if (_offset == current.Length)
                {
                    _chunk++;
                    _offset = 0;
                }
            }
            _position += total;
            return total;
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => length;
        public override long Position { get => _position; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
