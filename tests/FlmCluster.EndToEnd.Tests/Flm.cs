using FlmCluster.Tests.Process;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>Runs the built `flm` in a private home with its own cluster profile.</summary>
public sealed class Flm(string home)
{
    public string Profile => Path.Combine(home, "cluster.json");

    public FlmResult Run(params string[] args) => Run(TimeSpan.FromMinutes(5), args);

    public FlmResult Run(TimeSpan timeout, params string[] args) =>
        FlmProcess.Run(home, new Dictionary<string, string> { ["FLM_PROFILE"] = Profile }, timeout, args);
}
