using System.Runtime.InteropServices;
using FlmCluster.Training;

namespace FlmCluster.Cli;

/// <summary>
/// Checks, before anything runs, that an output the command will write can be written: without creating
/// anything, the path's nearest existing ancestor must be a folder this process may write into.
/// </summary>
public static partial class OutputLocation
{
    /// <summary>A folder that exists and is writable, or that can be created.</summary>
    public static void RequireCreatableDirectory(string path, string what)
    {
        var full = FullPath(path, what);
        if (File.Exists(full))
            throw new FlmUserException($"{what} '{path}' is a file; give a folder");
        RequireWritableAncestor(full, path, what);
    }

    /// <summary>A new folder, or an existing empty one (the command refuses to write over what is there).</summary>
    public static void RequireNewOrEmptyDirectory(string path, string what)
    {
        RequireCreatableDirectory(path, what);
        if (Directory.Exists(path) && Directory.EnumerateFileSystemEntries(path).Any())
            throw new FlmUserException($"{what} '{path}' exists and is not empty; give a new folder");
    }

    /// <summary>A file that can be created (or replaced): not a folder, in a folder that exists or can be created.</summary>
    public static void RequireCreatableFile(string path, string what)
    {
        var full = FullPath(path, what);
        if (Directory.Exists(full))
            throw new FlmUserException($"{what} '{path}' is a folder; give a file name");
        RequireWritableAncestor(Path.GetDirectoryName(full) ?? full, path, what);
    }

    private static string FullPath(string path, string what)
    {
        if (string.IsNullOrWhiteSpace(path))
            throw new FlmUserException($"{what} is empty; give a path");
        try
        {
            return Path.GetFullPath(path);
        }
        catch (ArgumentException)
        {
            throw new FlmUserException($"{what} '{path}' is not a valid path");
        }
    }

    private static void RequireWritableAncestor(string full, string path, string what)
    {
        var existing = full;
        while (!Directory.Exists(existing) && !File.Exists(existing) && Path.GetDirectoryName(existing) is { } parent)
            existing = parent;
        if (File.Exists(existing))
            throw new FlmUserException($"{what} '{path}' cannot be created: '{existing}' is a file; give a path under a folder");
        if (!Directory.Exists(existing) || !Writable(existing))
            throw new FlmUserException($"{what} '{path}' cannot be created: no write permission in '{existing}'; give a folder you can write to");
    }

    private static bool Writable(string directory) =>
        !(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) || Access(directory, WriteOk | ExecuteOk) == 0;

    private const int WriteOk = 2;
    private const int ExecuteOk = 1;

    [LibraryImport("libc", EntryPoint = "access", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Access(string path, int mode);
}
