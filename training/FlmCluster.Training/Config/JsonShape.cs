using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;

namespace FlmCluster.Training.Config;

/// <summary>
/// Checks a JSON tree against the shape of the type it will be read into, before reading it: keys the type
/// does not have, nulls where the type does not allow them (a section set to null, a list entry that is
/// null) and required keys that are missing. Finding these up front names the key in the user's terms
/// instead of surfacing as a null reference later or as a serializer message.
/// </summary>
public static class JsonShape
{
    /// <summary>How files of ours are parsed: comments and trailing commas allowed, a key given twice refused (it would fail later, untyped).</summary>
    public static JsonDocumentOptions ParseOptions { get; } = new()
    {
        CommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        AllowDuplicateProperties = false,
    };

    public enum ProblemKind
    {
        UnknownKey,
        Null,
        Missing,
    }

    /// <summary>A key (dotted, list entries by index: <c>stages.0.layout</c>) and what is wrong with it.</summary>
    public sealed record Problem(string Key, ProblemKind Kind)
    {
        public string Describe() => Kind switch
        {
            ProblemKind.UnknownKey => $"unknown key '{Key}'",
            ProblemKind.Null => $"key '{Key}' is null; give a value or leave the key out",
            _ => $"key '{Key}' is missing",
        };
    }

    /// <summary>The first problem, or null when the tree fits <paramref name="type"/>.</summary>
    public static Problem? FindProblem(JsonNode? node, Type type, JsonSerializerOptions options, bool allowUnknownKeys) =>
        Check(node, options.GetTypeInfo(type), options, allowUnknownKeys, "");

    private static Problem? Check(JsonNode? node, JsonTypeInfo info, JsonSerializerOptions options, bool allowUnknown, string path)
    {
        switch (info.Kind)
        {
            case JsonTypeInfoKind.Object when node is JsonObject obj:
            {
                var properties = info.Properties.ToDictionary(p => p.Name, StringComparer.Ordinal);
                foreach (var (key, value) in obj)
                {
                    var where = Join(path, key);
                    if (!properties.TryGetValue(key, out var property))
                    {
                        if (allowUnknown)
                            continue;
                        return new Problem(where, ProblemKind.UnknownKey);
                    }
                    if (value is null)
                    {
                        if (!property.IsSetNullable)
                            return new Problem(where, ProblemKind.Null);
                        continue;
                    }
                    if (Check(value, options.GetTypeInfo(property.PropertyType), options, allowUnknown, where) is { } problem)
                        return problem;
                }
                foreach (var property in info.Properties.Where(p => p.IsRequired && !obj.ContainsKey(p.Name)))
                    return new Problem(Join(path, property.Name), ProblemKind.Missing);
                return null;
            }
            case JsonTypeInfoKind.Enumerable when node is JsonArray array && info.ElementType is { } elementType:
            {
                // No list of ours holds nulls (the element type's annotation is not visible here).
                var element = options.GetTypeInfo(elementType);
                var nullable = Nullable.GetUnderlyingType(elementType) is not null;
                for (var i = 0; i < array.Count; i++)
                {
                    var where = Join(path, $"{i}");
                    if (array[i] is null)
                    {
                        if (!nullable)
                            return new Problem(where, ProblemKind.Null);
                        continue;
                    }
                    if (Check(array[i], element, options, allowUnknown, where) is { } problem)
                        return problem;
                }
                return null;
            }
            default:
                return null; // values and mismatched kinds: the serializer reports wrong types
        }
    }

    private static string Join(string path, string key) => path.Length == 0 ? key : $"{path}.{key}";
}
