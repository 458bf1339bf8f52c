using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Security.Cryptography;
using System.Text;

namespace FlmCluster.Training.Data;

/// <summary>
/// A prepared token file: <c>PREFIX.bin</c> holds the token ids (little-endian u16 when the vocabulary
/// fits, else u32), every document followed by end-of-text; <c>PREFIX.idx</c> holds the header, the
/// .bin checksum and the document offsets. Format: docs/data-format.md.
/// </summary>
public sealed unsafe class TokenFile : IDisposable
{
    public const string Magic = "FLMTOKS1";
    public const int Version = 1;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;

    public string BinPath { get; }
    public int BytesPerToken { get; }
    public int VocabSize { get; }
    public int EndOfText { get; }
    public string TokenizerName { get; }
    public long TokenCount { get; }
    public byte[] Sha256 { get; }
    public long[] DocumentOffsets { get; }
    public long DocumentCount => DocumentOffsets.Length - 1;

    private TokenFile(string binPath, int bytesPerToken, int vocab, int eot, string tokenizer, long tokens, byte[] sha, long[] offsets)
    {
        BinPath = binPath;
        BytesPerToken = bytesPerToken;
        VocabSize = vocab;
        EndOfText = eot;
        TokenizerName = tokenizer;
        TokenCount = tokens;
        Sha256 = sha;
        DocumentOffsets = offsets;
        if (tokens > 0)
        {
            _map = MemoryMappedFile.CreateFromFile(binPath, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + _view.PointerOffset;
        }
    }

    public static string IdxPath(string prefix) => prefix + ".idx";
    public static string BinPathOf(string prefix) => prefix + ".bin";

    /// <summary>Accepts PREFIX, PREFIX.bin or PREFIX.idx.</summary>
    public static string PrefixOf(string path) =>
        path.EndsWith(".bin", StringComparison.Ordinal) || path.EndsWith(".idx", StringComparison.Ordinal) ? path[..^4] : path;

    public static TokenFile Open(string path)
    {
        var prefix = PrefixOf(path);
        var idx = IdxPath(prefix);
        var bin = BinPathOf(prefix);
        if (!File.Exists(idx) || !File.Exists(bin))
            throw new FlmUserException($"token file '{prefix}' needs both {Path.GetFileName(bin)} and {Path.GetFileName(idx)}; create them with 'flm data prepare'");
        var header = File.ReadAllBytes(idx);
        try
        {
            var s = header.AsSpan();
            if (Encoding.ASCII.GetString(header, 0, 8) != Magic)
                throw new FlmUserException($"'{idx}' is not a token index (bad magic); re-create it with 'flm data prepare'");
            var version = BinaryPrimitives.ReadInt32LittleEndian(s[8..]);
            if (version != Version)
                throw new FlmUserException($"'{idx}' has format version {version}, this build reads {Version}; re-create it with 'flm data prepare'");
            var bpt = BinaryPrimitives.ReadInt32LittleEndian(s[12..]);
            var vocab = BinaryPrimitives.ReadInt32LittleEndian(s[16..]);
            var eot = BinaryPrimitives.ReadInt32LittleEndian(s[20..]);
            var nameLen = BinaryPrimitives.ReadInt32LittleEndian(s[24..]);
            var name = Encoding.UTF8.GetString(header, 28, nameLen);
            var pos = 28 + nameLen;
            var docs = BinaryPrimitives.ReadInt64LittleEndian(s[pos..]);
            var tokens = BinaryPrimitives.ReadInt64LittleEndian(s[(pos + 8)..]);
            var sha = s.Slice(pos + 16, 32).ToArray();
            pos += 48;
            var offsets = new long[docs + 1];
            for (var i = 0; i <= docs; i++)
                offsets[i] = BinaryPrimitives.ReadInt64LittleEndian(s[(pos + 8 * i)..]);
            if (bpt is not (2 or 4))
                throw new FlmUserException($"'{idx}' declares {bpt} bytes per token; only 2 and 4 exist");
            var expected = tokens * bpt;
            var actual = new FileInfo(bin).Length;
            if (actual != expected)
                throw new FlmUserException($"'{bin}' has {actual} bytes but its index says {tokens} tokens × {bpt} = {expected}; the pair is incomplete, re-create it");
            return new TokenFile(bin, bpt, vocab, eot, name, tokens, sha, offsets);
        }
        catch (ArgumentOutOfRangeException)
        {
            throw new FlmUserException($"'{idx}' is truncated; re-create it with 'flm data prepare'");
        }
    }

    public int this[long i] => BytesPerToken == 2
        ? BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(_base + i * 2, 2))
        : (int)BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(_base + i * 4, 4));

    public void CopyTokens(long start, Span<long> destination)
    {
        if (start < 0 || start + destination.Length > TokenCount)
            throw new ArgumentOutOfRangeException(nameof(start));
        if (BytesPerToken == 2)
        {
            var src = new ReadOnlySpan<ushort>(_base + start * 2, destination.Length);
            for (var i = 0; i < destination.Length; i++) destination[i] = src[i];
        }
        else
        {
            var src = new ReadOnlySpan<uint>(_base + start * 4, destination.Length);
            for (var i = 0; i < destination.Length; i++) destination[i] = src[i];
        }
    }

    /// <summary>Recomputes the .bin checksum and compares it with the index.</summary>
    public bool VerifyChecksum()
    {
        using var stream = File.OpenRead(BinPath);
        return SHA256.HashData(stream).AsSpan().SequenceEqual(Sha256);
    }

    public void Dispose()
    {
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }

    /// <summary>Streams documents into a new token file; both files appear only when complete.</summary>
    public sealed class Writer : IDisposable
    {
        private readonly string _prefix;
        private readonly ITextTokenizer _tokenizer;
        private readonly int _bytesPerToken;
        private readonly FileStream _bin;
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private readonly List<long> _offsets = [0];
        private readonly byte[] _buffer = new byte[1 << 16];
        private bool _done;

        public long Tokens { get; private set; }
        public long Documents => _offsets.Count - 1;

        public Writer(string prefix, ITextTokenizer tokenizer)
        {
            _prefix = prefix;
            _tokenizer = tokenizer;
            _bytesPerToken = tokenizer.VocabSize <= 65536 ? 2 : 4;
            var dir = Path.GetDirectoryName(Path.GetFullPath(prefix));
            if (dir is not null)
                Directory.CreateDirectory(dir);
            _bin = new FileStream(BinPathOf(prefix) + ".tmp", FileMode.Create, FileAccess.Write, FileShare.None);
        }

        public void AddDocument(ReadOnlySpan<int> ids)
        {
            var fill = 0;
            void Put(int id)
            {
                if (_bytesPerToken == 2) BinaryPrimitives.WriteUInt16LittleEndian(_buffer.AsSpan(fill), (ushort)id);
                else BinaryPrimitives.WriteUInt32LittleEndian(_buffer.AsSpan(fill), (uint)id);
                fill += _bytesPerToken;
                if (fill == _buffer.Length) Flush();
            }
            void Flush()
            {
                _bin.Write(_buffer, 0, fill);
                _hash.AppendData(_buffer, 0, fill);
                fill = 0;
            }
            foreach (var id in ids)
                Put(id);
            Put(_tokenizer.EndOfText);
            Flush();
            Tokens += ids.Length + 1;
            _offsets.Add(Tokens);
        }

        /// <summary>Flushes and fsyncs the .bin, then writes the .idx; renames make both visible.</summary>
        public void Complete()
        {
            _bin.Flush(flushToDisk: true);
            _bin.Dispose();
            var name = Encoding.UTF8.GetBytes(_tokenizer.Name);
            using (var idx = new FileStream(IdxPath(_prefix) + ".tmp", FileMode.Create, FileAccess.Write, FileShare.None))
            using (var w = new BinaryWriter(idx))
            {
                w.Write(Encoding.ASCII.GetBytes(Magic));
                w.Write(Version);
                w.Write(_bytesPerToken);
                w.Write(_tokenizer.VocabSize);
                w.Write(_tokenizer.EndOfText);
                w.Write(name.Length);
                w.Write(name);
                w.Write((long)Documents);
                w.Write(Tokens);
                w.Write(_hash.GetHashAndReset());
                foreach (var offset in _offsets)
                    w.Write(offset);
                w.Flush();
                idx.Flush(flushToDisk: true);
            }
            File.Move(BinPathOf(_prefix) + ".tmp", BinPathOf(_prefix), overwrite: true);
            File.Move(IdxPath(_prefix) + ".tmp", IdxPath(_prefix), overwrite: true);
            _done = true;
        }

        public void Dispose()
        {
            if (_done)
                return;
            _bin.Dispose();
            File.Delete(BinPathOf(_prefix) + ".tmp");
            File.Delete(IdxPath(_prefix) + ".tmp");
        }
    }
}
