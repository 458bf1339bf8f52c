using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using FlmCluster.Training;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Scaling;
using Spectre.Console;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm mup sweep</c> and <c>flm predict-loss</c>: μP hyper-parameter transfer and loss prediction.</summary>
public static class ScalingCommands
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    private sealed class Common
    {
        public Option<string> Config { get; } = new("--config", "-c") { Description = "Proxy job: preset or JSON config", DefaultValueFactory = _ => "mup-proxy" };
        public Option<string[]> Set { get; } = new("--set") { Description = "Override a config key (repeatable)" };
        public Option<long?> Steps { get; } = new("--steps") { Description = "Steps of every proxy run" };
        public Option<int> EvalEvery { get; } = new("--eval-every") { Description = "Steps between held-out evaluations", DefaultValueFactory = _ => 50 };
        public Option<int> EvalBatches { get; } = new("--eval-batches") { Description = "Held-out batches per evaluation", DefaultValueFactory = _ => 4 };

        public void AddTo(Command c)
        {
            c.Add(Config); c.Add(Set); c.Add(Steps); c.Add(EvalEvery); c.Add(EvalBatches);
        }

        public (JobConfig Job, int EvalEvery, int EvalBatches) Load(ParseResult parse)
        {
            var overrides = new List<string>(parse.GetValue(Set) ?? []);
            if (parse.GetValue(Steps) is { } steps)
                overrides.Add($"train.steps={steps}");
            var job = JobConfigLoader.Load(parse.GetValue(Config)!, overrides);
            if (job.Stages.Count > 0)
                throw new FlmUserException("proxy jobs have no growth stages; use a single-stage config");
            var evalEvery = parse.GetValue(EvalEvery);
            var evalBatches = parse.GetValue(EvalBatches);
            if (evalEvery <= 0 || evalBatches <= 0)
                throw new FlmUserException("--eval-every and --eval-batches must be positive");
            TorchEnvironment.RequireDevice(job.Train.Device);
            return (job, evalEvery, evalBatches);
        }
    }

    public static Command Mup()
    {
        var common = new Common();
        var lrs = new Option<string>("--lrs") { Description = "Learning rates to try, comma-separated", DefaultValueFactory = _ => "3e-4,1e-3,3e-3,1e-2,3e-2" };
        var widths = new Option<string>("--widths") { Description = "Widths to train at (the first is the base proxy)", DefaultValueFactory = _ => "64,128" };
        var output = new Option<string>("--out", "-o") { Description = "Directory for sweep.csv and sweep.json", DefaultValueFactory = _ => "runs/mup-sweep" };
        var sweep = new Command("sweep", "Train μP proxies over a learning-rate grid and report the optimum per width");
        common.AddTo(sweep);
        sweep.Add(lrs);
        sweep.Add(widths);
        sweep.Add(output);
        sweep.SetAction(parse =>
        {
            var (job, evalEvery, evalBatches) = common.Load(parse);
            var lrList = ParseList(parse.GetValue(lrs)!, "--lrs", double.Parse);
            var widthList = ParseList(parse.GetValue(widths)!, "--widths", int.Parse);
            ScalingExperiments.ValidateSweep(job, widthList, lrList);
            var dir = parse.GetValue(output)!;
            OutputLocation.RequireCreatableDirectory(dir, "--out");
            using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
            Console.WriteLine($"μP sweep: {widthList.Count} widths × {lrList.Count} learning rates, {job.Train.Steps} steps each, μP base width {job.Model.Mup.BaseWidth}");
            var result = ScalingExperiments.Sweep(job, data, widthList, lrList, evalEvery, evalBatches, Console.WriteLine);
            var table = new Table().Border(TableBorder.Rounded).AddColumn("lr");
            foreach (var w in widthList) table.AddColumn(new TableColumn($"width {w}").RightAligned());
            foreach (var lr in lrList)
                table.AddRow([lr.ToString("0.0e+00", CultureInfo.InvariantCulture), .. widthList.Select(w =>
                {
                    var run = result.Runs.Single(r => r.Width == w && r.Lr == lr);
                    var mark = result.BestByWidth[w] == run ? " *" : "";
                    return $"{run.FinalLoss:0.0000}{mark}";
                })]);
            AnsiConsole.Write(table);
            foreach (var (w, best) in result.BestByWidth)
                Console.WriteLine($"optimum at width {w}: lr {best.Lr:0.0e+00} (held-out loss {best.FinalLoss:0.0000})");
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "sweep.csv"), "width,lr,parameters,held_out_loss\n" + string.Concat(result.Runs.Select(r =>
                FormattableString.Invariant($"{r.Width},{r.Lr},{r.Parameters},{r.FinalLoss}\n"))));
            File.WriteAllText(Path.Combine(dir, "sweep.json"), JsonSerializer.Serialize(new
            {
                job = job.Name, steps = job.Train.Steps, base_width = job.Model.Mup.BaseWidth,
                runs = result.Runs.Select(r => new { r.Width, r.Lr, r.Parameters, held_out_loss = r.FinalLoss }),
                optimum = result.BestByWidth.Select(kv => new { width = kv.Key, lr = kv.Value.Lr, held_out_loss = kv.Value.FinalLoss }),
            }, Json));
            Console.WriteLine($"wrote {Path.Combine(dir, "sweep.csv")} and sweep.json");
            return CliRunner.Ok;
        });
        return new Command("mup", "μP tools") { sweep };
    }

    public static Command PredictLoss()
    {
        var common = new Common();
        var widths = new Option<string>("--widths") { Description = "Width ladder to fit on, comma-separated", DefaultValueFactory = _ => "32,48,64,96" };
        var holdout = new Option<int>("--holdout") { Description = "Larger width to predict, then train", DefaultValueFactory = _ => 128 };
        var output = new Option<string>("--out", "-o") { Description = "Directory for ladder.csv, prediction.json, prediction.svg", DefaultValueFactory = _ => "runs/predict-loss" };
        var command = new Command("predict-loss", "Fit L(N) = a·N^b + c on a μP width ladder, predict a larger width, train it and compare");
        common.AddTo(command);
        command.Add(widths);
        command.Add(holdout);
        command.Add(output);
        command.SetAction(parse =>
        {
            var (job, evalEvery, evalBatches) = common.Load(parse);
            var ladder = ParseList(parse.GetValue(widths)!, "--widths", int.Parse);
            var target = parse.GetValue(holdout);
            ScalingExperiments.ValidateLadder(job, ladder, target);
            var dir = parse.GetValue(output)!;
            OutputLocation.RequireCreatableDirectory(dir, "--out");
            using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
            Console.WriteLine($"loss prediction: ladder {string.Join(", ", ladder)} → held-out width {target}, {job.Train.Steps} steps each, identical hyper-parameters under μP (base width {job.Model.Mup.BaseWidth})");
            var p = ScalingExperiments.PredictLoss(job, data, ladder, target, evalEvery, evalBatches, Console.WriteLine);
            Console.WriteLine($"held-out width {target} ({p.Holdout.Parameters:N0} parameters): predicted {p.Predicted:0.0000}, actual {p.Actual:0.0000}, error {p.ErrorPercent:+0.00;-0.00}%");
            Write(dir, job, p);
            return CliRunner.Ok;
        });
        return command;
    }

    private static void Write(string dir, JobConfig job, LossPrediction p)
    {
        Directory.CreateDirectory(dir);
        var csv = new StringBuilder("width,parameters,step,held_out_loss,role\n");
        foreach (var (run, role) in p.Ladder.Select(r => (r, "ladder")).Append((p.Holdout, "holdout")))
            foreach (var (step, loss) in run.EvalCurve)
                csv.Append(FormattableString.Invariant($"{run.Width},{run.Parameters},{step},{loss},{role}\n"));
        File.WriteAllText(Path.Combine(dir, "ladder.csv"), csv.ToString());
        File.WriteAllText(Path.Combine(dir, "prediction.json"), JsonSerializer.Serialize(new
        {
            job = job.Name,
            law = "L(N) = a * N^b + c, N = non-embedding parameters",
            fit = new { a = p.Fit.A, b = p.Fit.B, c = p.Fit.C, rmse = p.Fit.Rmse },
            ladder = p.Ladder.Select(r => new { r.Width, r.Parameters, held_out_loss = r.FinalLoss }),
            holdout = new { p.Holdout.Width, p.Holdout.Parameters, predicted = p.Predicted, actual = p.Actual, error_percent = p.ErrorPercent },
            // The predicted held-out loss at every evaluation step: what a dashboard draws beside the real curve.
            predicted_loss_curve = p.PredictedCurve.Select(x => new { x.Step, loss = x.Predicted }),
            actual_loss_curve = p.Holdout.EvalCurve.Select(x => new { x.Step, loss = x.Loss }),
        }, Json));
        var fitLine = Enumerable.Range(0, 50).Select(i =>
        {
            var n = Math.Exp(Math.Log(p.Ladder[0].Parameters) + (Math.Log(p.Holdout.Parameters * 1.2) - Math.Log(p.Ladder[0].Parameters)) * i / 49);
            return (n, p.Fit.Predict(n));
        });
        var svg = new SvgPlot($"Loss prediction: L(N) = {p.Fit.A:0.##e0}·N^{p.Fit.B:0.###} + {p.Fit.C:0.###}", "non-embedding parameters N", "held-out loss", logX: true)
            .Add("fit on the ladder", "#1f77b4", fitLine, line: true, marker: false)
            .Add("ladder", "#2ca02c", p.Ladder.Select(r => ((double)r.Parameters, r.FinalLoss)), line: false, marker: true)
            .Add($"predicted ({p.Predicted:0.000})", "#ff7f0e", [((double)p.Holdout.Parameters, p.Predicted)], line: false, marker: true)
            .Add($"actual ({p.Actual:0.000}, {p.ErrorPercent:+0.0;-0.0}%)", "#d62728", [((double)p.Holdout.Parameters, p.Actual)], line: false, marker: true);
        File.WriteAllText(Path.Combine(dir, "prediction.svg"), svg.Render());
        Console.WriteLine($"wrote {Path.Combine(dir, "ladder.csv")}, prediction.json and prediction.svg");
    }

    private static List<T> ParseList<T>(string text, string option, Func<string, IFormatProvider, T> parse)
    {
        try
        {
            var values = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(x => parse(x, CultureInfo.InvariantCulture)).ToList();
            return values.Count > 0 ? values : throw new FlmUserException($"{option} is empty");
        }
        catch (Exception ex) when (ex is FormatException or OverflowException)
        {
            throw new FlmUserException($"{option} '{text}' is not a comma-separated list of numbers in range");
        }
    }
}
