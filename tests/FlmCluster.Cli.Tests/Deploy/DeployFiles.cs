using System.Diagnostics;
using FlmCluster.Silo;
using Microsoft.Extensions.Configuration;
using YamlDotNet.RepresentationModel;

namespace FlmCluster.Cli.Tests.Deploy;

/// <summary>The repository's deployment files, the tools that check them, and silo settings read the way a silo reads its environment.</summary>
public static class DeployFiles
{
    public static string Root { get; } = FindRoot();

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FlmCluster.sln")) && Directory.Exists(Path.Combine(dir.FullName, "infra")))
                return dir.FullName;
        throw new InvalidOperationException("the repository (FlmCluster.sln, infra/) is not above the test's folder");
    }

    public static string PathOf(string relative) => Path.Combine(Root, relative);

    /// <summary>Every YAML document of a file.</summary>
    public static IReadOnlyList<YamlMappingNode> Documents(string yaml)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(yaml));
        return stream.Documents.Select(d => (YamlMappingNode)d.RootNode).ToList();
    }

    public static YamlNode? Get(this YamlNode node, params string[] path)
    {
        foreach (var key in path)
        {
            if (node is not YamlMappingNode map || !map.Children.TryGetValue(new YamlScalarNode(key), out var next))
                return null;
            node = next;
        }
        return node;
    }

    public static string Text(this YamlNode? node) => (node as YamlScalarNode)?.Value ?? "";

    public static IEnumerable<YamlNode> Items(this YamlNode? node) => node is YamlSequenceNode seq ? seq.Children : [];

    /// <summary>
    /// A tool the deployment checks need (Debian packages that .ci/run installs): its path, or a failure that says
    /// how to install it. These checks fail, never skip, where the tool is missing.
    /// </summary>
    public static string Tool(string name, string package)
    {
        var path = new[] { "/usr/bin", "/usr/local/bin", "/bin" }.Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
        Assert.True(path is not null, $"{name} is not installed: apt-get install {package} (.ci/run installs it)");
        return path!;
    }

    public static (int ExitCode, string Output, string Error) Run(string program, string workingDirectory, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = workingDirectory };
        foreach (var a in args)
            start.ArgumentList.Add(a);
        foreach (var (key, value) in environment)
            start.Environment[key] = value;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(2)), $"{program} {string.Join(' ', args)} did not finish");
        return (process.ExitCode, output.Result, error.Result);
    }

    /// <summary>
    /// Silo settings from environment variables (Flm__Key), as the silo program reads them; every Flm__ variable
    /// must name a setting (the configuration binder would ignore a misspelt one silently).
    /// </summary>
    public static SiloSettings Settings(IReadOnlyDictionary<string, string> environment)
    {
        var known = typeof(SiloSettings).GetProperties().Where(p => p.SetMethod is not null).Select(p => p.Name).ToHashSet();
        var flm = environment.Where(e => e.Key.StartsWith("Flm__", StringComparison.Ordinal)).ToList();
        foreach (var (key, _) in flm)
            Assert.True(known.Contains(key["Flm__".Length..]), $"{key} is not a silo setting");
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(flm.Select(e => KeyValuePair.Create(e.Key.Replace("__", ":"), (string?)e.Value)))
            .Build();
        return SiloSettings.From(configuration);
    }
}
