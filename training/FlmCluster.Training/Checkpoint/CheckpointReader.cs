using System.Text.Json;
using System.Text.Json.Nodes;
using FlmCluster.Training.Config;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>A checkpoint, or a file of one (a safetensors shard, a Hugging Face export), that cannot be used, with the reason.</summary>
public sealed class InvalidCheckpointException(string message) : Exception(message);

/// <summary>
/// Reads a sharded checkpoint: the manifest (a directory without a valid one is not a checkpoint), shard
/// sizes, checksums on demand, any global tensor by name, assembled from its pieces whatever layout saved it,
/// and where each piece's bytes are (for <see cref="SliceReader"/>, which reads only the ranges a slice needs).
/// </summary>
public sealed class CheckpointReader
{
    public const string ManifestFile = "manifest.json";

    private readonly Dictionary<string, (Dictionary<string, SafeTensors.Entry> Entries, long DataStart)> _headers = [];
    private readonly Dictionary<(string Kind, string Name), TensorRecord> _tensors;

    /// <summary>Where the shards' bytes are when they are not files in <see cref="Directory"/> (in-memory replicas).</summary>
    private readonly IShardBytes? _memory;

    /// <summary>The checkpoint's folder, or for an in-memory one, what it is in words.</summary>
    public string Directory { get; }
    public CheckpointManifest Manifest { get; }

    private CheckpointReader(string directory, CheckpointManifest manifest, IShardBytes? memory = null)
    {
        Directory = directory;
        Manifest = manifest;
        _memory = memory;
        _tensors = manifest.Tensors.ToDictionary(t => (t.Kind, t.Name));
    }

    /// <summary>
    /// A checkpoint whose shards are not files but bytes elsewhere (the in-memory replicas of a step, kept by
    /// the ranks and their peers), with the same checks on its manifest as one read from disk.
    /// </summary>
    public static CheckpointReader InMemory(string name, CheckpointManifest manifest, IShardBytes shards)
    {
        if (manifest.Format != CheckpointManifest.FormatName || manifest.Version != CheckpointManifest.CurrentVersion)
            throw new InvalidCheckpointException($"{name}: not an FlmCluster checkpoint manifest of version {CheckpointManifest.CurrentVersion}");
        if (FindProblem(manifest) is { } problem)
            throw new InvalidCheckpointException($"{name} is corrupt: {problem}");
        return new CheckpointReader(name, manifest, shards);
    }

    /// <summary>
    /// The shards' bytes to read slices from: the folder's files (a new <see cref="ShardFiles"/>, which the caller
    /// disposes), or the source an in-memory checkpoint was made with (the caller's to keep).
    /// </summary>
    public IShardBytes OpenShards() => _memory ?? new ShardFiles(Directory);

    /// <summary>Opens a checkpoint and checks its manifest and shard sizes; throws <see cref="InvalidCheckpointException"/> with the reason.</summary>
    public static CheckpointReader Open(string directory)
    {
        var path = Path.Combine(directory, ManifestFile);
        if (!System.IO.Directory.Exists(directory))
            throw new InvalidCheckpointException($"'{directory}' does not exist");
        if (!File.Exists(path))
            throw new InvalidCheckpointException($"'{directory}' has no {ManifestFile}: not a checkpoint (or one whose save never completed)");
        var manifest = ReadManifest(path);
        if (manifest.Format != CheckpointManifest.FormatName)
            throw new InvalidCheckpointException($"'{path}' is not an FlmCluster checkpoint manifest");
        if (manifest.Version != CheckpointManifest.CurrentVersion)
            throw new InvalidCheckpointException($"'{path}' has format version {manifest.Version}; this build reads {CheckpointManifest.CurrentVersion}");
        if (FindProblem(manifest) is { } problem)
            throw new InvalidCheckpointException($"'{path}' is corrupt: {problem}");
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

    private static CheckpointManifest ReadManifest(string path)
    {
        try
        {
            var node = JsonNode.Parse(File.ReadAllText(path), documentOptions: JsonShape.ParseOptions);
            if (node is not JsonObject)
                throw new InvalidCheckpointException($"'{path}' is not an FlmCluster checkpoint manifest");
            if (JsonShape.FindProblem(node, typeof(CheckpointManifest), CheckpointManifest.Json, allowUnknownKeys: true) is { } problem)
                throw new InvalidCheckpointException($"'{path}' is corrupt: {problem.Describe()}");
            return node.Deserialize<CheckpointManifest>(CheckpointManifest.Json)!;
        }
        catch (JsonException ex)
        {
            throw new InvalidCheckpointException($"'{path}' is not a readable manifest ({ex.Message})");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new InvalidCheckpointException($"'{path}' cannot be read ({ex.Message})");
        }
    }

    /// <summary>
    /// What makes a manifest unusable, or null: shard names that leave the folder, malformed checksums, negative
    /// sizes, unknown dtypes or splits, and tensor pieces that do not tile their slices inside the shards' bytes
    /// (so that reading a tensor never allocates what the shards cannot hold).
    /// </summary>
    private static string? FindProblem(CheckpointManifest m)
    {
        if (m.Step < 0 || m.SamplesConsumed < 0 || m.AdamStep < 0 || m.StageStartStep < 0 || m.Stage < 0)
            return "step, samples_consumed, adam_step, stage_start_step and stage must not be negative";
        if (!double.IsFinite(m.NextLr) || !double.IsFinite(m.MaskValue) || m.MaskValue is < 0 or > 1)
            return $"next_lr ({m.NextLr}) must be finite and mask_value ({m.MaskValue}) in [0, 1]";
        if (m.Layout.Dp < 1 || m.Layout.Tp < 1 || m.Layout.Pp < 1 || m.Layout.MicroBatches < 1)
            return $"layout dp={m.Layout.Dp},tp={m.Layout.Tp},pp={m.Layout.Pp},micro={m.Layout.MicroBatches} has an axis below 1";
        var shards = new Dictionary<string, ShardRecord>(StringComparer.Ordinal);
        foreach (var shard in m.Shards)
        {
            if (!IsPlainFileName(shard.File))
                return $"shard file name '{shard.File}' is not a plain file name in the checkpoint folder";
            if (shard.Bytes < 0 || shard.Rank < 0)
                return $"shard {shard.File} has a negative size or rank";
            if (!IsSha256(shard.Sha256))
                return $"shard {shard.File} has checksum '{shard.Sha256}', not 64 lowercase hex digits";
            if (!shards.TryAdd(shard.File, shard))
                return $"shard {shard.File} is listed twice";
        }
        var names = new HashSet<(string, string)>();
        var used = shards.Keys.ToDictionary(f => f, _ => Int128.Zero, StringComparer.Ordinal);
        foreach (var t in m.Tensors)
        {
            var what = $"{t.Kind} tensor '{t.Name}'";
            if (!names.Add((t.Kind, t.Name)))
                return $"{what} is listed twice";
            if (!SafeTensors.TryParseDType(t.DType, out var dtype))
                return $"{what} has unknown dtype '{t.DType}'";
            if (!Enum.IsDefined(t.Split) || t.TpSize < 1)
                return $"{what} has split {t.Split} over tp_size {t.TpSize}";
            var axis = t.Split switch { TpSplit.Dim1 => 1, TpSplit.Replicated => -1, _ => 0 };
            var divisor = t.Split == TpSplit.PackedQkvDim0 ? 3L * t.TpSize : t.TpSize;
            if (t.Shape.Any(d => d < 0) || t.Shape.Length <= axis || (axis >= 0 && t.Shape[axis] % divisor != 0))
                return $"{what} has shape [{string.Join(",", t.Shape)}], which cannot be split {t.Split} over {t.TpSize}";
            var local = SafeTensors.ByteCount(new ParamSpec(t.Name, t.Shape, t.Split, ParamGroup.NoDecay, 0).LocalShape(t.TpSize), dtype) / SafeTensors.ElementSize(dtype);
            for (var tp = 0; tp < t.TpSize; tp++)
            {
                // The pieces of each slice tile it exactly: [0, local) without gaps or overlaps.
                long next = 0;
                foreach (var piece in t.Pieces.Where(p => p.TpRank == tp).OrderBy(p => p.FlatStart))
                {
                    if (!shards.TryGetValue(piece.File, out var shard))
                        return $"{what} has a piece in '{piece.File}', which is not a shard of this checkpoint";
                    if (piece.FlatStart != next || piece.FlatLength < 0)
                        return $"{what} slice {tp} has a piece at {piece.FlatStart} of {piece.FlatLength} elements where the slice continues at {next}";
                    used[piece.File] += (Int128)piece.FlatLength * SafeTensors.ElementSize(dtype);
                    if (used[piece.File] > shard.Bytes)
                        return $"the pieces in shard {piece.File} claim more than its {shard.Bytes} bytes";
                    next += piece.FlatLength;
                }
                if (next != local)
                    return $"{what} slice {tp} has {next} of {local} elements";
            }
            if (t.Pieces.Any(p => p.TpRank < 0 || p.TpRank >= t.TpSize))
                return $"{what} has a piece of a tensor-parallel rank outside 0 … {t.TpSize - 1}";
        }
        return null;
    }

    private static bool IsPlainFileName(string name) =>
        name.Length > 0 && name is not ("." or "..") && name.IndexOfAny(['/', '\\', '\0']) < 0;

    private static bool IsSha256(string hex) => hex.Length == 64 && hex.All(char.IsAsciiHexDigitLower);

    /// <summary>
    /// Checks that the checkpoint holds every parameter of <paramref name="model"/> with its shape, before a
    /// model is allocated or anything is written from it.
    /// </summary>
    public void RequireParameters(ModelConfig model)
    {
        foreach (var spec in ParamCatalog.Whole(model))
        {
            if (!_tensors.TryGetValue(("param", spec.Name), out var record))
                throw new InvalidCheckpointException($"checkpoint '{Directory}' has no parameter '{spec.Name}'");
            if (!record.Shape.SequenceEqual(spec.Shape))
                throw new InvalidCheckpointException($"checkpoint '{Directory}': parameter '{spec.Name}' is [{string.Join(",", record.Shape)}], its job's model needs [{string.Join(",", spec.Shape)}]");
        }
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

    /// <summary>The manifest's record of a global tensor.</summary>
    public TensorRecord Record(string kind, string name) =>
        _tensors.TryGetValue((kind, name), out var record) ? record : throw new InvalidCheckpointException($"checkpoint '{Directory}' has no {kind} tensor '{name}'");

    /// <summary>Where a piece's bytes start in its shard (the piece checked against the shard's header).</summary>
    public long ByteOffset(PieceRecord piece, ScalarType dtype)
    {
        var (entry, dataStart) = Entry(piece);
        if (entry.DType != dtype)
            throw new InvalidCheckpointException($"shard {piece.File}: tensor '{piece.Key}' is {entry.DType}, the manifest says {dtype}");
        return dataStart + entry.Begin;
    }

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
        var (entry, dataStart) = Entry(piece);
        if (_memory is null)
            return SafeTensors.ReadTensor(Path.Combine(Directory, piece.File), entry, dataStart);
        var tensor = empty(entry.Shape, dtype: entry.DType);
        _memory.Read(piece.File, dataStart + entry.Begin, tensor.bytes);
        return tensor;
    }

    /// <summary>A piece's entry in its shard's header (headers read once), checked against the manifest.</summary>
    private (SafeTensors.Entry Entry, long DataStart) Entry(PieceRecord piece)
    {
        (Dictionary<string, SafeTensors.Entry> Entries, long DataStart) header;
        lock (_headers) // ranks of one process read through one reader
        {
            if (!_headers.TryGetValue(piece.File, out header))
            {
                var (entries, _, dataStart) = _memory is null
                    ? SafeTensors.ReadHeaderWithOffset(Path.Combine(Directory, piece.File))
                    : SafeTensors.ReadHeaderWithOffset(_memory, piece.File, Manifest.Shards.First(s => s.File == piece.File).Bytes, $"shard {piece.File} of {Directory}");
                header = (entries.ToDictionary(e => e.Name), dataStart);
                _headers[piece.File] = header;
            }
        }
        if (!header.Entries.TryGetValue(piece.Key, out var entry))
            throw new InvalidCheckpointException($"shard {piece.File} has no tensor '{piece.Key}'");
        if (entry.Shape.Aggregate(1L, (a, b) => a * b) != piece.FlatLength)
            throw new InvalidCheckpointException($"shard {piece.File}: tensor '{piece.Key}' has shape [{string.Join(",", entry.Shape)}], the manifest says {piece.FlatLength} elements");
        return (entry, header.DataStart);
    }
}
