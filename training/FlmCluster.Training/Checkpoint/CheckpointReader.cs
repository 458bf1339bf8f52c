using System.Text.Json;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>A directory that is not a usable checkpoint, with the reason.</summary>
public sealed class InvalidCheckpointException(string message) : Exception(message);

/// <summary>
/// Reads a sharded checkpoint: the manifest (a directory without a valid one is not a checkpoint), shard
/// sizes, checksums on demand, and any global tensor by name, assembled from its pieces (reading only the
/// byte ranges it needs), whatever layout saved it.
/// </summary>
public sealed class CheckpointReader
{
    public const string ManifestFile = "manifest.json";

    private readonly Dictionary<string, (Dictionary<string, SafeTensors.Entry> Entries, long DataStart)> _headers = [];
    private readonly Dictionary<(string Kind, string Name), TensorRecord> _tensors;

    public string Directory { get; }
    public CheckpointManifest Manifest { get; }

    private CheckpointReader(string directory, CheckpointManifest manifest)
    {
        Directory = directory;
        Manifest = manifest;
        _tensors = manifest.Tensors.ToDictionary(t => (t.Kind, t.Name));
    }

    /// <summary>Opens a checkpoint and checks its manifest and shard sizes; throws <see cref="InvalidCheckpointException"/> with the reason.</summary>
    public static CheckpointReader Open(string directory)
    {
        var path = Path.Combine(directory, ManifestFile);
        if (!System.IO.Directory.Exists(directory))
            throw new InvalidCheckpointException($"'{directory}' does not exist");
        if (!File.Exists(path))
            throw new InvalidCheckpointException($"'{directory}' has no {ManifestFile}: not a checkpoint (or one whose save never completed)");
        CheckpointManifest? manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<CheckpointManifest>(File.ReadAllText(path), CheckpointManifest.Json);
        }
        catch (JsonException ex)
        {
            throw new InvalidCheckpointException($"'{path}' is not a readable manifest ({ex.Message})");
        }
        if (manifest is null || manifest.Format != CheckpointManifest.FormatName)
            throw new InvalidCheckpointException($"'{path}' is not an FlmCluster checkpoint manifest");
        if (manifest.Version != CheckpointManifest.CurrentVersion)
            throw new InvalidCheckpointException($"'{path}' has format version {manifest.Version}; this build reads {CheckpointManifest.CurrentVersion}");
        foreach (var shard in manifest.Shards)
        {
            var file = Path.Combine(directory, shard.File);
            if (!File.Exists(file))
                throw new InvalidCheckpointException($"shard {shard.File} of '{directory}' is missing");
            var length = new FileInfo(file).Length;
            if (length != shard.Bytes)
                throw new InvalidCheckpointException($"shard {shard.File} of '{directory}' has {length} bytes, the manifest says {shard.Bytes}");
        }
        return new CheckpointReader(directory, manifest);
    }

    /// <summary>Recomputes every shard's SHA-256; returns the problems (empty when the checkpoint is intact).</summary>
    public IReadOnlyList<string> Verify()
    {
        var problems = new List<string>();
        foreach (var shard in Manifest.Shards)
        {
            var actual = SafeTensors.FileSha256(Path.Combine(Directory, shard.File));
            if (actual != shard.Sha256)
                problems.Add($"shard {shard.File}: checksum {actual[..12]}… does not match the manifest's {shard.Sha256[..12]}…");
        }
        return problems;
    }

    public bool Has(string kind, string name) => _tensors.ContainsKey((kind, name));

    public IEnumerable<TensorRecord> Records(string kind) => Manifest.Tensors.Where(t => t.Kind == kind);

    /// <summary>The whole global tensor (CPU), assembled from the tensor-parallel slices and their flat pieces.</summary>
    public Tensor ReadWhole(string kind, string name)
    {
        if (!_tensors.TryGetValue((kind, name), out var record))
            throw new InvalidCheckpointException($"checkpoint '{Directory}' has no {kind} tensor '{name}'");
        var spec = new ParamSpec(record.Name, record.Shape, record.Split, ParamGroup.NoDecay, 0);
        var localShape = spec.LocalShape(record.TpSize);
        var localCount = localShape.Aggregate(1L, (a, b) => a * b);
        var slices = new List<Tensor>();
        for (var tp = 0; tp < record.TpSize; tp++)
        {
            var pieces = record.Pieces.Where(p => p.TpRank == tp).ToList();
            if (pieces.Sum(p => p.FlatLength) != localCount)
                throw new InvalidCheckpointException($"{kind} '{name}' slice {tp} has {pieces.Sum(p => p.FlatLength)} of {localCount} elements in '{Directory}'");
            var flat = empty(localCount, dtype: SafeTensors.ParseDType(record.DType));
            foreach (var piece in pieces)
            {
                using var data = ReadPiece(piece);
                flat.narrow(0, piece.FlatStart, piece.FlatLength).copy_(data.reshape(-1));
            }
            slices.Add(flat.view(localShape));
        }
        var whole = spec.Assemble(slices);
        if (!ReferenceEquals(whole, slices[0]))
            slices.ForEach(s => s.Dispose());
        return whole;
    }

    private Tensor ReadPiece(PieceRecord piece)
    {
        var file = Path.Combine(Directory, piece.File);
        (Dictionary<string, SafeTensors.Entry> Entries, long DataStart) header;
        lock (_headers) // ranks of one process read through one reader
        {
            if (!_headers.TryGetValue(piece.File, out header))
            {
                var (entries, _, dataStart) = SafeTensors.ReadHeaderWithOffset(file);
                header = (entries.ToDictionary(e => e.Name), dataStart);
                _headers[piece.File] = header;
            }
        }
        if (!header.Entries.TryGetValue(piece.Key, out var entry))
            throw new InvalidCheckpointException($"shard {piece.File} has no tensor '{piece.Key}'");
        return SafeTensors.ReadTensor(file, entry, header.DataStart);
    }
}
