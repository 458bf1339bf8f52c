using System.Text.Json;
using FlmCluster.Training.Config;
using FlmCluster.Training.Model;

namespace FlmCluster.Training.Checkpoint;

/// <summary>One piece of a global tensor in a shard file: a flat range of one tensor-parallel slice.</summary>
/// <param name="Key">Name of the piece inside its safetensors file.</param>
/// <param name="TpRank">Which tensor-parallel slice the piece belongs to.</param>
/// <param name="FlatStart">First element of the piece within that slice, flattened.</param>
public sealed record PieceRecord(string File, string Key, int TpRank, long FlatStart, long FlatLength);

/// <summary>A global tensor of the checkpoint: kind (param, exp_avg, exp_avg_sq, master), name, whole shape and how it is split over TP.</summary>
public sealed record TensorRecord(string Kind, string Name, long[] Shape, string DType, TpSplit Split, int TpSize, List<PieceRecord> Pieces);

/// <summary>A shard file with its size and checksum.</summary>
public sealed record ShardRecord(string File, int Rank, long Bytes, string Sha256);

/// <summary>
/// The manifest of a sharded checkpoint, written last by atomic rename: what job and where in it, the layout
/// it was saved under, the data cursor and sample order, schedule and growth state, every shard with its
/// checksum, and every tensor piece by global name and slice. See docs/checkpoints.md.
/// </summary>
public sealed record CheckpointManifest
{
    public const string FormatName = "flmcluster-checkpoint";
    public const int CurrentVersion = 1;

    public string Format { get; init; } = FormatName;
    public int Version { get; init; } = CurrentVersion;
    public string JobId { get; init; } = "";

    /// <summary>The run this checkpoint belongs to: the job that started it, continued by every resume (docs/checkpoints.md).</summary>
    public string RunId { get; init; } = "";

    /// <summary>What makes two runs the same training (<see cref="Jobs.ResolvedJob.Fingerprint"/>).</summary>
    public string ConfigFingerprint { get; init; } = "";

    /// <summary>The run, for checkpoints written before runs were recorded: their job.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string Run => RunId.Length > 0 ? RunId : JobId;
    public string JobJson { get; init; } = "";
    public DateTime CreatedAt { get; init; }
    public int Stage { get; init; }
    public long StageStartStep { get; init; }
    public GrowthShape? Growth { get; init; }
    public double MaskValue { get; init; } = 1.0;

    /// <summary>Next step to run (steps 0 … Step−1 are in the checkpoint).</summary>
    public long Step { get; init; }

    /// <summary>Data cursor: global samples consumed; the next step reads samples from here.</summary>
    public long SamplesConsumed { get; init; }
    public long AdamStep { get; init; }
    public double NextLr { get; init; }
    public string DataFingerprint { get; init; } = "";

    /// <summary>Sample order: a keyed Feistel permutation per epoch of the windows (docs/data-format.md).</summary>
    public string SampleOrder { get; init; } = "feistel-v1";
    public ulong DataSeed { get; init; }

    /// <summary>
    /// The job's train seed: initialisation, weights added by growth, and the dropout masks (keyed by this seed and
    /// each sample's global index, so a resume redraws the masks of an uninterrupted run). Training draws no other
    /// random numbers; the sample order has its own seed.
    /// </summary>
    public ulong TrainSeed { get; init; }
    public LayoutConfig Layout { get; init; } = new();
    public List<ShardRecord> Shards { get; init; } = [];
    public List<TensorRecord> Tensors { get; init; } = [];

    public JobConfig Job() => JobConfigLoader.FromJson(JobJson, "checkpoint manifest");

    public static readonly JsonSerializerOptions Json = CreateJson();

    private static JsonSerializerOptions CreateJson()
    {
        var options = new JsonSerializerOptions
        {
            PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
            WriteIndented = true,
            RespectNullableAnnotations = true,
            RespectRequiredConstructorParameters = true,
            Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        };
        options.MakeReadOnly(populateMissingResolver: true); // JsonShape reads its type metadata
        return options;
    }
}
