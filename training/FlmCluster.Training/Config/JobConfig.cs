namespace FlmCluster.Training.Config;

/// <summary>
/// Everything that defines a training job. Serialised as JSON with snake_case keys; every field can be
/// overridden on the command line with <c>--set section.key=value</c>. Later sections (growth stages,
/// checkpoint policy) extend this record.
/// </summary>
public sealed record JobConfig
{
    /// <summary>Preset this config starts from (files only): its values are defaults for the file's.</summary>
    public string? Base { get; init; }

    public string Name { get; init; } = "job";

    /// <summary><c>cl100k</c> (FLM's vocabulary, end-of-text 100256) or <c>bytes</c> (UTF-8 bytes, for fast tests).</summary>
    public string Tokenizer { get; init; } = "cl100k";

    public ModelConfig Model { get; init; } = new();
    public DataConfig Data { get; init; } = new();
    public TrainConfig Train { get; init; } = new();
    public OptimizerConfig Optimizer { get; init; } = new();
    public LayoutConfig Layout { get; init; } = new();

    /// <summary>Growth schedule: when present the job trains these stages in order, growing the model between them.</summary>
    public IReadOnlyList<StageConfig> Stages { get; init; } = [];

    public CheckpointConfig Checkpoint { get; init; } = new();

    public RecoveryConfig Recovery { get; init; } = new();
}

/// <summary>How a cluster job recovers when it loses workers (docs/operations.md).</summary>
public sealed record RecoveryConfig
{
    /// <summary>
    /// Seconds to wait for lost servers to return before continuing on fewer GPUs, when nothing can replace them;
    /// null: the server's setting (Flm:WorkerWaitSeconds).
    /// </summary>
    public double? WaitSeconds { get; init; }

    /// <summary>Restores in a row without a committed step before the job fails.</summary>
    public int RestoreLimit { get; init; } = 3;

    /// <summary>Give lost ranks free GPUs of the same shape at once (false: only the same servers, after they return).</summary>
    public bool Replace { get; init; } = true;

    /// <summary>Continue with fewer data-parallel replicas once the wait is over and nothing can replace the lost ranks.</summary>
    public bool Shrink { get; init; } = true;

    /// <summary>A step's loss above this multiple of the mean of the last <see cref="SpikeWindow"/> losses is a spike; 0 = off.</summary>
    public double SpikeRatio { get; init; }

    /// <summary>A step's loss more than this many standard deviations above the window's mean is a spike; 0 = off.</summary>
    public double SpikeZ { get; init; }

    /// <summary>Committed steps the spike statistics are taken over (at least half of them must exist).</summary>
    public int SpikeWindow { get; init; } = 50;

    /// <summary>
    /// Batches skipped at a spike: its own and the ones before it (the update that did the damage came from an
    /// earlier batch); the job rolls back to a recovery point before the first of them. A non-finite loss or
    /// gradient skips its own batch only.
    /// </summary>
    public int SpikeSkip { get; init; } = 2;

    /// <summary>Rollbacks at the same step before the job fails with the evidence.</summary>
    public int SpikeLimit { get; init; } = 3;

    /// <summary>How long steps wait for the cluster's storage (Redis) to come back before the job fails, resumable from its last checkpoint.</summary>
    public double StorageWaitSeconds { get; init; } = 60;

    /// <summary>A step taking this many times the recent median step time (and at least hang_min_seconds) is stopped as hung.</summary>
    public double HangFactor { get; init; } = 10;

    /// <summary>The least time a step is given before it counts as hung.</summary>
    public double HangMinSeconds { get; init; } = 60;

    /// <summary>A rank whose compute time is this many times the median rank's, over straggler_window steps, is a straggler; 0 = off.</summary>
    public double StragglerFactor { get; init; } = 1.5;

    /// <summary>
    /// How much slower, in ms per step, a straggler must also be than the others: on short steps scheduling
    /// jitter alone makes ratios of 2 and more, which is not a slow GPU.
    /// </summary>
    public double StragglerMinMs { get; init; } = 50;

    /// <summary>Steps the straggler statistics use.</summary>
    public int StragglerWindow { get; init; } = 20;

    /// <summary>Take a straggler's GPU out of service and give its rank another, like a lost one (false: report it only).</summary>
    public bool ReplaceStragglers { get; init; }
}

/// <summary>Checkpoint policy (docs/checkpoints.md).</summary>
public sealed record CheckpointConfig
{
    /// <summary>Folder of the job's checkpoints ("step-NNNNNNNN" inside); empty = no checkpoints.</summary>
    public string Dir { get; init; } = "";

    /// <summary>Steps between persistent checkpoints; 0 = only when the job ends (or on demand).</summary>
    public long Interval { get; init; }

    /// <summary>Keep the newest K checkpoints …</summary>
    public int KeepLast { get; init; } = 3;

    /// <summary>… and those whose step is a multiple of N × interval, i.e. every Nth (0 = none).</summary>
    public int KeepEvery { get; init; }

    /// <summary>Write in the background after a snapshot to host memory (training continues); false = wait.</summary>
    public bool Async { get; init; } = true;

    /// <summary>
    /// Steps between in-memory snapshots of every rank, each kept by the rank and by a peer on another server
    /// (cluster jobs on two or more servers); 0 = off. A lost server's ranks come back from their peers'
    /// copies, losing at most this many steps; a different layout needs a persistent checkpoint.
    /// </summary>
    public long MemoryInterval { get; init; }

    /// <summary>
    /// MiB of temporary host memory a rank may use to load its slices from a checkpoint saved under another layout,
    /// or to grow them into the next stage, whatever the size of the model's tensors.
    /// </summary>
    public int ReshardBudgetMiB { get; init; } = 256;
}

public sealed record DataConfig
{
    /// <summary>
    /// Text (.txt), JSON-lines (.jsonl, field "text") or prepared token files (.bin + .idx), or folders of
    /// them. <c>bundled</c> is the bilingual corpus shipped in data/bilingual.
    /// </summary>
    public IReadOnlyList<string> Paths { get; init; } = ["bundled"];

    /// <summary>Seed of the sample order; with it, global sample i is the same sequence on every worker.</summary>
    public ulong Seed { get; init; } = 1234;
}

public sealed record TrainConfig
{
    public long Steps { get; init; } = 100;

    /// <summary>Sequences per optimizer step, summed over data-parallel ranks and micro-batches.</summary>
    public int GlobalBatch { get; init; } = 8;

    /// <summary>
    /// Seed of parameter initialisation (and of the weights growth adds) and of the dropout masks, which are a
    /// function of (seed, global sample index, layer, site, position) and so the same under every layout and rerun.
    /// </summary>
    public ulong Seed { get; init; } = 42;

    /// <summary><c>auto</c> (bf16 mixed precision on CUDA, fp32 on CPU), <c>fp32</c>, <c>bf16</c>, <c>fp64</c>.</summary>
    public string Precision { get; init; } = "auto";

    /// <summary><c>cpu</c> or <c>cuda</c> / <c>cuda:N</c> (CUDA builds only).</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>Torch intra-op threads; 0 = one per core.</summary>
    public int Threads { get; init; }

    public int LogEvery { get; init; } = 10;
}

public sealed record OptimizerConfig
{
    /// <summary>Peak learning rate η (μP: matrix-like weights use η / m).</summary>
    public double Lr { get; init; } = 1e-3;
    public double MinLr { get; init; } = 1e-4;
    public long WarmupSteps { get; init; } = 10;

    /// <summary><c>cosine</c>, <c>linear</c> or <c>constant</c> decay after warmup.</summary>
    public string Decay { get; init; } = "cosine";

    /// <summary>Steps over which the LR decays to min_lr, counted from the start; 0 = the job's steps.</summary>
    public long DecaySteps { get; init; }

    public double WeightDecay { get; init; } = 0.1;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double Eps { get; init; } = 1e-8;

    /// <summary>Global gradient-norm clip; 0 disables.</summary>
    public double ClipGrad { get; init; } = 1.0;
}

/// <summary>Parallel layout of the job: data × tensor × pipeline ranks and micro-batches per step.</summary>
public sealed record LayoutConfig
{
    public int Dp { get; init; } = 1;
    public int Tp { get; init; } = 1;
    public int Pp { get; init; } = 1;

    /// <summary>Micro-batches per step on each data-parallel rank (gradient accumulation, pipeline fill).</summary>
    public int MicroBatches { get; init; } = 1;
}
