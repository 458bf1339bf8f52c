using FlmCluster.Training.Config;

namespace FlmCluster.Training.Model;

/// <summary>
/// The parameters of a model (or of one pipeline stage) as global specs, in the order the model holds them.
/// One definition serves the model, initialisation, growth, checkpoints and memory planning.
/// Weights are stored as [out, in] (torch Linear); the Hugging Face export transposes to Conv1D's [in, out].
/// </summary>
public static class ParamCatalog
{
    public const string Embedding = "transformer.wte.weight";
    public const string FinalNormWeight = "transformer.ln_f.weight";
    public const string FinalNormBias = "transformer.ln_f.bias";

    public static string Block(int layer) => $"transformer.h.{layer}.";

    /// <summary>Specs of the stage's parameters; the last stage of a pipeline also lists the tied embedding (a copy).</summary>
    public static IReadOnlyList<(ParamSpec Spec, bool IsTiedCopy)> For(ModelConfig config, StagePlan plan)
    {
        var list = new List<(ParamSpec, bool)>();
        var std = config.Mup.InitStd;
        var m = config.WidthMult;
        var hiddenStd = std / Math.Sqrt(m);
        var residualStd = std / Math.Sqrt(2.0 * config.Layers * m);
        long d = config.Hidden, f = config.FfnSize, a = config.AttentionWidth;
        if (plan.HasEmbedding || plan.HasHead)
            list.Add((new ParamSpec(Embedding, [config.PaddedVocab, d], TpSplit.Dim0, ParamGroup.Embedding, std), !plan.HasEmbedding));
        for (var layer = plan.FirstLayer; layer < plan.FirstLayer + plan.LayerCount; layer++)
        {
            var p = Block(layer);
            list.Add((Norm(p + "ln_1.weight", d, 1), false));
            list.Add((Norm(p + "ln_1.bias", d, 0), false));
            list.Add((new ParamSpec(p + "attn.c_attn.weight", [3 * a, d], TpSplit.PackedQkvDim0, ParamGroup.Matrix, hiddenStd), false));
            list.Add((new ParamSpec(p + "attn.c_attn.bias", [3 * a], TpSplit.PackedQkvDim0, ParamGroup.NoDecay, 0), false));
            list.Add((new ParamSpec(p + "attn.c_proj.weight", [d, a], TpSplit.Dim1, ParamGroup.Matrix, residualStd), false));
            list.Add((new ParamSpec(p + "attn.c_proj.bias", [d], TpSplit.Replicated, ParamGroup.NoDecay, 0), false));
            list.Add((Norm(p + "ln_2.weight", d, 1), false));
            list.Add((Norm(p + "ln_2.bias", d, 0), false));
            list.Add((new ParamSpec(p + "mlp.c_fc.weight", [f, d], TpSplit.Dim0, ParamGroup.Matrix, hiddenStd), false));
            list.Add((new ParamSpec(p + "mlp.c_fc.bias", [f], TpSplit.Dim0, ParamGroup.NoDecay, 0), false));
            list.Add((new ParamSpec(p + "mlp.c_proj.weight", [d, f], TpSplit.Dim1, ParamGroup.Matrix, residualStd), false));
            list.Add((new ParamSpec(p + "mlp.c_proj.bias", [d], TpSplit.Replicated, ParamGroup.NoDecay, 0), false));
        }
        if (plan.HasHead)
        {
            list.Add((Norm(FinalNormWeight, d, 1), false));
            list.Add((Norm(FinalNormBias, d, 0), false));
        }
        return list;
    }

    /// <summary>Every global tensor of the whole model once (no tied copies).</summary>
    public static IReadOnlyList<ParamSpec> Whole(ModelConfig config) =>
        For(config, StagePlan.Whole(config)).Select(x => x.Spec).ToList();

    private static ParamSpec Norm(string name, long d, double value) =>
        new(name, [d], TpSplit.Replicated, ParamGroup.NoDecay, 0, InitConstant: value);
}
