using System.Text.Json.Nodes;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// FLM-101B's Hugging Face layout (docs/model.md, parameter names): config.json with the FLM keys, and model.safetensors
/// with `transformer.*` names, GPT-2 Conv1D weights stored [in, out] (the transpose of ours), the packed
/// [Q‖K‖V] projection, the xPos buffers under `transformer.wpe`, and the output head tied to `transformer.wte`.
/// </summary>
public static class HfFormat
{
    public const string ConfigFile = "config.json";
    public const string WeightsFile = "model.safetensors";

    /// <summary>Conv1D weights: ours are [out, in], the export's [in, out].</summary>
    private static bool Transposed(string name) =>
        name.EndsWith("attn.c_attn.weight", StringComparison.Ordinal) || name.EndsWith("attn.c_proj.weight", StringComparison.Ordinal)
        || name.EndsWith("mlp.c_fc.weight", StringComparison.Ordinal) || name.EndsWith("mlp.c_proj.weight", StringComparison.Ordinal);

    public static bool IsExport(string directory) =>
        File.Exists(Path.Combine(directory, ConfigFile)) && File.Exists(Path.Combine(directory, WeightsFile))
        && JsonNode.Parse(File.ReadAllText(Path.Combine(directory, ConfigFile)))?["model_type"] is not null;

    /// <summary>Names and shapes of the exported tensors for a model (what a loader of the FLM checkpoint expects).</summary>
    public static Dictionary<string, long[]> Shapes(ModelConfig m)
    {
        var shapes = new Dictionary<string, long[]>();
        foreach (var spec in ParamCatalog.Whole(m))
            shapes[spec.Name] = Transposed(spec.Name) ? [spec.Shape[1], spec.Shape[0]] : spec.Shape;
        shapes["transformer.wpe.inv_freq"] = [m.HeadDim / 2];
        shapes["transformer.wpe.scale"] = [m.HeadDim / 2];
        return shapes;
    }

    public static JsonObject Config(ModelConfig m, string tokenizer, string dtype) => new()
    {
        ["architectures"] = new JsonArray("FLM"),
        ["model_type"] = "flm",
        ["vocab_size"] = m.PaddedVocab,
        ["n_embd"] = m.Hidden,
        ["n_head"] = m.Heads,
        ["n_layer"] = m.Layers,
        ["n_inner"] = m.FfnSize,
        ["n_positions"] = m.SeqLen,
        ["layer_norm_epsilon"] = m.LnEps,
        ["activation_function"] = "gelu_fast",
        ["relative_encoding"] = "rotary",
        ["rotary_use_xpos"] = true,
        ["rotary_theta"] = m.Xpos.Theta,
        ["rotary_xpos_scale_base"] = m.Xpos.ScaleBase,
        ["use_mup"] = true,
        ["mup_base_width"] = m.Mup.BaseWidth,
        ["mup_scale_factor"] = m.WidthMult,
        ["output_mult"] = m.Mup.OutputMult,
        ["input_mult"] = m.Mup.InputMult,
        ["initializer_range"] = m.Mup.InitStd,
        ["embd_pdrop"] = m.Dropout,
        ["attn_pdrop"] = m.Dropout,
        ["resid_pdrop"] = m.Dropout,
        ["bos_token_id"] = TokenizerFactory.Create(tokenizer).EndOfText,
        ["eos_token_id"] = TokenizerFactory.Create(tokenizer).EndOfText,
        ["tie_word_embeddings"] = true,
        ["torch_dtype"] = dtype,
        // Our own keys: what the FLM config does not say.
        ["flmcluster"] = new JsonObject
        {
            ["tokenizer"] = tokenizer,
            ["vocab_size"] = m.VocabSize,
            ["vocab_pad_multiple"] = m.VocabPadMultiple,
            ["head_size"] = m.HeadDim,
            ["xpos_gamma"] = m.Xpos.Gamma,
        },
    };

    /// <summary>Writes config.json and model.safetensors into a new folder (complete or absent).</summary>
    public static void Export(ModelConfig m, string tokenizer, Func<string, Tensor> parameter, string directory)
    {
        if (Directory.Exists(directory) && Directory.EnumerateFileSystemEntries(directory).Any())
            throw new FlmUserException($"'{directory}' exists and is not empty; export into a new folder");
        var parent = Path.GetDirectoryName(Path.GetFullPath(directory))!;
        Directory.CreateDirectory(parent);
        var staging = Path.Combine(parent, $".{Path.GetFileName(Path.GetFullPath(directory))}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        var tensors = new Dictionary<string, Tensor>();
        try
        {
            string? dtype = null;
            foreach (var spec in ParamCatalog.Whole(m))
            {
                var t = parameter(spec.Name);
                dtype ??= t.dtype == ScalarType.Float64 ? "float64" : t.dtype == ScalarType.BFloat16 ? "bfloat16" : "float32";
                tensors[spec.Name] = Transposed(spec.Name) ? t.t().contiguous() : t;
            }
            var d = m.HeadDim;
            var pairs = arange(0, d, 2, dtype: ScalarType.Float64);
            tensors["transformer.wpe.inv_freq"] = pow(m.Xpos.Theta, pairs / d).reciprocal().to(ScalarType.Float32);
            tensors["transformer.wpe.scale"] = ((pairs + m.Xpos.Gamma * d) / ((1 + m.Xpos.Gamma) * d)).to(ScalarType.Float32);
            SafeTensors.Write(Path.Combine(staging, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            File.WriteAllText(Path.Combine(staging, ConfigFile), Config(m, tokenizer, dtype ?? "float32").ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            if (Directory.Exists(directory))
                Directory.Delete(directory);
            Directory.Move(staging, directory);
        }
        catch
        {
            if (Directory.Exists(staging))
                Directory.Delete(staging, recursive: true);
            throw;
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
    }

    /// <summary>The model an export describes.</summary>
    public static ModelConfig ModelFrom(JsonNode config, string directory)
    {
        try
        {
            var ours = config["flmcluster"];
            var padded = config["vocab_size"]!.GetValue<int>();
            return new ModelConfig
            {
                Layers = config["n_layer"]!.GetValue<int>(),
                Hidden = config["n_embd"]!.GetValue<int>(),
                Heads = config["n_head"]!.GetValue<int>(),
                Ffn = config["n_inner"]?.GetValue<int>() ?? 0,
                HeadSize = ours?["head_size"]?.GetValue<int>() ?? 0,
                VocabSize = ours?["vocab_size"]?.GetValue<int>() ?? padded,
                VocabPadMultiple = ours?["vocab_pad_multiple"]?.GetValue<int>() ?? padded,
                SeqLen = config["n_positions"]?.GetValue<int>() ?? 2048,
                LnEps = config["layer_norm_epsilon"]?.GetValue<double>() ?? 1e-5,
                Mup = new MupConfig
                {
                    BaseWidth = config["mup_base_width"]?.GetValue<int>() ?? config["n_embd"]!.GetValue<int>(),
                    OutputMult = config["output_mult"]?.GetValue<double>() ?? 1.0,
                    InputMult = config["input_mult"]?.GetValue<double>() ?? 1.0,
                    InitStd = config["initializer_range"]?.GetValue<double>() ?? 0.02,
                },
                Xpos = new XposConfig
                {
                    ScaleBase = config["rotary_xpos_scale_base"]?.GetValue<double>() ?? 512,
                    Theta = config["rotary_theta"]?.GetValue<double>() ?? 10000,
                    Gamma = ours?["xpos_gamma"]?.GetValue<double>() ?? 0.4,
                },
            };
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new FlmUserException($"'{directory}/{ConfigFile}' is not an FLM config ({ex.Message})");
        }
    }

    /// <summary>Reads an export: the job it implies, and the parameters in our layout ([out, in]) by global name.</summary>
    public static (JobConfig Job, Dictionary<string, Tensor> Parameters) Read(string directory)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(directory, ConfigFile)))!;
        var model = ModelFrom(config, directory);
        var tokenizer = config["flmcluster"]?["tokenizer"]?.GetValue<string>() ?? (model.VocabSize >= Cl100kTokenizer.Vocab ? TokenizerFactory.Cl100k : TokenizerFactory.Bytes);
        var job = JobValidator.Validate(new JobConfig { Name = Path.GetFileName(Path.GetFullPath(directory)), Tokenizer = tokenizer, Model = model });
        var stored = SafeTensors.Read(Path.Combine(directory, WeightsFile));
        var parameters = new Dictionary<string, Tensor>();
        foreach (var spec in ParamCatalog.Whole(job.Model))
        {
            if (!stored.TryGetValue(spec.Name, out var t))
                throw new FlmUserException($"'{directory}/{WeightsFile}' has no tensor '{spec.Name}'");
            parameters[spec.Name] = Transposed(spec.Name) ? t.t().contiguous() : t;
            if (!parameters[spec.Name].shape.SequenceEqual(spec.Shape))
                throw new FlmUserException($"'{directory}': '{spec.Name}' has shape [{string.Join(",", t.shape)}], the config implies another");
        }
        return (job, parameters);
    }

    public static (JobConfig Job, FlmModel Model, ITextTokenizer Tokenizer) Import(string directory)
    {
        var (job, parameters) = Read(directory);
        var dtype = parameters[ParamCatalog.Embedding].dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var model = new FlmModel(job.Model, dtype: dtype);
        using (no_grad())
            foreach (var p in model.Parameters)
                p.Tensor.copy_(parameters[p.Name]);
        foreach (var t in parameters.Values)
            t.Dispose();
        return (job, model, TokenizerFactory.Create(job.Tokenizer));
    }
}
