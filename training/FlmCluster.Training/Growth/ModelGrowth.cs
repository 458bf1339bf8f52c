using FlmCluster.Training.Config;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Growth;

/// <summary>How a growth event places and fills new layers.</summary>
/// <param name="DepthPlacement"><c>stack</c>: new layers on top, copying layers bottom-up (MSG's default order); <c>interpolate</c>: a copy right after existing layers, from the top down.</param>
/// <param name="NewBlockInit"><c>copy</c>: a new layer starts as a copy of its source layer; <c>random</c>: fresh initialisation.</param>
public sealed record GrowthOptions(string DepthPlacement = "stack", string NewBlockInit = "copy")
{
    public static readonly string[] Placements = ["stack", "interpolate"];
    public static readonly string[] Inits = ["copy", "random"];
}

/// <summary>The result of a growth event: the bigger config and state, which structure is new, where layers came from.</summary>
public sealed record GrownState(
    ModelConfig Config,
    Dictionary<string, Tensor> Parameters,
    Dictionary<string, Tensor>? Optimizer,
    GrowthShape Shape,
    IReadOnlyList<int> LayerSources);

/// <summary>
/// Masked Structural Growth (MSG, docs/model.md) as pure functions of (config, state) → (bigger config,
/// bigger state) on whole tensors by global name: hidden size, FFN size, heads (head size fixed) and layers,
/// in any combination. Old tensors land in the top-left block of the new ones (per Q, K, V block for the
/// packed projection); everything else is freshly initialised (μP rules at the new width) and masked to
/// zero by the model until the mask ramps up. Adam moments are copied into the old block and zero elsewhere;
/// the step count is kept by the caller.
/// </summary>
public static class ModelGrowth
{
    /// <summary>Checks that <paramref name="to"/> is reachable from <paramref name="from"/> by growth.</summary>
    public static void Validate(ModelConfig from, ModelConfig to, string where)
    {
        void Grows(string key, long before, long after)
        {
            if (after < before)
                throw new FlmUserException($"{where}: model.{key} shrinks from {before} to {after}; growth can only add structure");
        }
        Grows("layers", from.Layers, to.Layers);
        Grows("hidden", from.Hidden, to.Hidden);
        Grows("heads", from.Heads, to.Heads);
        Grows("ffn", from.FfnSize, to.FfnSize);
        if (to.HeadDim != from.HeadDim)
            throw new FlmUserException($"{where}: the head size would change from {from.HeadDim} to {to.HeadDim}; growth adds heads of a fixed size (keep hidden/heads = {from.HeadDim}, or set model.head_size={from.HeadDim} to grow hidden without heads)");
        if (to.VocabSize != from.VocabSize || to.PaddedVocab != from.PaddedVocab)
            throw new FlmUserException($"{where}: the vocabulary changes from {from.PaddedVocab} to {to.PaddedVocab} rows; all stages share one vocabulary");
        if (to.Mup != from.Mup || to.Xpos != from.Xpos || to.LnEps != from.LnEps)
            throw new FlmUserException($"{where}: μP, xPos and LayerNorm settings must stay the same across growth stages");
    }

    /// <summary>For each layer of the grown model: the old layer it comes from, and whether it is new.</summary>
    public static (int Source, bool IsNew)[] LayerSources(int oldLayers, int newLayers, string placement)
    {
        var added = newLayers - oldLayers;
        var result = new List<(int, bool)>(newLayers);
        if (placement == "interpolate")
        {
            // Each old layer is followed by its copies; the top (added mod L) layers get one copy more.
            for (var i = 0; i < oldLayers; i++)
            {
                result.Add((i, false));
                var copies = added / oldLayers + (i >= oldLayers - added % oldLayers ? 1 : 0);
                for (var c = 0; c < copies; c++)
                    result.Add((i, true));
            }
        }
        else
        {
            // Old layers keep their places; new ones go on top: whole copies of [0, L) then the top (added mod L).
            for (var i = 0; i < oldLayers; i++)
                result.Add((i, false));
            for (var round = 0; round < added / oldLayers; round++)
                for (var i = 0; i < oldLayers; i++)
                    result.Add((i, true));
            for (var i = oldLayers - added % oldLayers; i < oldLayers; i++)
                result.Add((i, true));
        }
        return [.. result];
    }

    public static GrownState Grow(ModelConfig from, ModelConfig to, IReadOnlyDictionary<string, Tensor> parameters,
        IReadOnlyDictionary<string, Tensor>? optimizer, GrowthOptions options, ulong seed)
    {
        var plan = new TensorGrowth(from, to, options, seed);
        var states = optimizer is null ? [] : OptimizerStates
            .Where(prefix => optimizer.ContainsKey(prefix + ParamCatalog.Embedding))
            .Select(prefix => (prefix, optimizer[prefix + ParamCatalog.Embedding].dtype)).ToList();
        var grownParams = new Dictionary<string, Tensor>();
        var grownOptimizer = optimizer is null ? null : new Dictionary<string, Tensor>();
        foreach (var spec in ParamCatalog.Whole(to))
        {
            var (value, grownStates) = plan.Grow(spec, parameters[ParamCatalog.Embedding].dtype, states,
                name => parameters[name], (prefix, name) => optimizer![prefix + name], ownsOld: false);
            grownParams[spec.Name] = value;
            foreach (var (prefix, state) in grownStates)
                grownOptimizer![prefix + spec.Name] = state;
        }
        return new GrownState(to, grownParams, grownOptimizer, ShapeOf(from, to, options), plan.Layers.Select(l => l.Source).ToList());
    }

    /// <summary>Prefixes of the optimizer state tensors that growth carries: Adam's moments and fp32 master weights.</summary>
    public static readonly string[] OptimizerStates = ["exp_avg.", "exp_avg_sq.", "master."];

    /// <summary>Which structure of <paramref name="to"/> is new (what the masks cover): a function of the shapes alone.</summary>
    public static GrowthShape ShapeOf(ModelConfig from, ModelConfig to, GrowthOptions options) => new(
        to.Hidden > from.Hidden ? from.Hidden : null,
        to.AttentionWidth > from.AttentionWidth ? from.AttentionWidth : null,
        to.FfnSize > from.FfnSize ? from.FfnSize : null,
        LayerSources(from.Layers, to.Layers, options.DepthPlacement).Select((l, i) => (l, i)).Where(x => x.l.IsNew).Select(x => x.i).ToList(),
        from.WidthMult);

    /// <summary>Copies <paramref name="old"/> into the leading block of <paramref name="target"/> (per Q/K/V block for packed projections).</summary>
    public static void EmbedTopLeft(Tensor target, Tensor old, ParamSpec spec, ModelConfig to)
    {
        if (spec.Split == TpSplit.PackedQkvDim0)
        {
            var newWidth = to.AttentionWidth;
            var oldWidth = old.shape[0] / 3;
            var targetView = target.view([3, newWidth, .. target.shape.Skip(1)]);
            var oldView = old.view([3, oldWidth, .. old.shape.Skip(1)]);
            Block(targetView, oldView.shape).copy_(oldView);
        }
        else
            Block(target, old.shape).copy_(old);
    }

    private static Tensor Block(Tensor t, long[] shape)
    {
        var view = t;
        for (var dim = 0; dim < shape.Length; dim++)
            view = view.narrow(dim, 0, shape[dim]);
        return view;
    }
}

/// <summary>
/// Growth of one tensor at a time: its new value and optimizer states from the old tensors it comes from,
/// read on demand. The whole-state <see cref="ModelGrowth.Grow"/> and a rank that grows only its own slices
/// from a checkpoint share it, so both give the same numbers.
/// </summary>
public sealed class TensorGrowth
{
    private readonly ModelConfig _to;
    private readonly ulong _seed;
    private readonly bool _copyNew;

    public TensorGrowth(ModelConfig from, ModelConfig to, GrowthOptions options, ulong seed)
    {
        ModelGrowth.Validate(from, to, "growth");
        _to = to;
        _seed = seed;
        _copyNew = options.NewBlockInit == "copy";
        Layers = ModelGrowth.LayerSources(from.Layers, to.Layers, options.DepthPlacement);
    }

    /// <summary>For each layer of the grown model: the old layer it comes from, and whether it is new.</summary>
    public (int Source, bool IsNew)[] Layers { get; }

    /// <summary>The seed of the weights growth adds.</summary>
    public ulong Seed => _seed;

    /// <summary>The grown model.</summary>
    public ModelConfig To => _to;

    /// <summary>
    /// Where a grown tensor comes from: the old tensor (null for none), whether its old values are copied in (not
    /// for a new layer initialised at random), and whether its layer is new (its Adam moments start at zero).
    /// </summary>
    public (string? OldName, bool CopyValues, bool NewLayer) SourceOf(string name)
    {
        var (oldName, copyValues, layer) = Source(name);
        return (oldName, copyValues, layer.IsNew);
    }

    /// <summary>The whole grown tensor of <paramref name="spec"/> (a whole-model spec) and its optimizer states by prefix.</summary>
    /// <param name="dtype">dtype of the values when the tensor has no old source.</param>
    /// <param name="states">The optimizer states to grow: prefix and dtype.</param>
    /// <param name="readParam">An old parameter by name.</param>
    /// <param name="readState">An old optimizer state by prefix and name.</param>
    /// <param name="ownsOld">Whether the tensors read are this call's to dispose.</param>
    public (Tensor Value, List<(string Prefix, Tensor State)> States) Grow(ParamSpec spec, ScalarType dtype, IReadOnlyList<(string Prefix, ScalarType DType)> states,
        Func<string, Tensor> readParam, Func<string, string, Tensor> readState, bool ownsOld)
    {
        using var _ = no_grad();
        // Which old tensor (if any) this one grows from, and whether its old values are copied in.
        var (oldName, copyValues, oldLayer) = Source(spec.Name);
        using var fresh = ModelInitializer.Generate(spec, _seed, _to.Mup.QueryZeroInit);
        Tensor value;
        if (oldName is not null)
        {
            var old = readParam(oldName);
            try
            {
                value = fresh.to(old.dtype);
                if (copyValues)
                    ModelGrowth.EmbedTopLeft(value, old, spec, _to);
            }
            finally
            {
                if (ownsOld)
                    old.Dispose();
            }
        }
        else
            value = fresh.to(dtype);
        var grown = new List<(string, Tensor)>();
        foreach (var (prefix, stateType) in states)
        {
            // Master weights are the parameters in fp32 (same layout as the values); moments start at zero, with the
            // old block copied only for old layers and shared tensors (zero for inserted layers).
            var master = prefix == "master.";
            var state = master ? fresh.to(stateType) : zeros(spec.Shape, dtype: stateType);
            if (oldName is not null && (master ? copyValues : !oldLayer.IsNew))
            {
                var old = readState(prefix, oldName);
                try
                {
                    ModelGrowth.EmbedTopLeft(state, old, spec, _to);
                }
                finally
                {
                    if (ownsOld)
                        old.Dispose();
                }
            }
            grown.Add((prefix, state));
        }
        return (value, grown);
    }

    private (string? OldName, bool CopyValues, (int Source, bool IsNew) Layer) Source(string name)
    {
        const string prefix = "transformer.h.";
        if (!name.StartsWith(prefix, StringComparison.Ordinal))
            return (name, true, (-1, false));
        var dot = name.IndexOf('.', prefix.Length);
        var index = int.Parse(name[prefix.Length..dot], System.Globalization.CultureInfo.InvariantCulture);
        var layer = Layers[index];
        return ($"{prefix}{layer.Source}{name[dot..]}", !layer.IsNew || _copyNew, layer);
    }
}
