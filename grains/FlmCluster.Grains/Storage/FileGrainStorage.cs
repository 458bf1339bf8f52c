using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Orleans.Runtime;
using Orleans.Storage;

namespace FlmCluster.Grains.Storage;

/// <summary>
/// Durable grain state in files: one file per grain and state name, holding a version (the ETag) and the
/// state written by the silo's grain storage serializer — the one Redis grain storage uses too, so that local
/// clusters and tests persist state exactly as production does. A write goes to a temporary file, is fsynced and renamed over the
/// old one, so a reader (any silo on the machine) sees the old or the new state, never a torn one; a write
/// whose ETag is stale fails with <see cref="InconsistentStateException"/>.
/// </summary>
public sealed class FileGrainStorage(string directory, IGrainStorageSerializer serializer) : IGrainStorage
{
    private const uint Magic = 0x464C4D53; // "FLMS"

    public Task ReadStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        var path = PathOf(stateName, grainId);
        if (!File.Exists(path))
        {
            grainState.RecordExists = false;
            grainState.ETag = null;
            return Task.CompletedTask;
        }
        var (version, payload) = ReadFile(path);
        grainState.State = serializer.Deserialize<T>(BinaryData.FromBytes(payload));
        grainState.ETag = version.ToString(System.Globalization.CultureInfo.InvariantCulture);
        grainState.RecordExists = true;
        return Task.CompletedTask;
    }

    public Task WriteStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        var path = PathOf(stateName, grainId);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var current = File.Exists(path) ? ReadVersion(path) : 0L;
        var expected = grainState.ETag is null ? 0L : long.Parse(grainState.ETag, System.Globalization.CultureInfo.InvariantCulture);
        if (current != expected)
            throw new InconsistentStateException($"state of {grainId} changed on disk (version {current}, expected {expected})", current.ToString(System.Globalization.CultureInfo.InvariantCulture), grainState.ETag ?? "");
        var payload = serializer.Serialize(grainState.State).ToArray();
        var next = current + 1;
        var tmp = $"{path}.{Guid.NewGuid():N}.tmp";
        using (var stream = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
        {
            Span<byte> header = stackalloc byte[16];
            BinaryPrimitives.WriteUInt32LittleEndian(header, Magic);
            BinaryPrimitives.WriteInt32LittleEndian(header[4..], payload.Length);
            BinaryPrimitives.WriteInt64LittleEndian(header[8..], next);
            stream.Write(header);
            stream.Write(payload);
            stream.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
        grainState.ETag = next.ToString(System.Globalization.CultureInfo.InvariantCulture);
        grainState.RecordExists = true;
        return Task.CompletedTask;
    }

    public Task ClearStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        var path = PathOf(stateName, grainId);
        if (File.Exists(path))
            File.Delete(path);
        grainState.ETag = null;
        grainState.RecordExists = false;
        return Task.CompletedTask;
    }

    private string PathOf(string stateName, GrainId grainId)
    {
        // File names from a hash of the id (keys may hold '/'), with a readable prefix.
        var id = grainId.ToString();
        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(id)))[..16];
        var readable = new string(id.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' ? c : '_').Take(60).ToArray());
        return Path.Combine(directory, stateName, $"{readable}-{hash}.state");
    }

    /// <summary>The version in a state file's header (a write checks it without reading the state).</summary>
    private static long ReadVersion(string path)
    {
        Span<byte> header = stackalloc byte[16];
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1))
            if (stream.ReadAtLeast(header, header.Length, throwOnEndOfStream: false) < header.Length || BinaryPrimitives.ReadUInt32LittleEndian(header) != Magic)
                throw new InvalidDataException($"'{path}' is not an FlmCluster grain state file");
        return BinaryPrimitives.ReadInt64LittleEndian(header[8..]);
    }

    private static (long Version, byte[] Payload) ReadFile(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 16 || BinaryPrimitives.ReadUInt32LittleEndian(bytes) != Magic)
            throw new InvalidDataException($"'{path}' is not an FlmCluster grain state file");
        var length = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4));
        if (length != bytes.Length - 16)
            throw new InvalidDataException($"'{path}' is truncated ({bytes.Length - 16} of {length} bytes)");
        return (BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(8)), bytes[16..]);
    }
}
