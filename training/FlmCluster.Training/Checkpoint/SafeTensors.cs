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

    public static ScalarType ParseDType(string name) => name switch
    {
        "F32" => ScalarType.Float32,
        "F64" => ScalarType.Float64,
        "BF16" => ScalarType.BFloat16,
        "F16" => ScalarType.Float16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "U8" => ScalarType.Byte,
        _ => throw new InvalidDataException($"safetensors: unsupported dtype '{name}'"),
    };

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
        var t = empty(entry.Shape, dtype: entry.DType);
        if (entry.End - entry.Begin != t.NumberOfElements * t.ElementSize)
        {
            t.Dispose();
            throw new InvalidDataException($"{source}: tensor '{entry.Name}' has {entry.End - entry.Begin} bytes for shape [{string.Join(",", entry.Shape)}]");
        }
        try
        {
            ForEachSlice(t, slice => stream.ReadExactly(slice.bytes));
        }
        catch (EndOfStreamException)
        {
            t.Dispose();
            throw new InvalidDataException($"{source}: truncated in tensor '{entry.Name}'");
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
        var (entries, meta, _) = ParseHeader(ReadHeaderBytes(stream, source), source);
        metadata = meta;
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        long position = 0;
        try
        {
            foreach (var e in entries.OrderBy(e => e.Begin))
            {
                if (e.Begin < position)
                    throw new InvalidDataException($"{source}: tensor '{e.Name}' overlaps another");
                for (; position < e.Begin; position++)
                    if (stream.ReadByte() < 0)
                        throw new InvalidDataException($"{source}: truncated before tensor '{e.Name}'");
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
        return ParseHeader(ReadHeaderBytes(stream, path), path);
    }

    /// <summary>Reads just the header: names, dtypes, shapes (no tensor data).</summary>
    public static (List<Entry> Entries, Dictionary<string, string> Metadata) ReadHeader(string path)
    {
        using var stream = File.OpenRead(path);
        var (entries, meta, _) = ParseHeader(ReadHeaderBytes(stream, path), path);
        return (entries, meta);
    }

    /// <summary>The length prefix and JSON header, leaving the stream at the first data byte.</summary>
    private static byte[] ReadHeaderBytes(Stream stream, string source)
    {
        Span<byte> length = stackalloc byte[8];
        if (stream.ReadAtLeast(length, 8, throwOnEndOfStream: false) < 8)
            throw new InvalidDataException($"{source}: too short for a safetensors file");
        var n = BinaryPrimitives.ReadInt64LittleEndian(length);
        if (n <= 0 || n > 100_000_000 || (stream.CanSeek && n > stream.Length - 8))
            throw new InvalidDataException($"{source}: not a safetensors file (header length {n})");
        var header = new byte[8 + n];
        length.CopyTo(header);
        if (stream.ReadAtLeast(header.AsSpan(8), (int)n, throwOnEndOfStream: false) < n)
            throw new InvalidDataException($"{source}: truncated header");
        return header;
    }

    private static (List<Entry>, Dictionary<string, string>, long) ParseHeader(byte[] file, string path)
    {
        if (file.Length < 8)
            throw new InvalidDataException($"{path}: too short for a safetensors file");
        var n = BinaryPrimitives.ReadInt64LittleEndian(file);
        if (n <= 0 || 8 + n > file.Length)
            throw new InvalidDataException($"{path}: not a safetensors file (header length {n})");
        JsonObject header;
        try
        {
            header = JsonNode.Parse(file.AsSpan(8, (int)n))!.AsObject();
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException)
        {
            throw new InvalidDataException($"{path}: unreadable safetensors header ({ex.Message})");
        }
        var entries = new List<Entry>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node!.AsObject())
                    metadata[k] = v!.GetValue<string>();
                continue;
            }
            var o = node!.AsObject();
            var offsets = o["data_offsets"]!.AsArray();
            entries.Add(new Entry(name, ParseDType(o["dtype"]!.GetValue<string>()),
                o["shape"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray(),
                offsets[0]!.GetValue<long>(), offsets[1]!.GetValue<long>()));
        }
        return (entries, metadata, 8 + n);
    }
}
