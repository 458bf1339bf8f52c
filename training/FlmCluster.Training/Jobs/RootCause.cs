namespace FlmCluster.Training.Jobs;

/// <summary>
/// Which of the failures of a fanned-out operation to report. When one rank fails, its peers' collectives are
/// aborted and fail too; those echoes say nothing about what went wrong.
/// </summary>
public static class RootCause
{
    /// <summary>
    /// The first failure that is not an echo and that <paramref name="preferred"/> accepts; else the first that
    /// is not an echo; else (only echoes: a rank left by itself) the first.
    /// </summary>
    public static Exception Of(IReadOnlyList<Exception> failures, Func<Exception, bool> isEcho, Func<Exception, bool>? preferred = null)
    {
        if (failures.Count == 0)
            throw new ArgumentException("no failures to choose from", nameof(failures));
        var causes = failures.Where(e => !isEcho(e)).ToList();
        return (preferred is null ? null : causes.FirstOrDefault(preferred)) ?? causes.FirstOrDefault() ?? failures[0];
    }
}
