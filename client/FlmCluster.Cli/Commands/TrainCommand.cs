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

    private static string Describe(ModelConfig m) => $"{m.Layers} layers × {m.Hidden} ({m.Heads} heads of {m.HeadDim}, FFN {m.FfnSize})";

    private static void PrintTransition(TransitionReport t)
    {
        Console.WriteLine($"── growth {t.FromStage} → {t.ToStage} at step {t.Step}: {Describe(t.Before)} → {Describe(t.After)}, {t.Before.ParameterCount:N0} → {t.After.ParameterCount:N0} parameters, layout {t.LayoutBefore} → {t.LayoutAfter}");
        Console.WriteLine($"   loss of the next batch: {t.LossBefore:0.000000} before, {t.LossAfter:0.000000} after (difference {t.LossAfter - t.LossBefore:+0.0e+00;-0.0e+00;0}); masks ramp over {t.RampSteps} steps; {t.Elapsed.TotalSeconds:0.0} s");
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
        using var run = TrainingRun.Create(job);
        var m = run.Stage.Job.Model;
        Console.WriteLine($"job {job.Name}: {Describe(m)}, {m.ParameterCount:N0} parameters, seq {m.SeqLen}, tokenizer {job.Tokenizer}");
        if (run.Stages.Count > 1)
            foreach (var stage in run.Stages)
                Console.WriteLine($"  stage {stage.Name}: {Describe(stage.Job.Model)}, {stage.Job.Model.ParameterCount:N0} parameters, {stage.Job.Train.Steps} steps, peak LR {stage.Job.Optimizer.Lr:0.0e+00}, layout {ParallelLayout.FromConfig(stage.Job.Layout)}");
        var layout = run.Engine.Layout;
        Console.WriteLine($"layout {layout} ({layout.WorldSize} rank{(layout.WorldSize == 1 ? "" : "s")} in this process), global batch {run.Stage.Job.Train.GlobalBatch} × {m.SeqLen} tokens, {job.Train.Device} {run.Engine.Ranks[0].Model.DType}");
        Console.WriteLine($"data: {run.Data.DocumentCount:N0} documents, {run.Data.TokenCount:N0} tokens (ready in {loadWatch.Elapsed.TotalSeconds:0.0} s)");
        if (resume is not null)
        {
            run.Restore(resume);
            Console.WriteLine($"resumed from {resume} at step {run.NextStep} (stage {run.Stage.Name})");
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
            var progress = new TrainingProgress(run.TotalSteps, job.Train.LogEvery);
            while (!run.Finished && !cancel.IsCancellationRequested)
            {
                if (run.AtStageEnd)
                {
                    progress.Finish();
                    PrintTransition(run.Grow());
                    continue;
                }
                progress.Report(run.Stage.Name, run.RunStep());
            }
            progress.Finish();
            if (output is not null)
            {
                LocalCheckpoint.Save(output, run);
                Console.WriteLine($"saved model and optimizer state at step {run.NextStep} to {output}");
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
