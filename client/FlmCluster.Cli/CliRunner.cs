using System.CommandLine;
using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training;

namespace FlmCluster.Cli;

/// <summary>
/// Parses and runs a command with the CLI's exit-code contract: 0 success, 1 failure while running,
/// 2 bad input (one "error: …" line, nothing started or written), 130 interrupted.
/// </summary>
public static class CliRunner
{
    public const int Ok = 0;
    public const int Failed = 1;
    public const int BadInput = 2;
    public const int Interrupted = 130;

    public static int Run(RootCommand root, string[] args)
    {
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            var command = parsed.CommandResult.Command;
            var path = command == root ? "flm" : $"flm {command.Name}";
            Console.Error.WriteLine($"error: {parsed.Errors[0].Message} (see '{path} --help')");
            return BadInput;
        }
        try
        {
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception ex) when (Unwrap(ex) is FlmUserException or ClusterRequestException or ClusterUnavailableException or Training.Checkpoint.InvalidCheckpointException)
        {
            Console.Error.WriteLine($"error: {Unwrap(ex).Message}");
            return BadInput;
        }
        catch (Exception ex) when (Unwrap(ex) is OperationCanceledException)
        {
            Console.Error.WriteLine("interrupted");
            return Interrupted;
        }
        catch (Exception ex)
        {
            var inner = Unwrap(ex);
            Console.Error.WriteLine($"error: {inner.GetType().Name}: {inner.Message}");
            if (Environment.GetEnvironmentVariable("FLM_DEBUG") == "1")
                Console.Error.WriteLine(inner);
            return Failed;
        }
    }

    private static Exception Unwrap(Exception ex) => ex is AggregateException { InnerExceptions.Count: 1 } agg ? Unwrap(agg.InnerExceptions[0]) : ex;
}
