using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Model;

namespace FlmCluster.Tests.Fixtures;

/// <summary>
/// Small checkpoint and Hugging Face export files written byte by byte (no torch), valid until a test
/// corrupts one thing in them: for tests of what readers refuse.
/// </summary>
public static class CheckpointFiles
{
    /// <summary>A micro model: one layer of 32, two heads, byte vocabulary, a context of 16.</summary>
    public static ModelConfig Micro { get; } = new()
    {
        Layers = 1, Hidden = 32, Heads = 2, SeqLen = 16, VocabSize = ByteTokenizer.Vocab, VocabPadMultiple = 64,
        Mup = new MupConfig { BaseWidth = 32 },
    };

    public const string ShardFile = "shard-00000.safetensors";
    public const string TensorName = "transformer.ln_f.weight";

    /// <summary>
    /// A checkpoint folder (<paramref name="root"/>/step-00000001) with one shard holding one F32 tensor of 4
    /// elements; <paramref name="corrupt"/> changes the manifest before it is written. Returns the folder.
    /// </summary>
    public static string Checkpoint(string root, Action<JsonObject>? corrupt = null)
    {
        var dir = Path.Combine(root, "step-00000001");
        Directory.CreateDirectory(dir);
        var bytes = SafeTensorsFile(new JsonObject { [$"param/{TensorName}"] = Entry([4], 0, 16) }, dataBytes: 16);
        File.WriteAllBytes(Path.Combine(dir, ShardFile), bytes);
        var job = new JobConfig { Name = "fixture", Tokenizer = TokenizerFactory.Bytes, Model = Micro };
        var manifest = new CheckpointManifest
        {
            JobId = "fixture",
            JobJson = JobConfigLoader.ToJson(job),
            CreatedAt = DateTime.UnixEpoch,
            Step = 1,
            Shards = [new ShardRecord(ShardFile, 0, bytes.Length, Convert.ToHexStringLower(SHA256.HashData(bytes)))],
            Tensors = [new TensorRecord("param", TensorName, [4], "F32", TpSplit.Replicated, 1, [new PieceRecord(ShardFile, $"param/{TensorName}", 0, 0, 4)])],
        };
        var node = JsonSerializer.SerializeToNode(manifest, CheckpointManifest.Json)!.AsObject();
        corrupt?.Invoke(node);
        File.WriteAllText(Path.Combine(dir, CheckpointReader.ManifestFile), node.ToJsonString());
        return dir;
    }

    /// <summary>
    /// A Hugging Face export of <see cref="Micro"/> with zero weights in <paramref name="dir"/>; <paramref name="config"/>,
    /// <paramref name="rawConfig"/> and <paramref name="weights"/> corrupt it.
    /// </summary>
    public static void HfExport(string dir, Action<JsonObject>? config = null, string? rawConfig = null, Func<byte[], byte[]>? weights = null)
    {
        Directory.CreateDirectory(dir);
        var json = HfFormat.Config(Micro, TokenizerFactory.Bytes, "float32");
        config?.Invoke(json);
        File.WriteAllText(Path.Combine(dir, HfFormat.ConfigFile), rawConfig ?? json.ToJsonString());
        var header = new JsonObject();
        long offset = 0;
        foreach (var (name, shape) in HfFormat.Shapes(Micro))
        {
            var size = 4 * shape.Aggregate(1L, (a, b) => a * b);
            header[name] = Entry(shape, offset, offset + size);
            offset += size;
        }
        var file = SafeTensorsFile(header, offset);
        File.WriteAllBytes(Path.Combine(dir, HfFormat.WeightsFile), weights is null ? file : weights(file));
    }

    /// <summary>A header entry of an F32 tensor.</summary>
    public static JsonObject Entry(long[] shape, long begin, long end) => new()
    {
        ["dtype"] = "F32",
        ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()),
        ["data_offsets"] = new JsonArray(begin, end),
    };

    /// <summary>A safetensors file: the header as given (padded to 8 bytes), then <paramref name="dataBytes"/> zero bytes.</summary>
    public static byte[] SafeTensorsFile(JsonObject header, long dataBytes) => SafeTensorsFile(header.ToJsonString(), dataBytes);

    /// <summary>A safetensors file with any header text (malformed ones included).</summary>
    public static byte[] SafeTensorsFile(string header, long dataBytes)
    {
        var json = Encoding.UTF8.GetBytes(header);
        var padded = (json.Length + 7) / 8 * 8;
        var file = new byte[8 + padded + dataBytes];
        BitConverter.TryWriteBytes(file.AsSpan(0, 8), (long)padded);
        json.CopyTo(file, 8);
        file.AsSpan(8 + json.Length, padded - json.Length).Fill((byte)' ');
        return file;
    }
}
