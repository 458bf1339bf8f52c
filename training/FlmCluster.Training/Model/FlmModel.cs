using FlmCluster.Training.Config;
using FlmCluster.Training.Parallel;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>Which layers a pipeline stage owns; stage 0 has the embedding, the last stage the head and loss.</summary>
public sealed record StagePlan(int Stage, int Stages, int FirstLayer, int LayerCount)
{
    public bool HasEmbedding => Stage == 0;
    public bool HasHead => Stage == Stages - 1;

    public static StagePlan Whole(ModelConfig config) => new(0, 1, 0, config.Layers);

    public static StagePlan For(ModelConfig config, int stage, int stages)
    {
        var per = config.Layers / stages;
        return new StagePlan(stage, stages, stage * per, per);
    }
}

/// <summary>
/// The FLM decoder (or one pipeline stage of it, one tensor-parallel shard wide): tied vocab-parallel
/// embedding, pre-LN blocks with xPos attention, final LayerNorm, μP readout
/// logits = LN_f(h)·Wᵀ · output_mult/m. The model code knows parallelism only through its layer types.
/// A grown model also carries <see cref="GrowthShape"/> and applies the growth masks of the current step.
/// </summary>
public sealed class FlmModel : nn.Module
{
    private readonly List<Block> _blocks = [];
    private readonly List<ModelParameter> _paramList = [];
    private readonly XPos _xpos;

    public ModelConfig Config { get; }
    public StagePlan Plan { get; }
    public TensorParallelContext Tp { get; }
    public ScalarType DType { get; }
    public Device Device { get; }
    public VocabParallelEmbedding? Embedding { get; }
    public IReadOnlyList<Block> Blocks => _blocks;
    public LayerNormLayer? FinalNorm { get; }

    /// <summary>New structure of a grown model, or null.</summary>
    public GrowthShape? Growth { get; }

    /// <summary>Masks of the current step (null when the model has no growth ramp in progress).</summary>
    public GrowthMasks? Masks { get; private set; }

    /// <summary>This rank's parameters with their global specs, in a fixed order.</summary>
    public IReadOnlyList<ModelParameter> Parameters => _paramList;

    /// <summary>Multiplier applied to the logits: output_mult / m (μP readout), ramped during hidden growth.</summary>
    public double OutputScale => Config.Mup.OutputMult / (Masks is { Shape.HiddenGrew: true } masks ? masks.ReadoutWidthMult(Config.WidthMult) : Config.WidthMult);

    public FlmModel(ModelConfig config, StagePlan? plan = null, TensorParallelContext? tp = null, ScalarType dtype = ScalarType.Float32,
        Device? device = null, GrowthShape? growth = null)
        : base("FlmModel")
    {
        Config = config;
        Plan = plan ?? StagePlan.Whole(config);
        Tp = tp ?? TensorParallelContext.None;
        DType = dtype;
        Device = device ?? CPU;
        Growth = growth;
        _xpos = new XPos(config.HeadDim, config.Xpos);

        var tensors = new Dictionary<string, TorchSharp.Modules.Parameter>();
        if (Plan.HasEmbedding || Plan.HasHead)
        {
            Embedding = new VocabParallelEmbedding(config.PaddedVocab, config.Hidden, Tp, dtype, Device);
            register_module("wte", Embedding);
            tensors[ParamCatalog.Embedding] = Embedding.Weight;
        }
        var list = new TorchSharp.Modules.ModuleList<Block>();
        for (var local = 0; local < Plan.LayerCount; local++)
        {
            var block = new Block(config, Tp, dtype, Device, Plan.FirstLayer + local);
            _blocks.Add(block);
            list.Add(block);
            var p = ParamCatalog.Block(Plan.FirstLayer + local);
            tensors[p + "ln_1.weight"] = block.Ln1.Weight;
            tensors[p + "ln_1.bias"] = block.Ln1.Bias;
            tensors[p + "attn.c_attn.weight"] = block.Attention.QkvProjection.Weight;
            tensors[p + "attn.c_attn.bias"] = block.Attention.QkvProjection.Bias;
            tensors[p + "attn.c_proj.weight"] = block.Attention.OutputProjection.Weight;
            tensors[p + "attn.c_proj.bias"] = block.Attention.OutputProjection.Bias;
            tensors[p + "ln_2.weight"] = block.Ln2.Weight;
            tensors[p + "ln_2.bias"] = block.Ln2.Bias;
            tensors[p + "mlp.c_fc.weight"] = block.Mlp.Input.Weight;
            tensors[p + "mlp.c_fc.bias"] = block.Mlp.Input.Bias;
            tensors[p + "mlp.c_proj.weight"] = block.Mlp.Output.Weight;
            tensors[p + "mlp.c_proj.bias"] = block.Mlp.Output.Bias;
        }
        register_module("h", list);
        if (Plan.HasHead)
        {
            FinalNorm = new LayerNormLayer(config.Hidden, config.LnEps, dtype, Device);
            register_module("ln_f", FinalNorm);
            tensors[ParamCatalog.FinalNormWeight] = FinalNorm.Weight;
            tensors[ParamCatalog.FinalNormBias] = FinalNorm.Bias;
        }
        foreach (var (spec, tiedCopy) in ParamCatalog.For(config, Plan))
            _paramList.Add(new ModelParameter(spec, tensors[spec.Name], tiedCopy));
    }

    /// <summary>
    /// Sets the growth mask value c for the coming forward passes; at c ≥ 1 (or without growth) the masks are off
    /// and the model is the plain grown model.
    /// </summary>
    public void SetMaskValue(double value)
    {
        Masks = Growth is null || value >= 1.0 ? null : new GrowthMasks(Growth, value, Config, Tp.Rank, Tp.Size, DType, Device);
    }

    /// <summary>Token ids [B,T] → hidden states [B,T,d] (first stage only).</summary>
    /// <param name="dropout">Dropout masks of the batch's samples (needed in training when dropout &gt; 0).</param>
    public Tensor Embed(Tensor ids, DropoutMasks? dropout = null)
    {
        if (!Plan.HasEmbedding)
            throw new InvalidOperationException($"stage {Plan.Stage} has no embedding");
        var h = Embedding!.Forward(ids);
        if (Config.Mup.InputMult != 1.0)
            h = h * Config.Mup.InputMult;
        if (Masks?.Hidden is { } mask)
            h = h * mask;
        // The embedding output is replicated over TP ranks, and so is its mask.
        return DropoutMasks.For(dropout, training, Config.Dropout) is { } masks ? masks.Apply(h, Config.Dropout, 0, DropoutSite.Embedding) : h;
    }

    /// <summary>Runs this stage's blocks; with a cache, appends the new positions to it.</summary>
    /// <param name="dropout">Dropout masks of the batch's samples (needed in training when dropout &gt; 0).</param>
    public Tensor RunBlocks(Tensor hidden, KvCache? cache = null, DropoutMasks? dropout = null)
    {
        for (var i = 0; i < _blocks.Count; i++)
            hidden = _blocks[i].Forward(hidden, _xpos, cache?[i], Masks, Masks?.LayerBlend(_blocks[i].Layer) ?? 1.0, dropout);
        return hidden;
    }

    /// <summary>This rank's vocabulary slice of the scaled logits, [B,T,V/tp] (last stage only).</summary>
    public Tensor LocalLogits(Tensor hidden)
    {
        if (!Plan.HasHead)
            throw new InvalidOperationException($"stage {Plan.Stage} has no head");
        var normed = FinalNorm!.Forward(hidden, Masks?.Hidden);
        return nn.functional.linear(Tp.CopyToRegion(normed), Embedding!.Weight) * OutputScale;
    }

    /// <summary>Per-token cross-entropy [B,T] of the next-token targets from full local logits (reference path).</summary>
    public Tensor TokenLosses(Tensor hidden, Tensor targets) =>
        VocabParallelLoss.TokenLosses(LocalLogits(hidden), targets, Tp, Embedding!.VocabStart);

    /// <summary>
    /// Σ per-token cross-entropy of the next-token targets (training path). When the logits of the whole
    /// micro-batch would exceed one chunk (large vocabularies) the loss is fused with the head and computed
    /// chunk by chunk so that no [tokens × vocab] tensor exists; otherwise the plain kernels are faster.
    /// </summary>
    public Tensor LossSum(Tensor hidden, Tensor targets)
    {
        if (!Plan.HasHead)
            throw new InvalidOperationException($"stage {Plan.Stage} has no head");
        var tokens = targets.NumberOfElements;
        if (Tp.Size == 1 && tokens * Embedding!.LocalRows <= FusedLinearCrossEntropy.ChunkElements)
        {
            var logits = LocalLogits(hidden);
            return nn.functional.cross_entropy(logits.reshape(tokens, -1), targets.reshape(-1), reduction: nn.Reduction.Sum);
        }
        var normed = Tp.CopyToRegion(FinalNorm!.Forward(hidden, Masks?.Hidden));
        var d = normed.shape[^1];
        return FusedLinearCrossEntropy.LossSum(normed.reshape(-1, d), Embedding!.Weight, targets.reshape(-1), OutputScale, Tp, Embedding.VocabStart);
    }

    /// <summary>Full scaled logits for inference on a single tensor-parallel rank.</summary>
    public Tensor Logits(Tensor hidden)
    {
        if (Tp.Size != 1)
            throw new InvalidOperationException("full logits need tp = 1; use TokenLosses for vocab-parallel training");
        return LocalLogits(hidden);
    }

    /// <summary>Whole forward for a model with every layer (pp = 1): ids → full logits.</summary>
    public Tensor Forward(Tensor ids, KvCache? cache = null, DropoutMasks? dropout = null) => Logits(RunBlocks(Embed(ids, dropout), cache, dropout));
}

/// <summary>Cross-entropy over a vocabulary split across tensor-parallel ranks (Megatron's vocab-parallel loss).</summary>
public static class VocabParallelLoss
{
    /// <summary>
    /// loss = log Σ_v exp(z_v − M) − (z_target − M) with M the global max logit: the max is all-reduced without
    /// gradient, the sum of exponentials and the target logit are all-reduced with identity backward.
    /// Computed in at least fp32.
    /// </summary>
    public static Tensor TokenLosses(Tensor localLogits, Tensor targets, TensorParallelContext tp, long vocabStart)
    {
        var logits = localLogits.dtype is ScalarType.Float64 or ScalarType.Float32 ? localLogits : localLogits.to(ScalarType.Float32);
        var max = logits.detach().amax([-1], keepdim: true).contiguous();
        tp.AllReduceNoGrad(max, ReduceOp.Max);
        var shifted = logits - max;
        var sumExp = tp.ReduceFromRegion(shifted.exp().sum(-1));
        var localVocab = logits.shape[^1];
        Tensor targetLogit;
        if (tp.Size == 1)
            targetLogit = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1);
        else
        {
            var outside = targets.lt(vocabStart).logical_or(targets.ge(vocabStart + localVocab));
            var local = (targets - vocabStart).masked_fill(outside, 0);
            var picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0);
            targetLogit = tp.ReduceFromRegion(picked);
        }
        return sumExp.log() - targetLogit;
    }
}
