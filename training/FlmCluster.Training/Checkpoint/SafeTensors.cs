using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// The safetensors file format: an 8-byte little-endian header length, a JSON header mapping each name to
/// dtype, shape and byte range (plus optional string metadata), then the raw little-endian tensor bytes.
/// </summary>
public static class SafeTensors
{
    public static string DTypeName(ScalarType type) => type switch
    {
        ScalarType.Float32 => "F32",
        ScalarType.Float64 => "F64",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Float16 => "F16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Byte => "U8",
        _ => throw new NotSupportedException($"safetensors: unsupported dtype {type}"),
    };

    public static ScalarType ParseDType(string name) =>
        TryParseDType(name, out var type) ? type : throw new InvalidCheckpointException($"safetensors: unsupported dtype '{name}'");

    public static bool TryParseDType(string name, out ScalarType type)
    {
        (var known, type) = name switch
        {
            "F32" => (true, ScalarType.Float32),
            "F64" => (true, ScalarType.Float64),
            "BF16" => (true, ScalarType.BFloat16),
            "F16" => (true, ScalarType.Float16),
            "I64" => (true, ScalarType.Int64),
            "I32" => (true, ScalarType.Int32),
            "U8" => (true, ScalarType.Byte),
            _ => (false, ScalarType.Byte),
        };
        return known;
    }

    /// <summary>Bytes per element of the dtypes this format stores.</summary>
    public static int ElementSize(ScalarType type) => type switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 => 2,
        _ => 1,
    };

    /// <summary>Bytes of a tensor of this shape and dtype, in 128 bits (a corrupt shape cannot overflow it), or −1 for a negative dimension.</summary>
    public static Int128 ByteCount(IReadOnlyList<long> shape, ScalarType type)
    {
        Int128 count = ElementSize(type);
        foreach (var d in shape)
        {
            if (d < 0)
                return -1;
            count *= d;
            if (count > long.MaxValue)
                return long.MaxValue + (Int128)1; // beyond any file; stop before the product itself overflows
        }
        return count;
    }

    /// <summary>Writes the tensors (sorted by name), fsyncs the file and returns its size and SHA-256.</summary>
    public static (long Bytes, string Sha256) Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        var sha = Write(stream, tensors, metadata, hash: true)!;
        stream.Flush(flushToDisk: true);
        return (stream.Length, sha);
    }

    /// <summary>Writes the tensors (sorted by name) to a stream; returns the SHA-256 of what was written when <paramref name="hash"/>.</summary>
    public static string? Write(Stream stream, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata, bool hash)
    {
        var names = tensors.Keys.Order(StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
            header["__metadata__"] = new JsonObject(metadata.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, kv.Value)));
        long offset = 0;
        var hosts = new List<Tensor>();
        foreach (var name in names)
        {
            var t = tensors[name].detach().cpu().contiguous();
            hosts.Add(t);
            var bytes = t.NumberOfElements * t.ElementSize;
            header[name] = new JsonObject
            {
                ["dtype"] = DTypeName(t.dtype),
                ["shape"] = new JsonArray(t.shape.Select(s => (JsonNode)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (json.Length + 7) / 8 * 8;
        using var sha = hash ? System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256) : null;
        void Put(ReadOnlySpan<byte> bytes)
        {
            stream.Write(bytes);
            sha?.AppendData(bytes);
        }
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(length, padded);
        Put(length);
        Put(json);
        Span<byte> space = [(byte)' '];
        for (var i = json.Length; i < padded; i++)
            Put(space);
        foreach (var t in hosts)
        {
            ForEachSlice(t, slice => Put(slice.bytes));
            t.Dispose();
        }
        return sha is null ? null : Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>
    /// Visits a CPU tensor's memory in slices of at most 1 GiB: a span over a tensor's native memory is
    /// limited to 2 GiB.
    /// </summary>
    private static void ForEachSlice(Tensor t, Action<Tensor> visit)
    {
        using var flat = t.reshape(-1);
        var perSlice = Math.Max(1, (1L << 30) / Math.Max(1, t.ElementSize));
        for (long start = 0; start < t.NumberOfElements; start += perSlice)
        {
            using var slice = flat.narrow(0, start, Math.Min(perSlice, t.NumberOfElements - start));
            visit(slice);
        }
    }

    /// <summary>SHA-256 of a whole file (to verify a shard against its manifest).</summary>
    public static string FileSha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(stream));
    }

    /// <summary>Reads one tensor of a file by its header entry, without loading the rest.</summary>
    public static Tensor ReadTensor(string path, Entry entry, long dataStart)
    {
        using var stream = File.OpenRead(path);
        stream.Seek(dataStart + entry.Begin, SeekOrigin.Begin);
        return ReadData(stream, entry, path);
    }

    private static Tensor ReadData(Stream stream, Entry entry, string source)
    {
        // The byte count is checked from the header alone: a corrupt size must not allocate first.
        if (entry.End - entry.Begin != ByteCount(entry.Shape, entry.DType))
            throw new InvalidCheckpointException($"{source}: tensor '{entry.Name}' has {entry.End - entry.Begin} bytes for shape [{string.Join(",", entry.Shape)}]");
        var t = empty(entry.Shape, dtype: entry.DType);
        try
        {
            ForEachSlice(t, slice => stream.ReadExactly(slice.bytes));
        }
        catch (EndOfStreamException)
        {
            t.Dispose();
            throw new InvalidCheckpointException($"{source}: truncated in tensor '{entry.Name}'");
        }
        return t;
    }

    /// <summary>Reads every tensor of a file onto the CPU.</summary>
    public static Dictionary<string, Tensor> Read(string path) => Read(path, out _);

    public static Dictionary<string, Tensor> Read(string path, out Dictionary<string, string> metadata)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return Read(stream, path, out metadata);
    }

    /// <summary>Reads every tensor from a stream positioned at the start of safetensors data, in one pass.</summary>
    public static Dictionary<string, Tensor> Read(Stream stream, string source, out Dictionary<string, string> metadata)
    {
        var size = stream.CanSeek ? stream.Length - stream.Position : (long?)null;
        var (entries, meta, _) = ParseHeader(ReadHeaderBytes(stream, source), source, size);
        metadata = meta;
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        long position = 0;
        try
        {
            foreach (var e in entries.OrderBy(e => e.Begin))
            {
                if (e.Begin < position)
                    throw new InvalidCheckpointException($"{source}: tensor '{e.Name}' overlaps another");
                for (; position < e.Begin; position++)
                    if (stream.ReadByte() < 0)
                        throw new InvalidCheckpointException($"{source}: truncated before tensor '{e.Name}'");
                result[e.Name] = ReadData(stream, e, source);
                position = e.End;
            }
        }
        catch
        {
            foreach (var t in result.Values)
                t.Dispose();
            throw;
        }
        return result;
    }

    public sealed record Entry(string Name, ScalarType DType, long[] Shape, long Begin, long End);

    /// <summary>Reads just the header: names, dtypes, shapes, and where the data starts (no tensor data).</summary>
    public static (List<Entry> Entries, Dictionary<string, string> Metadata, long DataStart) ReadHeaderWithOffset(string path)
    {
        using var stream = File.OpenRead(path);
        return ParseHeader(ReadHeaderBytes(stream, path), path, stream.Length);
    }

    /// <summary>
    /// Reads just the header of shard <paramref name="shard"/> of <paramref name="size"/> bytes from wherever its
    /// bytes are (<see cref="IShardBytes"/>), checked like a file's.
    /// </summary>
    public static (List<Entry> Entries, Dictionary<string, string> Metadata, long DataStart) ReadHeaderWithOffset(IShardBytes bytes, string shard, long size, string source)
    {
        if (size < 8)
            throw new InvalidCheckpointException($"{source}: too short for a safetensors file");
        Span<byte> length = stackalloc byte[8];
        bytes.Read(shard, 0, length);
        var n = BinaryPrimitives.ReadInt64LittleEndian(length);
        if (n <= 0 || n > MaxHeaderBytes || n > size - 8)
            throw new InvalidCheckpointException($"{source}: not a safetensors file (header length {n})");
        var header = new byte[8 + n];
        bytes.Read(shard, 0, header);
        return ParseHeader(header, source, size);
    }

    /// <summary>Reads just the header: names, dtypes, shapes (no tensor data).</summary>
    public static (List<Entry> Entries, Dictionary<string, string> Metadata) ReadHeader(string path)
    {
        var (entries, meta, _) = ReadHeaderWithOffset(path);
        return (entries, meta);
    }

    /// <summary>The length prefix and JSON header, leaving the stream at the first data byte.</summary>
    private static byte[] ReadHeaderBytes(Stream stream, string source)
    {
        Span<byte> length = stackalloc byte[8];
        if (stream.ReadAtLeast(length, 8, throwOnEndOfStream: false) < 8)
            throw new InvalidCheckpointException($"{source}: too short for a safetensors file");
        var n = BinaryPrimitives.ReadInt64LittleEndian(length);
        if (n <= 0 || n > MaxHeaderBytes || (stream.CanSeek && n > stream.Length - 8))
            throw new InvalidCheckpointException($"{source}: not a safetensors file (header length {n})");
        var header = new byte[8 + n];
        length.CopyTo(header);
        if (stream.ReadAtLeast(header.AsSpan(8), (int)n, throwOnEndOfStream: false) < n)
            throw new InvalidCheckpointException($"{source}: truncated header");
        return header;
    }

    private const long MaxHeaderBytes = 100_000_000;

    /// <summary>
    /// Parses and checks the header: every entry's dtype, shape and byte range, the byte count against the
    /// shape and, when <paramref name="fileSize"/> is known, the range against the file, so that no tensor
    /// is allocated for data the file does not hold.
    /// </summary>
    private static (List<Entry>, Dictionary<string, string>, long) ParseHeader(byte[] file, string path, long? fileSize)
    {
        if (file.Length < 8)
            throw new InvalidCheckpointException($"{path}: too short for a safetensors file");
        var n = BinaryPrimitives.ReadInt64LittleEndian(file);
        if (n <= 0 || 8 + n > file.Length)
            throw new InvalidCheckpointException($"{path}: not a safetensors file (header length {n})");
        JsonNode? parsed;
        try
        {
            parsed = JsonNode.Parse(file.AsSpan(8, (int)n), documentOptions: Config.JsonShape.ParseOptions);
        }
        catch (JsonException ex)
        {
            throw new InvalidCheckpointException($"{path}: unreadable safetensors header ({ex.Message})");
        }
        if (parsed is not JsonObject header)
            throw new InvalidCheckpointException($"{path}: the safetensors header is not a JSON object");
        var dataLength = fileSize - 8 - n;
        var entries = new List<Entry>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                if (node is not JsonObject meta)
                    throw new InvalidCheckpointException($"{path}: __metadata__ is not an object");
                foreach (var (k, v) in meta)
                    metadata[k] = v is JsonValue value && value.TryGetValue<string>(out var text)
                        ? text
                        : throw new InvalidCheckpointException($"{path}: metadata '{k}' is not a string");
                continue;
            }
            var entry = ParseEntry(name, node)
                ?? throw new InvalidCheckpointException($"{path}: tensor '{name}' needs a known dtype, a shape of non-negative integers and data_offsets [begin, end]");
            var bytes = ByteCount(entry.Shape, entry.DType);
            if (entry.Begin < 0 || entry.End < entry.Begin || entry.End - entry.Begin != bytes)
                throw new InvalidCheckpointException($"{path}: tensor '{name}' has data_offsets [{entry.Begin}, {entry.End}] for shape [{string.Join(",", entry.Shape)}] of {entry.DType}");
            if (dataLength is { } available && entry.End > available)
                throw new InvalidCheckpointException($"{path}: tensor '{name}' ends at byte {entry.End} of the data, but the file holds {available} (truncated or corrupt)");
            entries.Add(entry);
        }
        return (entries, metadata, 8 + n);
    }

    private static Entry? ParseEntry(string name, JsonNode? node)
    {
        if (node is not JsonObject o
            || o["dtype"] is not JsonValue dtypeNode || !dtypeNode.TryGetValue<string>(out var dtypeName) || !TryParseDType(dtypeName, out var dtype)
            || o["shape"] is not JsonArray shapeNode || Longs(shapeNode) is not { } shape || shape.Any(d => d < 0)
            || o["data_offsets"] is not JsonArray offsetsNode || Longs(offsetsNode) is not [var begin, var end])
            return null;
        return new Entry(name, dtype, shape, begin, end);
    }

    private static long[]? Longs(JsonArray array)
    {
        var values = new long[array.Count];
        for (var i = 0; i < values.Length; i++)
            if (array[i] is not JsonValue v || !v.TryGetValue(out values[i]))
                return null;
        return values;
    }
}
