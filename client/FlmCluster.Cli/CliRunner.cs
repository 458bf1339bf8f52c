using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;

namespace FlmCluster.Cli;

/// <summary>
/// Parses and runs a command with the CLI's exit-code contract: 0 success, 1 failure while running,
/// 2 bad input (one "error: …" line, nothing started or written), 69 no cluster reachable (EX_UNAVAILABLE),
/// 77 refused by the cluster: no or wrong credentials, or a viewer's for an operator's command (EX_NOPERM), 130 interrupted.
/// </summary>
public static class CliRunner
{
    public const int Ok = 0;
    public const int Failed = 1;
    public const int BadInput = 2;
    public const int Unavailable = 69;
    public const int NoPermission = 77;
    public const int Interrupted = 130;

    /// <summary>The exit codes as 'flm --help' lists them.</summary>
    public const string ExitCodes =
        "Exit codes: 0 success, 1 failure while running, 2 bad input (one 'error:' line, nothing started or written), " +
        "69 no cluster reachable, 77 refused by the cluster (credentials or role), 130 interrupted.";

    public static int Run(RootCommand root, string[] args)
    {
        AddHelpFooter(root, ExitCodes);
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            var command = parsed.CommandResult.Command;
            var path = command == root ? "flm" : $"flm {command.Name}";
            return Report($"{parsed.Errors[0].Message} (see '{path} --help')", BadInput);
        }
        try
        {
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception ex) when (Unwrap(ex) is FlmUserException or ClusterRequestException or InvalidCheckpointException or InvalidClusterProfileException)
        {
            return Report(Unwrap(ex).Message, BadInput);
        }
        catch (Exception ex) when (Unwrap(ex) is ClusterUnavailableException)
        {
            return Report(Unwrap(ex).Message, Unavailable);
        }
        catch (Exception ex) when (Unwrap(ex) is AccessDeniedException)
        {
            return Report(Unwrap(ex).Message, NoPermission);
        }
        catch (Exception ex) when (Unwrap(ex) is OperationCanceledException)
        {
            Console.Error.WriteLine("interrupted");
            return Interrupted;
        }
        catch (Exception ex)
        {
            var inner = Unwrap(ex);
            Console.Error.WriteLine($"error: {inner.GetType().Name}: {OneLine(inner.Message)}");
            if (Environment.GetEnvironmentVariable("FLM_DEBUG") == "1")
                Console.Error.WriteLine(inner);
            return Failed;
        }
    }

    /// <summary>The contract's one line: a message that spans lines (e.g. from a parser) is joined.</summary>
    private static int Report(string message, int code)
    {
        Console.Error.WriteLine($"error: {OneLine(message)}");
        return code;
    }

    private static string OneLine(string message) =>
        string.Join(' ', message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    private static Exception Unwrap(Exception ex) => ex is AggregateException { InnerExceptions.Count: 1 } agg ? Unwrap(agg.InnerExceptions[0]) : ex;

    /// <summary>Every command's help (the help option is recursive) ends with <paramref name="footer"/>.</summary>
    private static void AddHelpFooter(RootCommand root, string footer)
    {
        var help = root.Options.OfType<HelpOption>().Single();
        if (help.Action is SynchronousCommandLineAction inner and not FooterHelpAction)
            help.Action = new FooterHelpAction(inner, footer);
    }

    private sealed class FooterHelpAction(SynchronousCommandLineAction inner, string footer) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            var code = inner.Invoke(parseResult);
            parseResult.InvocationConfiguration.Output.WriteLine();
            parseResult.InvocationConfiguration.Output.WriteLine(footer);
            return code;
        }
    }
}
