using System.CommandLine;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;
using Spectre.Console;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm params</c>: parameter count and per-GPU memory of a preset under a layout.</summary>
public static class ParamsCommand
{
    public static Command Create()
    {
        var preset = new Option<string>("--preset") { Description = "Preset or JSON job config", DefaultValueFactory = _ => "101b" };
        var layoutOption = new Option<string?>("--layout") { Description = "Layout, e.g. dp=12,tp=4,pp=4 (default: the preset's)" };
        var precision = new Option<string?>("--precision") { Description = "Parameter precision: bf16, fp32 or fp64 (default: the preset's)" };
        var command = new Command("params", "Parameter count and memory per GPU (weights, gradients, optimizer state with and without the distributed optimizer)")
        {
            preset, layoutOption, precision,
        };
        command.SetAction(parse =>
        {
            var job = JobConfigLoader.Load(parse.GetValue(preset)!);
            var layoutConfig = parse.GetValue(layoutOption) is { } text ? ParallelLayout.Parse(text, new LayoutConfig { MicroBatches = 1 }) : job.Layout with { MicroBatches = 1 };
            var layout = ParallelLayout.FromConfig(layoutConfig);
            var model = job.Model;
            layout.Validate(model, layout.Dp);
            var dtype = parse.GetValue(precision) ?? job.Train.Precision;
            if (!JobValidator.Precisions.Contains(dtype))
                throw new Training.FlmUserException($"--precision '{dtype}' is not one of {string.Join(", ", JobValidator.Precisions)}");

            Console.WriteLine($"{job.Name}: {model.Layers} layers, hidden {model.Hidden}, {model.Heads} heads of {model.HeadDim}, FFN {model.FfnSize}, vocabulary {model.VocabSize:N0} padded to {model.PaddedVocab:N0}");
            Console.WriteLine($"parameters: {model.ParameterCount:N0} ({model.ParameterCount / 1e9:0.00}B, input and output embedding tied)");
            Console.WriteLine($"  per block {model.BlockParameters:N0} × {model.Layers} = {model.BlockParameters * model.Layers:N0}; embedding {(long)model.PaddedVocab * model.Hidden:N0}; final LayerNorm {2 * model.Hidden:N0}");
            Console.WriteLine($"layout {layout with { MicroBatches = 1 }} = {layout.WorldSize} GPUs, precision {dtype} (activations not included)");
            var table = new Table().Border(TableBorder.Rounded);
            foreach (var column in new[] { "pipeline stage", "params / GPU", "weights", "gradients", "optimizer (replicated)", "optimizer (distributed)", "total (replicated)", "total (distributed)" })
                table.AddColumn(new TableColumn(column).RightAligned());
            foreach (var stage in Enumerable.Range(0, layout.Pp))
            {
                var r = MemoryPlanner.ForStage(model, layout, stage, dtype, job.Train.Device);
                table.AddRow(stage.ToString(), $"{r.Parameters:N0}", Gib(r.WeightBytes), Gib(r.GradientBytes), Gib(r.OptimizerBytesReplicated),
                    Gib(r.OptimizerBytesDistributed), Gib(r.TotalReplicated), Gib(r.TotalDistributed));
            }
            AnsiConsole.Write(table);
            return CliRunner.Ok;
        });
        return command;
    }

    private static string Gib(long bytes) => $"{bytes / (double)(1L << 30):0.00} GiB";
}
