namespace FlmCluster.Training;

/// <summary>
/// A problem with what the user asked for (config, layout, data path, CLI input): reported as one
/// line naming the problem and the fix, never with a stack trace. Thrown before any work starts.
/// </summary>
public sealed class FlmUserException(string message) : Exception(message);
