using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Cli;

/// <summary>How job phases and worker states read on the command line (the contracts keep them as enums).</summary>
public static class Text
{
    public static string Of(JobPhase phase) => phase.ToString().ToLowerInvariant();

    public static string Of(WorkerState state) => state.ToString().ToLowerInvariant();
}
