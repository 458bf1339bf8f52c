using System.CommandLine;
using System.Diagnostics;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm train</c>: runs a job in this process (every rank a thread) with live progress.</summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var job = new JobOptions();
        var output = new Option<string?>("--out", "-o") { Description = "Directory for the trained model (config, weights, optimizer state)" };
        var resume = new Option<string?>("--resume") { Description = "Continue from a directory written by --out (its config is the base)" };
        var command = new Command("train", "Train a model in this process (every rank of the layout runs as a thread)");
        job.AddTo(command);
        command.Add(output);
        command.Add(resume);
        command.SetAction(parse => Run(job, parse, parse.GetValue(output), parse.GetValue(resume)));
        return command;
    }

    private static int Run(JobOptions options, ParseResult parse, string? output, string? resume)
    {
        if (output is not null && File.Exists(output))
            throw new FlmUserException($"--out '{output}' is a file; give a directory");
        JobConfig job;
        if (resume is not null)
        {
            if (!LocalCheckpoint.IsCheckpoint(resume))
                throw new FlmUserException($"--resume '{resume}' is not a model directory written by 'flm train --out'");
            if (parse.GetResult(options.Config) is { Implicit: false })
                throw new FlmUserException("--resume takes the job config from the checkpoint; change it with --set, --steps or --layout instead of --config");
            var saved = Path.Combine(resume, LocalCheckpoint.ConfigFile);
            job = options.Load(parse, saved);
        }
        else
            job = options.Load(parse);

        var loadWatch = Stopwatch.StartNew();
        using var engine = LocalEngine.Create(job);
        var layout = ParallelLayout.FromConfig(job.Layout);
        var m = job.Model;
        Console.WriteLine($"job {job.Name}: {m.Layers} layers × {m.Hidden} ({m.Heads} heads, FFN {m.FfnSize}), {m.ParameterCount:N0} parameters, seq {m.SeqLen}, tokenizer {job.Tokenizer}");
        Console.WriteLine($"layout {layout} ({layout.WorldSize} rank{(layout.WorldSize == 1 ? "" : "s")} in this process), global batch {job.Train.GlobalBatch} × {m.SeqLen} tokens, {job.Train.Device} {engine.Ranks[0].Model.DType}");

        Console.WriteLine($"data: {engine.Data.DocumentCount:N0} documents, {engine.Data.TokenCount:N0} tokens (ready in {loadWatch.Elapsed.TotalSeconds:0.0} s)");
        if (resume is not null)
        {
            LocalCheckpoint.Restore(resume, engine);
            Console.WriteLine($"resumed from {resume} at step {engine.NextStep}");
        }

        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var progress = new TrainingProgress(job.Train.Steps, job.Train.LogEvery);
            while (engine.NextStep < job.Train.Steps && !cancel.IsCancellationRequested)
                progress.Report(engine.RunStep());
            progress.Finish();
            if (output is not null)
            {
                LocalCheckpoint.Save(output, engine);
                Console.WriteLine($"saved model and optimizer state at step {engine.NextStep} to {output}");
            }
            progress.PrintSummary();
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
        return cancel.IsCancellationRequested ? CliRunner.Interrupted : CliRunner.Ok;
    }
}
