using System.Globalization;
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
            RespectNullableAnnotations = true,
        };
        options.MakeReadOnly(populateMissingResolver: true);
        return options;
    }

    /// <summary>
    /// Loads, overrides and validates. <paramref name="source"/> is a preset name or a .json path;
    /// <paramref name="adjust"/> changes the job (e.g. command-line options) before it is validated.
    /// </summary>
    public static JobConfig Load(string source, IEnumerable<string>? overrides = null, Func<JobConfig, JobConfig>? adjust = null)
    {
        var node = ReadSource(source);
        foreach (var assignment in overrides ?? [])
            ApplyOverride(node, assignment);
        var job = Deserialize(node, DescribeSource(source));
        return JobValidator.Validate(adjust is null ? job : adjust(job));
    }

    /// <summary>Loads a job from JSON text (e.g. a checkpoint's manifest), applies overrides and <paramref name="adjust"/>, and validates.</summary>
    public static JobConfig LoadFromJson(string json, string origin, IEnumerable<string>? overrides = null, Func<JobConfig, JobConfig>? adjust = null)
    {
        JsonObject node;
        try
        {
            node = JsonNode.Parse(json, documentOptions: JsonShape.ParseOptions) as JsonObject ?? throw new FlmUserException($"{origin}: the job is not a JSON object");
        }
        catch (JsonException ex)
        {
            throw new FlmUserException($"{origin}: malformed job JSON ({Shorten(ex.Message)})");
        }
        foreach (var assignment in overrides ?? [])
            ApplyOverride(node, assignment);
        var job = Deserialize(node, origin);
        return JobValidator.Validate(adjust is null ? job : adjust(job));
    }

    public static string ToJson(JobConfig job) => JsonSerializer.Serialize(job, JsonOptions);

    public static JobConfig FromJson(string json, string origin)
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(json, documentOptions: JsonShape.ParseOptions);
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
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new FlmUserException($"config file '{source}' cannot be read: {ex.Message}");
        }
        JsonNode? parsed;
        try
        {
            parsed = JsonNode.Parse(text, documentOptions: JsonShape.ParseOptions);
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
        // Walk to the parent of the last key; every key before it must name a section or a list entry.
        JsonNode node = root;
        for (var i = 0; i < segments.Length - 1; i++)
        {
            var segment = segments[i];
            node = node switch
            {
                JsonArray array => array[Index(array, segment, assignment)] ?? throw new FlmUserException($"--set '{assignment}': entry {segment} is empty"),
                JsonObject obj when obj[segment] is JsonObject or JsonArray => obj[segment]!,
                JsonObject obj when obj[segment] is null => (obj[segment] = new JsonObject())!,
                JsonObject => throw NotASection(assignment, segments[..(i + 1)]),
                _ => throw NotASection(assignment, segments[..i]),
            };
        }
        var last = segments[^1];
        switch (node)
        {
            case JsonArray list:
                list[Index(list, last, assignment)] = ParseValue(raw);
                break;
            case JsonObject obj:
                obj[last] = ParseValue(raw);
                break;
            default:
                throw NotASection(assignment, segments[..^1]);
        }
    }

    private static FlmUserException NotASection(string assignment, string[] valueKey) =>
        new($"--set '{assignment}': '{string.Join('.', valueKey)}' is a value, not a section or a list");

    private static int Index(JsonArray array, string segment, string assignment) =>
        int.TryParse(segment, NumberStyles.None, CultureInfo.InvariantCulture, out var index) && index < array.Count
            ? index
            : throw new FlmUserException($"--set '{assignment}': '{segment}' is not an index of the {array.Count} entries of that list");

    private static JsonNode? ParseValue(string raw)
    {
        try
        {
            return JsonNode.Parse(raw, documentOptions: JsonShape.ParseOptions);
        }
        catch (JsonException)
        {
            return JsonValue.Create(raw);
        }
    }

    private static JobConfig Deserialize(JsonObject node, string origin)
    {
        // Unknown keys and nulls are named by key before the serializer sees them.
        if (JsonShape.FindProblem(node, typeof(JobConfig), JsonOptions, allowUnknownKeys: false) is { } problem)
            throw new FlmUserException(problem.Kind == JsonShape.ProblemKind.UnknownKey
                ? $"{origin}: unknown config key '{problem.Key}'; see docs/configuration.md for the keys"
                : $"{origin}: config {problem.Describe()}");
        try
        {
            return node.Deserialize<JobConfig>(JsonOptions) ?? throw new FlmUserException($"{origin}: empty config");
        }
        catch (JsonException ex)
        {
            var key = (ex.Path ?? "$").TrimStart('$').TrimStart('.');
            throw new FlmUserException($"{origin}: config key '{key}' has a value of the wrong type ({Shorten(ex.Message)})");
        }
    }

    private static string Shorten(string message)
    {
        var cut = message.IndexOf(" Path:", StringComparison.Ordinal);
        var text = cut > 0 ? message[..cut] : message;
        return text.Replace(Environment.NewLine, " ").TrimEnd('.');
    }
}
