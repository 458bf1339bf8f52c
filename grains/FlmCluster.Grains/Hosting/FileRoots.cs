namespace FlmCluster.Grains;

/// <summary>
/// The folders a silo lets jobs use: checkpoints are written, pruned and read only under
/// <see cref="Checkpoints"/>, training data is read only under <see cref="Data"/>. A path counts as under a root
/// after it is made absolute and every symbolic link along it is followed, so neither <c>..</c> nor a link
/// inside a root leads out of it. Without configured roots a silo allows its working folder and the system's
/// temporary folder (where <c>flm train</c> and the tests keep their runs); a shared cluster names its own.
/// </summary>
public sealed record FileRoots(IReadOnlyList<string> Checkpoints, IReadOnlyList<string> Data)
{
    public static FileRoots Default { get; } = new([Environment.CurrentDirectory, Path.GetTempPath()], [Environment.CurrentDirectory, Path.GetTempPath()]);

    /// <summary>Roots from a <see cref="Path.PathSeparator"/>-separated list per kind; an empty list takes the default.</summary>
    public static FileRoots Parse(string checkpoints, string data) => new(
        string.IsNullOrWhiteSpace(checkpoints) ? Default.Checkpoints : Split(checkpoints),
        string.IsNullOrWhiteSpace(data) ? Default.Data : Split(data));

    private static string[] Split(string list) => list.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>Why the checkpoint folder <paramref name="path"/> may not be used here, or null when it may.</summary>
    public string? CheckpointProblem(string path, string what) => Problem(Checkpoints, path, what, "Flm:CheckpointRoots");

    /// <summary>Why the data file <paramref name="path"/> may not be read here, or null when it may.</summary>
    public string? DataProblem(string path, string what) => Problem(Data, path, what, "Flm:DataRoots");

    private static string? Problem(IReadOnlyList<string> roots, string path, string what, string setting)
    {
        if (!Path.IsPathFullyQualified(path))
            return $"{what} '{path}' is relative; give its absolute path on the servers";
        string real;
        try
        {
            real = RealPath(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return $"{what} '{path}' cannot be resolved ({ex.Message})";
        }
        return roots.Any(root => IsUnder(real, RealPath(root)))
            ? null
            : $"{what} '{path}' is outside the folders this cluster allows ({string.Join(", ", roots)}); use a folder under one of them, or have the operator add one to {setting}";
    }

    private const int MaxLinks = 40;

    private static bool IsUnder(string path, string root)
    {
        var trimmed = Path.TrimEndingDirectorySeparator(root);
        return path == trimmed || path.StartsWith(trimmed + Path.DirectorySeparatorChar, StringComparison.Ordinal)
            || (trimmed == Path.GetPathRoot(trimmed) && path.StartsWith(trimmed, StringComparison.Ordinal));
    }

    /// <summary>
    /// The absolute path with <c>.</c> and <c>..</c> resolved and every existing symbolic link along it followed
    /// (the part that does not exist yet is kept as written).
    /// </summary>
    public static string RealPath(string path) => RealPath(path, 0);

    private static string RealPath(string path, int links)
    {
        if (links > MaxLinks)
            throw new IOException($"'{path}' goes through more than {MaxLinks} symbolic links");
        var full = Path.GetFullPath(path);
        var root = Path.GetPathRoot(full)!;
        var current = root;
        var parts = full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        for (var i = 0; i < parts.Length; i++)
        {
            var next = Path.Combine(current, parts[i]);
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            if (info.LinkTarget is { } target)
            {
                // Followed even when it dangles: what would be created through it is where it points.
                current = RealPath(Path.IsPathFullyQualified(target) ? target : Path.Combine(current, target), links + 1);
                continue;
            }
            if (!info.Exists)
                return Path.GetFullPath(Path.Combine([current, .. parts[i..]]));
            current = next;
        }
        return current;
    }
}
