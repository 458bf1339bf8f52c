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

    /// <summary>This rank's parameters with their global specs, in a fixed order.</summary>
    public IReadOnlyList<ModelParameter> Parameters => _paramList;

    /// <summary>Multiplier applied to the logits: output_mult / m (μP readout).</summary>
    public double OutputScale => Config.Mup.OutputMult / Config.WidthMult;

    public FlmModel(ModelConfig config, StagePlan? plan = null, TensorParallelContext? tp = null, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base("FlmModel")
    {
        Config = config;
        Plan = plan ?? StagePlan.Whole(config);
        Tp = tp ?? TensorParallelContext.None;
        DType = dtype;
        Device = device ?? CPU;
        _xpos = new XPos(config.HeadDim, config.Xpos);

        var std = config.Mup.InitStd;
        var m = config.WidthMult;
        var hiddenStd = std / Math.Sqrt(m);
        var residualStd = std / Math.Sqrt(2.0 * config.Layers * m);
        long d = config.Hidden, f = config.FfnSize;

        if (Plan.HasEmbedding || Plan.HasHead)
        {
            Embedding = new VocabParallelEmbedding(config.PaddedVocab, d, Tp, dtype, Device);
            register_module("wte", Embedding);
            _paramList.Add(new ModelParameter(
                new ParamSpec("transformer.wte.weight", [config.PaddedVocab, d], TpSplit.Dim0, ParamGroup.Embedding, std),
                Embedding.Weight, IsTiedCopy: !Plan.HasEmbedding));
        }

        var list = new TorchSharp.Modules.ModuleList<Block>();
        for (var local = 0; local < Plan.LayerCount; local++)
        {
            var block = new Block(config, Tp, dtype, Device);
            _blocks.Add(block);
            list.Add(block);
            var p = $"transformer.h.{Plan.FirstLayer + local}.";
            AddNorm(p + "ln_1", block.Ln1, d);
            _paramList.Add(new(new ParamSpec(p + "attn.c_attn.weight", [3 * d, d], TpSplit.PackedQkvDim0, ParamGroup.Matrix, hiddenStd), block.Attention.QkvProjection.Weight));
            _paramList.Add(new(new ParamSpec(p + "attn.c_attn.bias", [3 * d], TpSplit.PackedQkvDim0, ParamGroup.NoDecay, 0), block.Attention.QkvProjection.Bias));
            _paramList.Add(new(new ParamSpec(p + "attn.c_proj.weight", [d, d], TpSplit.Dim1, ParamGroup.Matrix, residualStd), block.Attention.OutputProjection.Weight));
            _paramList.Add(new(new ParamSpec(p + "attn.c_proj.bias", [d], TpSplit.Replicated, ParamGroup.NoDecay, 0), block.Attention.OutputProjection.Bias));
            AddNorm(p + "ln_2", block.Ln2, d);
            _paramList.Add(new(new ParamSpec(p + "mlp.c_fc.weight", [f, d], TpSplit.Dim0, ParamGroup.Matrix, hiddenStd), block.Mlp.Input.Weight));
            _paramList.Add(new(new ParamSpec(p + "mlp.c_fc.bias", [f], TpSplit.Dim0, ParamGroup.NoDecay, 0), block.Mlp.Input.Bias));
            _paramList.Add(new(new ParamSpec(p + "mlp.c_proj.weight", [d, f], TpSplit.Dim1, ParamGroup.Matrix, residualStd), block.Mlp.Output.Weight));
            _paramList.Add(new(new ParamSpec(p + "mlp.c_proj.bias", [d], TpSplit.Replicated, ParamGroup.NoDecay, 0), block.Mlp.Output.Bias));
        }
        register_module("h", list);

        if (Plan.HasHead)
        {
            FinalNorm = new LayerNormLayer(d, config.LnEps, dtype, Device);
            register_module("ln_f", FinalNorm);
            AddNorm("transformer.ln_f", FinalNorm, d);
        }
    }

    private void AddNorm(string prefix, LayerNormLayer norm, long d)
    {
        _paramList.Add(new(new ParamSpec(prefix + ".weight", [d], TpSplit.Replicated, ParamGroup.NoDecay, 0, InitConstant: 1), norm.Weight));
        _paramList.Add(new(new ParamSpec(prefix + ".bias", [d], TpSplit.Replicated, ParamGroup.NoDecay, 0), norm.Bias));
    }

    /// <summary>Token ids [B,T] → hidden states [B,T,d] (first stage only).</summary>
    public Tensor Embed(Tensor ids)
    {
        if (!Plan.HasEmbedding)
            throw new InvalidOperationException($"stage {Plan.Stage} has no embedding");
        var h = Embedding!.Forward(ids);
        if (Config.Mup.InputMult != 1.0)
            h = h * Config.Mup.InputMult;
        return training && Config.Dropout > 0 ? nn.functional.dropout(h, Config.Dropout, true) : h;
    }

    /// <summary>Runs this stage's blocks; with a cache, appends the new positions to it.</summary>
    public Tensor RunBlocks(Tensor hidden, KvCache? cache = null)
    {
        for (var i = 0; i < _blocks.Count; i++)
            hidden = _blocks[i].Forward(hidden, _xpos, cache?[i]);
        return hidden;
    }

    /// <summary>This rank's vocabulary slice of the scaled logits, [B,T,V/tp] (last stage only).</summary>
    public Tensor LocalLogits(Tensor hidden)
    {
        if (!Plan.HasHead)
            throw new InvalidOperationException($"stage {Plan.Stage} has no head");
        var normed = FinalNorm!.Forward(hidden);
        return nn.functional.linear(Tp.CopyToRegion(normed), Embedding!.Weight) * OutputScale;
    }

    /// <summary>Per-token cross-entropy [B,T] of the next-token targets; logits are never gathered whole.</summary>
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
        var normed = Tp.CopyToRegion(FinalNorm!.Forward(hidden));
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
    public Tensor Forward(Tensor ids, KvCache? cache = null) => Logits(RunBlocks(Embed(ids), cache));
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
