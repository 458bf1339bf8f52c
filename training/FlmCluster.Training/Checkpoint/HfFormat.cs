using System.Text.Json;
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

    /// <summary>Whether a folder is meant as an export: it has both files (whether they are good is for <see cref="Read"/> to say).</summary>
    public static bool IsExport(string directory) =>
        File.Exists(Path.Combine(directory, ConfigFile)) && File.Exists(Path.Combine(directory, WeightsFile));

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
        if (File.Exists(directory))
            throw new FlmUserException($"'{directory}' is a file; export into a new folder");
        if (Directory.Exists(directory) && Directory.EnumerateFileSystemEntries(directory).Any())
            throw new FlmUserException($"'{directory}' exists and is not empty; export into a new folder");
        var parent = Path.GetDirectoryName(Path.GetFullPath(directory))!;
        var createdParents = new List<string>(); // removed again if the export fails: complete or absent
        for (var d = parent; !Directory.Exists(d) && Path.GetDirectoryName(d) is { } up; d = up)
            createdParents.Add(d);
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
            foreach (var d in createdParents.Where(d => Directory.Exists(d) && !Directory.EnumerateFileSystemEntries(d).Any()))
                Directory.Delete(d);
            throw;
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
    }

    /// <summary>The model an export describes; a key of the wrong type or a missing required key is an <see cref="FlmUserException"/>.</summary>
    public static ModelConfig ModelFrom(JsonNode config, string directory)
    {
        var where = $"'{Path.Combine(directory, ConfigFile)}'";
        if (config is not JsonObject root || root["model_type"] is null)
            throw new FlmUserException($"{where} is not an FLM config (it has no model_type)");
        var ours = root["flmcluster"] as JsonObject;
        T? Get<T>(JsonObject? o, string key) where T : struct =>
            o?[key] switch
            {
                null => null,
                JsonValue v when v.TryGetValue<T>(out var value) => value,
                _ => throw new FlmUserException($"{where}: {(o == ours ? "flmcluster." : "")}{key} is not {(typeof(T) == typeof(int) ? "an integer" : "a number")}"),
            };
        T Required<T>(string key) where T : struct =>
            Get<T>(root, key) ?? throw new FlmUserException($"{where} has no {key}; it is not an FLM config");
        var padded = Required<int>("vocab_size");
        var hidden = Required<int>("n_embd");
        return new ModelConfig
        {
            Layers = Required<int>("n_layer"),
            Hidden = hidden,
            Heads = Required<int>("n_head"),
            Ffn = Get<int>(root, "n_inner") ?? 0,
            HeadSize = Get<int>(ours, "head_size") ?? 0,
            VocabSize = Get<int>(ours, "vocab_size") ?? padded,
            VocabPadMultiple = Get<int>(ours, "vocab_pad_multiple") ?? padded,
            SeqLen = Get<int>(root, "n_positions") ?? 2048,
            LnEps = Get<double>(root, "layer_norm_epsilon") ?? 1e-5,
            Mup = new MupConfig
            {
                BaseWidth = Get<int>(root, "mup_base_width") ?? hidden,
                OutputMult = Get<double>(root, "output_mult") ?? 1.0,
                InputMult = Get<double>(root, "input_mult") ?? 1.0,
                InitStd = Get<double>(root, "initializer_range") ?? 0.02,
            },
            Xpos = new XposConfig
            {
                ScaleBase = Get<double>(root, "rotary_xpos_scale_base") ?? 512,
                Theta = Get<double>(root, "rotary_theta") ?? 10000,
                Gamma = Get<double>(ours, "xpos_gamma") ?? 0.4,
            },
        };
    }

    /// <summary>
    /// Reads an export: the job it implies, and the parameters in our layout ([out, in]) by global name. The
    /// config is validated and the weights file's header checked against it (names, shapes, byte ranges inside
    /// the file) before any tensor is allocated.
    /// </summary>
    public static (JobConfig Job, Dictionary<string, Tensor> Parameters) Read(string directory)
    {
        var configPath = Path.Combine(directory, ConfigFile);
        JsonNode? config;
        try
        {
            config = JsonNode.Parse(File.ReadAllText(configPath), documentOptions: JsonShape.ParseOptions);
        }
        catch (JsonException ex)
        {
            throw new FlmUserException($"'{configPath}' is malformed JSON ({ex.Message})");
        }
        if (config is null)
            throw new FlmUserException($"'{configPath}' is not an FLM config (it is null)");
        var model = ModelFrom(config, directory);
        var tokenizer = config["flmcluster"]?["tokenizer"] is JsonValue named && named.TryGetValue<string>(out var name)
            ? name
            : model.VocabSize >= Cl100kTokenizer.Vocab ? TokenizerFactory.Cl100k : TokenizerFactory.Bytes;
        JobConfig job;
        try
        {
            job = JobValidator.Validate(new JobConfig { Name = Path.GetFileName(Path.GetFullPath(directory)), Tokenizer = tokenizer, Model = model });
        }
        catch (FlmUserException ex)
        {
            throw new FlmUserException($"'{configPath}' describes no usable model: {ex.Message}");
        }
        var weights = Path.Combine(directory, WeightsFile);
        var (entries, _, _) = SafeTensors.ReadHeaderWithOffset(weights);
        var stored = entries.ToDictionary(e => e.Name);
        foreach (var spec in ParamCatalog.Whole(job.Model))
        {
            if (!stored.TryGetValue(spec.Name, out var entry))
                throw new FlmUserException($"'{weights}' has no tensor '{spec.Name}'");
            var expected = Transposed(spec.Name) ? [spec.Shape[1], spec.Shape[0]] : spec.Shape;
            if (!entry.Shape.SequenceEqual(expected))
                throw new FlmUserException($"'{weights}': '{spec.Name}' has shape [{string.Join(",", entry.Shape)}], {ConfigFile} implies [{string.Join(",", expected)}]");
        }
        var tensors = SafeTensors.Read(weights);
        var parameters = new Dictionary<string, Tensor>();
        foreach (var spec in ParamCatalog.Whole(job.Model))
            parameters[spec.Name] = Transposed(spec.Name) ? tensors[spec.Name].t().contiguous() : tensors[spec.Name];
        foreach (var unused in tensors.Where(kv => !parameters.ContainsKey(kv.Key) || Transposed(kv.Key)))
            unused.Value.Dispose();
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
