using FlmCluster.Training.Engine;
using Spectre.Console;

namespace FlmCluster.Cli;

/// <summary>
/// Step lines while training (a live status line on a terminal) and a summary table at the end. Step lines go to
/// <paramref name="output"/> (standard output by default; commands whose result is something else send their
/// progress to standard error); the summary goes to standard output.
/// </summary>
public sealed class TrainingProgress(long totalSteps, int logEvery, TextWriter? output = null)
{
    private readonly List<StepSummary> _steps = [];
    private readonly List<string> _stageOf = [];
    private readonly TextWriter _out = output ?? Console.Out;
    private readonly bool _interactive = output is null || output == Console.Out ? !Console.IsOutputRedirected : !Console.IsErrorRedirected;
    private bool _statusShown;

    public void Report(string stage, StepSummary s)
    {
        _steps.Add(s);
        _stageOf.Add(stage);
        var line = Format(s);
        var logged = s.Step == 0 || (s.Step + 1) % logEvery == 0 || s.Step + 1 == totalSteps;
        if (_interactive)
        {
            _out.Write("\r" + line.PadRight(Console.WindowWidth > 0 ? Math.Min(Console.WindowWidth - 1, 140) : 120));
            _statusShown = true;
            if (logged)
            {
                _out.WriteLine();
                _statusShown = false;
            }
        }
        else if (logged)
            _out.WriteLine(line);
    }

    public void Finish()
    {
        if (_statusShown)
            _out.WriteLine();
    }

    private string Format(StepSummary s)
    {
        var recent = _steps.TakeLast(10).ToList();
        var secondsPerStep = recent.Average(x => x.Elapsed.TotalSeconds);
        var eta = TimeSpan.FromSeconds(secondsPerStep * (totalSteps - s.Step - 1));
        var tokensPerSecond = recent.Sum(x => x.Tokens) / recent.Sum(x => x.Elapsed.TotalSeconds);
        var skipped = s.Skipped ? " | SKIPPED (non-finite gradient)" : "";
        return $"step {s.Step + 1,6}/{totalSteps} | loss {s.Loss,8:0.0000} | lr {s.Lr:0.00e+00} | gnorm {s.GradNorm,7:0.000} | {tokensPerSecond,8:N0} tok/s | {secondsPerStep,6:0.000} s/step | ETA {Eta(eta)}{skipped}";
    }

    private static string Eta(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:00}m" : $"{t.Minutes}m{t.Seconds:00}s";

    public void PrintSummary()
    {
        if (_steps.Count == 0)
            return;
        var first = _steps.Take(Math.Min(10, _steps.Count)).Average(s => s.Loss);
        var last = _steps.TakeLast(Math.Min(10, _steps.Count)).Average(s => s.Loss);
        var seconds = _steps.Sum(s => s.Elapsed.TotalSeconds);
        var tokens = _steps.Sum(s => s.Tokens);
        var table = new Table().Border(TableBorder.Rounded).AddColumn("summary").AddColumn(new TableColumn("value").RightAligned());
        table.AddRow("steps run", $"{_steps.Count:N0} (to step {_steps[^1].Step + 1})");
        table.AddRow("tokens", $"{tokens:N0}");
        table.AddRow("wall time", $"{seconds:0.0} s");
        table.AddRow("throughput", $"{tokens / seconds:N0} tokens/s");
        table.AddRow("loss, first 10 steps (mean)", $"{first:0.0000}");
        table.AddRow("loss, last 10 steps (mean)", $"{last:0.0000}");
        table.AddRow("communication share", $"{_steps.Average(s => s.CommFraction):P1}");
        if (_steps.Any(s => s.Skipped))
            table.AddRow("skipped steps", $"{_steps.Count(s => s.Skipped)}");
        AnsiConsole.Write(table);
        var stages = _stageOf.Distinct().ToList();
        if (stages.Count < 2)
            return;
        var perStage = new Table().Border(TableBorder.Rounded);
        foreach (var column in new[] { "stage", "steps", "tokens", "tokens/s", "loss first 5", "loss last 5" })
            perStage.AddColumn(new TableColumn(column).RightAligned());
        foreach (var stage in stages)
        {
            var steps = _steps.Where((_, i) => _stageOf[i] == stage).ToList();
            perStage.AddRow(stage, $"{steps.Count}", $"{steps.Sum(x => x.Tokens):N0}", $"{steps.Sum(x => x.Tokens) / steps.Sum(x => x.Elapsed.TotalSeconds):N0}",
                $"{steps.Take(5).Average(x => x.Loss):0.0000}", $"{steps.TakeLast(5).Average(x => x.Loss):0.0000}");
        }
        AnsiConsole.Write(perStage);
    }
}
