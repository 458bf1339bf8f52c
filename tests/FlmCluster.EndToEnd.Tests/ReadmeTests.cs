using System.Text;
using FlmCluster.Training.Config;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// Every command line README.md shows runs, in the README's order, on a fresh folder, so that the README
/// cannot drift from the code. Commands run as written, made quick: steps (and step numbers in paths and
/// intervals) divided by 100, the byte tokenizer, a private port range for the local cluster, small sweeps, the
/// twin on the tiny growth schedule.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class ReadmeTests : IDisposable
{
    private readonly Flm _flm = new("flm-readme-");

    public void Dispose() => _flm.Dispose();

    [Fact]
    public void Every_command_line_in_the_readme_runs()
    {
        var commands = ReadmeCommands(File.ReadAllText(Path.Combine(Repository.Root(), "README.md")));
        Assert.True(commands.Count >= 20, $"found only {commands.Count} commands in README.md");
        Directory.CreateDirectory(Path.Combine(_flm.Home, "my-corpus"));
        File.WriteAllText(Path.Combine(_flm.Home, "my-corpus", "notes.txt"), string.Join("\n", Enumerable.Repeat("A house without books is like a body without a soul.", 200)));
        string? lastJob = null;
        var ran = new List<string>();
        foreach (var line in commands)
        {
            var args = Quick(Words(line), lastJob);
            var result = _flm.Run(TimeSpan.FromMinutes(10), [.. args]);
            Assert.True(result.ExitCode == 0, $"README: `{line}`\nran: flm {string.Join(' ', args)}\nexit {result.ExitCode}\n{result.Output}\n{result.Error}");
            if (args[0] == "submit")
                lastJob = result.Output.Split('\n')[0].Trim();
            ran.Add(args[0]);
        }
        // The README's command families all ran.
        foreach (var command in new[] { "train", "checkpoint", "export", "generate", "params", "data", "cluster", "submit", "jobs", "nodes", "status", "cancel", "mup", "predict-loss" })
            Assert.Contains(command, ran);
    }

    /// <summary>
    /// The `flm …` command lines of README.md's shell blocks (one per command: `;` separates them), and the main
    /// `dotnet run … -- train` as the `flm train` it is. The `flm` function the README defines and the test
    /// commands (`dotnet test`, which CI runs) are checked, not run.
    /// </summary>
    private static List<string> ReadmeCommands(string readme)
    {
        var commands = new List<string>();
        var inShell = false;
        foreach (var raw in readme.Split('\n'))
        {
            var line = raw.TrimEnd();
            if (line.StartsWith("```", StringComparison.Ordinal))
            {
                inShell = !inShell && line is "```sh" or "```bash";
                continue;
            }
            if (!inShell || line.Length == 0)
                continue;
            foreach (var part in SplitCommands(StripComment(line)))
            {
                if (part.StartsWith("flm()", StringComparison.Ordinal))
                    Assert.Contains("dotnet run --project client/FlmCluster.Cli --", part);
                else if (part.StartsWith("dotnet run --project client/FlmCluster.Cli -- ", StringComparison.Ordinal))
                    commands.Add("flm " + part["dotnet run --project client/FlmCluster.Cli -- ".Length..]);
                else if (part.StartsWith("dotnet test", StringComparison.Ordinal))
                    Assert.Matches(@"^dotnet test( -- --filter-not-trait Category=EndToEnd)?$", part);
                else if (part.StartsWith("flm ", StringComparison.Ordinal))
                    commands.Add(part);
                else if (part != "}")
                    Assert.Fail($"README.md shows a command this test does not know how to run: `{part}`");
            }
        }
        return commands;
    }

    /// <summary>A command made quick, as a user would shorten it, keeping every option it shows.</summary>
    private List<string> Quick(List<string> words, string? lastJob)
    {
        Assert.Equal("flm", words[0]);
        var args = words.Skip(1).Select(w => w.Replace("$PWD", _flm.Home).Replace("JOB", lastJob ?? "JOB")).ToList();
        for (var i = 0; i < args.Count; i++)
        {
            if (args[i] == "--steps")
                args[i + 1] = Hundredth(args[i + 1]);
            args[i] = System.Text.RegularExpressions.Regex.Replace(args[i], @"step-(\d{8})", m => $"step-{long.Parse(Hundredth(m.Groups[1].Value)):D8}");
            args[i] = System.Text.RegularExpressions.Regex.Replace(args[i], @"^checkpoint\.interval=(\d+)$", m => $"checkpoint.interval={Hundredth(m.Groups[1].Value)}");
        }
        switch (args[0])
        {
            case "train" or "submit":
                args.AddRange(["--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128"]);
                var preset = args.IndexOf("--config") is >= 0 and var c ? Presets.Get(args[c + 1]) : null;
                if (preset is { Stages.Count: > 0 })
                    for (var s = 0; s < preset.Stages.Count; s++)
                        args.AddRange(["--set", $"stages.{s}.steps=2", "--set", $"stages.{s}.mask_ramp_steps=1"]);
                else if (!args.Contains("--steps") && !args.Contains("--resume"))
                    args.AddRange(["--steps", Hundredth($"{(preset ?? Presets.Get("tiny")).Train.Steps}")]);
                break;
            case "cluster" when args[1] == "up":
                args.AddRange(["--base-port", "21411"]);
                break;
            case "sim":
                // The same options on the tiny growth schedule: FLM-101B's takes its 192 simulated GPUs some 20 minutes.
                args[args.IndexOf("--config") + 1] = "tiny-growth";
                args[args.IndexOf("--servers") + 1] = "2";
                args.AddRange(["--gpus-per-server", "4"]);
                if (args.IndexOf("--scale") is >= 0 and var scale)
                    args[scale + 1] = "0.01";
                else
                    args.AddRange(["--scale", "0.01"]);
                if (args.Contains("--processes"))
                    args.AddRange(["--redis", _flm.Redis.ConnectionString, "--base-port", "27311"]);
                break;
            case "mup":
                args.AddRange(["--lrs", "1e-3,1e-2", "--widths", "32", "--steps", "10", "--eval-every", "10", "--eval-batches", "1"]);
                break;
            case "predict-loss":
                args.AddRange(["--widths", "16,32,48", "--holdout", "64", "--steps", "20", "--eval-every", "10", "--eval-batches", "1"]);
                break;
        }
        return args;
    }

    private static string Hundredth(string steps) => $"{Math.Max(1, (long.Parse(steps) + 99) / 100)}";

    /// <summary>The command without a trailing `# comment` (a `#` outside quotes after a space).</summary>
    private static string StripComment(string line)
    {
        var quoted = false;
        for (var i = 0; i < line.Length; i++)
        {
            if (line[i] == '"')
                quoted = !quoted;
            else if (line[i] == '#' && !quoted && i > 0 && char.IsWhiteSpace(line[i - 1]))
                return line[..i];
        }
        return line;
    }

    /// <summary>The commands of a line: split at `;` outside double quotes.</summary>
    private static IEnumerable<string> SplitCommands(string line)
    {
        var quoted = false;
        var start = 0;
        for (var i = 0; i <= line.Length; i++)
        {
            if (i < line.Length && line[i] == '"')
                quoted = !quoted;
            if (i == line.Length || (line[i] == ';' && !quoted))
            {
                var part = line[start..i].Trim();
                if (part.Length > 0)
                    yield return part;
                start = i + 1;
            }
        }
    }

    /// <summary>Shell words: split on spaces, double quotes group.</summary>
    private static List<string> Words(string command)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        var quoted = false;
        var any = false;
        foreach (var ch in command)
        {
            if (ch == '"')
            {
                quoted = !quoted;
                any = true;
            }
            else if (char.IsWhiteSpace(ch) && !quoted)
            {
                if (any)
                    words.Add(word.ToString());
                word.Clear();
                any = false;
            }
            else
            {
                word.Append(ch);
                any = true;
            }
        }
        if (any)
            words.Add(word.ToString());
        return words;
    }
}
