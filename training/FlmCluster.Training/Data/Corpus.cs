using System.Text.Json;

namespace FlmCluster.Training.Data;

/// <summary>Finds the input files behind data paths and reads documents out of text and JSON-lines files.</summary>
public static class Corpus
{
    public const string Bundled = "bundled";

    private static readonly string[] TextExtensions = [".txt", ".jsonl"];

    /// <summary>The bundled bilingual corpus: next to the program (copied at build) or under data/ of the working tree.</summary>
    public static string BundledDirectory()
    {
        foreach (var root in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            var candidate = Path.Combine(root, "data", "bilingual");
            if (Directory.Exists(candidate))
                return candidate;
        }
        throw new FlmUserException("the bundled corpus (data/bilingual) was not found next to the program or in the working directory; give data.paths explicitly");
    }

    /// <summary>Expands paths to files: text/JSONL files, token-file prefixes (.bin/.idx), or folders of them (sorted).</summary>
    public static IReadOnlyList<string> ExpandPaths(IEnumerable<string> paths)
    {
        var files = new List<string>();
        foreach (var path in paths)
        {
            var p = path == Bundled ? BundledDirectory() : path;
            if (Directory.Exists(p))
            {
                var inDir = Directory.EnumerateFiles(p)
                    .Where(f => TextExtensions.Contains(Path.GetExtension(f)) || f.EndsWith(".idx", StringComparison.Ordinal))
                    .Select(f => f.EndsWith(".idx", StringComparison.Ordinal) ? TokenFile.PrefixOf(f) : f)
                    .Order(StringComparer.Ordinal)
                    .ToList();
                if (inDir.Count == 0)
                    throw new FlmUserException($"data folder '{p}' holds no .txt, .jsonl or prepared token (.idx) files");
                files.AddRange(inDir);
            }
            else if (File.Exists(p) && TextExtensions.Contains(Path.GetExtension(p)))
                files.Add(p);
            else if (File.Exists(TokenFile.IdxPath(TokenFile.PrefixOf(p))))
                files.Add(TokenFile.PrefixOf(p));
            else if (File.Exists(p))
                throw new FlmUserException($"data file '{p}' is not .txt, .jsonl or a prepared token file (.bin/.idx)");
            else
                throw new FlmUserException($"data path '{p}' does not exist; give a text/JSONL file, a token file prefix or a folder (or 'bundled')");
        }
        return files;
    }

    public static bool IsTokenFile(string file) => !TextExtensions.Contains(Path.GetExtension(file));

    /// <summary>Documents of a .txt (the whole file) or .jsonl (field "text" of each line) file.</summary>
    public static IEnumerable<string> ReadDocuments(string file)
    {
        if (Path.GetExtension(file) == ".txt")
        {
            yield return File.ReadAllText(file);
            yield break;
        }
        var lineNo = 0;
        foreach (var line in File.ReadLines(file))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line))
                continue;
            string? text;
            try
            {
                using var doc = JsonDocument.Parse(line);
                text = doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String
                    ? t.GetString()
                    : null;
            }
            catch (JsonException)
            {
                throw new FlmUserException($"{file}:{lineNo}: not valid JSON; each line of a .jsonl file must be an object with a \"text\" string");
            }
            if (text is null)
                throw new FlmUserException($"{file}:{lineNo}: no \"text\" string field; each line of a .jsonl file must be an object with a \"text\" string");
            yield return text;
        }
    }
}
