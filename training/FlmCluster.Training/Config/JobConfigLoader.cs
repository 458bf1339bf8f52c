using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace FlmCluster.Training.Config;

/// <summary>
/// Reads a job config from a preset name or a JSON file, applies <c>--set key=value</c> overrides and
/// validates the result. Unknown keys, wrong types and bad values are <see cref="FlmUserException"/>s.
/// </summary>
public static class JobConfigLoader
{
    public static JsonSerializerOptions JsonOptions { get; } = CreateOptions();

    private static JsonSerializerOptions CreateOptions()
    {
        var options = new JsonSerializerOptions
        {
            PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
            UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
            ReadCommentHandling = JsonCommentHandling.Skip,
            AllowTrailingCommas = true,
            WriteIndented = true,
            DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        };
        options.MakeReadOnly(populateMissingResolver: true);
        return options;
    }

    /// <summary>Loads, overrides and validates. <paramref name="source"/> is a preset name or a .json path.</summary>
    public static JobConfig Load(string source, IEnumerable<string>? overrides = null)
    {
        var node = ReadSource(source);
        foreach (var assignment in overrides ?? [])
            ApplyOverride(node, assignment);
        var job = Deserialize(node, DescribeSource(source));
        return JobValidator.Validate(job);
    }

    /// <summary>Loads a job from JSON text (e.g. a checkpoint's manifest), applies overrides and validates.</summary>
    public static JobConfig LoadFromJson(string json, string origin, IEnumerable<string>? overrides = null)
    {
        JsonObject node;
        try
        {
            node = JsonNode.Parse(json) as JsonObject ?? throw new FlmUserException($"{origin}: the job is not a JSON object");
        }
        catch (JsonException ex)
        {
            throw new FlmUserException($"{origin}: malformed job JSON ({Shorten(ex.Message)})");
        }
        foreach (var assignment in overrides ?? [])
            ApplyOverride(node, assignment);
        return JobValidator.Validate(Deserialize(node, origin));
    }

    public static string ToJson(JobConfig job) => JsonSerializer.Serialize(job, JsonOptions);

    public static JobConfig FromJson(string json, string origin)
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException ex)
        {
            throw new FlmUserException($"{origin}: malformed JSON ({Shorten(ex.Message)}); fix the file's syntax");
        }
        if (node is not JsonObject obj)
            throw new FlmUserException($"{origin}: a job config must be a JSON object");
        return Deserialize(obj, origin);
    }

    private static string DescribeSource(string source) => LooksLikeFile(source) ? $"config file '{source}'" : $"preset '{source}'";

    private static bool LooksLikeFile(string source) =>
        source.EndsWith(".json", StringComparison.OrdinalIgnoreCase) || source.Contains('/') || source.Contains('\\') || File.Exists(source);

    private static JsonObject ReadSource(string source)
    {
        if (!LooksLikeFile(source))
            return ToNode(Presets.Get(source));
        if (!File.Exists(source))
            throw new FlmUserException($"config file '{source}' does not exist; give an existing .json file or a preset ({string.Join(", ", Presets.Names)})");
        string text;
        try
        {
            text = File.ReadAllText(source);
        }
        catch (IOException ex)
        {
            throw new FlmUserException($"config file '{source}' cannot be read: {ex.Message}");
        }
        JsonNode? parsed;
        try
        {
            parsed = JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException ex)
        {
            throw new FlmUserException($"config file '{source}' is malformed JSON ({Shorten(ex.Message)}); fix the syntax at that position");
        }
        if (parsed is not JsonObject file)
            throw new FlmUserException($"config file '{source}' must contain a JSON object, e.g. {{\"base\": \"tiny\", \"train\": {{\"steps\": 50}}}}");
        if (file["base"] is JsonValue baseValue && baseValue.TryGetValue<string>(out var baseName))
        {
            var merged = ToNode(Presets.Get(baseName));
            Merge(merged, file);
            return merged;
        }
        return file;
    }

    private static JsonObject ToNode(JobConfig job) => (JsonObject)JsonSerializer.SerializeToNode(job, JsonOptions)!;

    /// <summary>Deep merge: objects merge key by key, everything else replaces.</summary>
    private static void Merge(JsonObject target, JsonObject source)
    {
        foreach (var (key, value) in source.ToList())
        {
            if (value is JsonObject sourceChild && target[key] is JsonObject targetChild)
                Merge(targetChild, sourceChild);
            else
                target[key] = value?.DeepClone();
        }
    }

    /// <summary>Applies <c>a.b.c=value</c>; the value is read as JSON when it parses, otherwise as a string.</summary>
    public static void ApplyOverride(JsonObject root, string assignment)
    {
        var eq = assignment.IndexOf('=');
        if (eq <= 0)
            throw new FlmUserException($"--set '{assignment}' is not of the form key=value (e.g. --set optimizer.lr=3e-4)");
        var path = assignment[..eq].Trim();
        var raw = assignment[(eq + 1)..];
        var segments = path.Split('.');
        if (segments.Any(string.IsNullOrWhiteSpace))
            throw new FlmUserException($"--set '{assignment}': key '{path}' has an empty part");
        JsonNode node = root;
        foreach (var segment in segments[..^1])
        {
            if (node is JsonArray array)
            {
                if (!int.TryParse(segment, out var index) || index < 0 || index >= array.Count)
                    throw new FlmUserException($"--set '{assignment}': '{segment}' is not an index of the {array.Count} entries of that list");
                node = array[index] ?? throw new FlmUserException($"--set '{assignment}': entry {index} is empty");
                continue;
            }
            var obj = (JsonObject)node;
            if (obj[segment] is JsonObject or JsonArray)
            {
                node = obj[segment]!;
                continue;
            }
            if (obj.ContainsKey(segment) && obj[segment] is not null)
                throw new FlmUserException($"--set '{assignment}': '{segment}' is a value, not a section");
            var created = new JsonObject();
            obj[segment] = created;
            node = created;
        }
        var last = segments[^1];
        if (node is JsonArray list)
        {
            if (!int.TryParse(last, out var index) || index < 0 || index >= list.Count)
                throw new FlmUserException($"--set '{assignment}': '{last}' is not an index of the {list.Count} entries of that list");
            list[index] = ParseValue(raw);
        }
        else
            ((JsonObject)node)[last] = ParseValue(raw);
    }

    private static JsonNode? ParseValue(string raw)
    {
        try
        {
            return JsonNode.Parse(raw);
        }
        catch (JsonException)
        {
            return JsonValue.Create(raw);
        }
    }

    private static JobConfig Deserialize(JsonObject node, string origin)
    {
        try
        {
            return node.Deserialize<JobConfig>(JsonOptions) ?? throw new FlmUserException($"{origin}: empty config");
        }
        catch (JsonException ex)
        {
            var key = (ex.Path ?? "$").TrimStart('$').TrimStart('.');
            if (ex.Message.Contains("could not be mapped", StringComparison.Ordinal))
            {
                var member = ExtractQuoted(ex.Message);
                var full = string.IsNullOrEmpty(key) ? member : key.EndsWith(member, StringComparison.Ordinal) ? key : $"{key}.{member}";
                throw new FlmUserException($"{origin}: unknown config key '{full}'; see docs/configuration.md for the keys");
            }
            throw new FlmUserException($"{origin}: config key '{key}' has a value of the wrong type ({Shorten(ex.Message)})");
        }
    }

    private static string ExtractQuoted(string message)
    {
        var start = message.IndexOf('\'');
        var end = start >= 0 ? message.IndexOf('\'', start + 1) : -1;
        return start >= 0 && end > start ? message[(start + 1)..end] : "?";
    }

    private static string Shorten(string message)
    {
        var cut = message.IndexOf(" Path:", StringComparison.Ordinal);
        var text = cut > 0 ? message[..cut] : message;
        return text.Replace(Environment.NewLine, " ").TrimEnd('.');
    }
}
