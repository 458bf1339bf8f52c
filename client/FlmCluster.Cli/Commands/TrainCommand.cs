using System.CommandLine;
using System.Diagnostics;
using FlmCluster.Client;
using FlmCluster.Silo;
using FlmCluster.Training;
using FlmCluster.Training.Data;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm train</c>: runs a job in this process (every rank a thread) with live progress.</summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var job = new JobOptions();
        var output = new Option<string?>("--out", "-o") { Description = "Checkpoint folder (sets checkpoint.dir): step-NNNNNNNN checkpoints every checkpoint.interval steps and when the job ends" };
        var resume = new Option<string?>("--resume") { Description = "Continue from a checkpoint, or from the newest valid one in a folder, in any layout (its job config is the base)" };
        var engine = new Option<string>("--engine")
        {
            Description = "cluster: an embedded local Orleans cluster (silos in this process), the same job semantics as a real cluster; local: every rank as a thread of one engine",
            DefaultValueFactory = _ => "cluster",
        };
        engine.AcceptOnlyFromAmong("cluster", "local");
        var command = new Command("train", "Train a model in this process: on an embedded local cluster (default) or on the in-process engine");
        job.AddTo(command);
        command.Add(output);
        command.Add(resume);
        command.Add(engine);
        command.SetAction(async parse =>
        {
            var (config, from) = Load(job, parse, parse.GetValue(output), parse.GetValue(resume));
            var overwrite = parse.GetValue(job.Overwrite);
            ClusterAccess.CheckCheckpointFolder(config, from, overwrite);
            return parse.GetValue(engine) == "local" ? Run(config, from, overwrite) : await RunOnEmbeddedCluster(config, from, overwrite);
        });
        return command;
    }

    private static string Describe(ModelConfig m) => $"{m.Layers} layers × {m.Hidden} ({m.Heads} heads of {m.HeadDim}, FFN {m.FfnSize})";

    private static void PrintTransition(TransitionReport t)
    {
        Console.WriteLine($"── growth {t.FromStage} → {t.ToStage} at step {t.Step}: {Describe(t.Before)} → {Describe(t.After)}, {t.Before.ParameterCount:N0} → {t.After.ParameterCount:N0} parameters, layout {t.LayoutBefore} → {t.LayoutAfter}");
        Console.WriteLine($"   loss of the next batch: {t.LossBefore:0.000000} before, {t.LossAfter:0.000000} after (difference {t.LossAfter - t.LossBefore:+0.0e+00;-0.0e+00;0}); masks ramp over {t.RampSteps} steps; {t.Elapsed.TotalSeconds:0.0} s");
    }

    /// <summary>
    /// The job to resume and the checkpoint it resumes from: the checkpoint's config is the base (--config may
    /// not be given), changed by --set, --steps and --layout; the result must still train the checkpoint's
    /// model and have steps left. Checked before anything starts.
    /// </summary>
    public static (JobConfig Job, CheckpointReader Checkpoint) LoadResume(string path, string option, ParseResult parse, JobOptions options, string? checkpointDir = null)
    {
        if (parse.GetResult(options.Config) is { Implicit: false })
            throw new FlmUserException("resuming takes the job config from the checkpoint; change it with --set, --steps or --layout instead of --config");
        try
        {
            var reader = CheckpointStore.Resolve(path, (dir, why) => Console.Error.WriteLine($"warning: skipping {dir}: {why}"));
            var job = options.Load(parse, reader.Manifest.JobJson, checkpointDir);
            new JobProgress(ResolvedJob.Resolve(job)).CheckResume(reader);
            return (job, reader);
        }
        catch (InvalidCheckpointException ex)
        {
            throw new FlmUserException($"{option}: {ex.Message}");
        }
    }

    /// <summary>The job and the checkpoint it resumes from, with everything that can be checked before training checked.</summary>
    private static (JobConfig Job, CheckpointReader? Resume) Load(JobOptions options, ParseResult parse, string? output, string? resumePath)
    {
        if (output is not null)
            OutputLocation.RequireCreatableDirectory(output, "--out");
        JobConfig job;
        CheckpointReader? resume = null;
        if (resumePath is not null)
            (job, resume) = LoadResume(resumePath, "--resume", parse, options, output);
        else
            job = options.Load(parse, checkpointDir: output);
        if (output is null && !string.IsNullOrWhiteSpace(job.Checkpoint.Dir))
            OutputLocation.RequireCreatableDirectory(job.Checkpoint.Dir, "checkpoint.dir");
        TorchEnvironment.RequireDevice(job.Train.Device);
        return (job, resume);
    }

    /// <summary>
    /// The default: start a local cluster inside this process (two silos when the layout splits evenly), submit
    /// the job to it as a client, follow it to the end and stop the cluster.
    /// </summary>
    private static async Task<int> RunOnEmbeddedCluster(JobConfig job, CheckpointReader? resume, bool overwrite)
    {
        Corpus.ExpandPaths(job.Data.Paths); // missing data is bad input, before anything starts
        // Growth stages hand the model over through a checkpoint; without a checkpoint folder, a temporary one.
        string? handover = null;
        if (GrowthSchedule.ClusterProblem(job) is not null)
        {
            handover = Directory.CreateTempSubdirectory("flm-growth-").FullName;
            job = job with { Checkpoint = job.Checkpoint with { Dir = handover } };
        }
        try
        {
            return await RunOnEmbeddedCluster(job, resume, overwrite, keepsCheckpoints: handover is null);
        }
        finally
        {
            if (handover is not null)
                Directory.Delete(handover, recursive: true);
        }
    }

    private static async Task<int> RunOnEmbeddedCluster(JobConfig job, CheckpointReader? resume, bool overwrite, bool keepsCheckpoints)
    {
        var stages = GrowthSchedule.Resolve(job);
        var layout = GrowthSchedule.WidestLayout(job);
        var world = layout.WorldSize;
        var nodes = world >= 2 && world % 2 == 0 && stages.All(s => world / 2 % s.Job.Layout.Tp == 0) ? 2 : 1;
        PrintJob(job, stages);
        var m = stages[0].Job.Model;
        if (stages.Count == 1)
            Console.WriteLine($"layout {layout}, global batch {job.Train.GlobalBatch} × {m.SeqLen} tokens, {job.Train.Device} {job.Train.Precision}");
        var watch = Stopwatch.StartNew();
        await using var cluster = await LocalCluster.StartAsync(nodes, world / nodes, controlNode: false, torchThreads: job.Train.Threads);
        await using var client = await FlmClusterClient.ConnectAsync(new ClusterProfile { GatewayPorts = cluster.GatewayPorts, ClusterId = cluster.ClusterId });
        Console.WriteLine($"embedded cluster: {nodes} silo(s) × {world / nodes} device(s) in this process, up in {watch.Elapsed.TotalSeconds:0.0} s");
        if (cluster.DashboardUrl is { } dashboard)
            Console.WriteLine($"dashboard: {dashboard} (live while the job runs)");
        if (resume is { Manifest: var m0 })
            Console.WriteLine($"resumed from {resume.Directory} at step {m0.Step} (saved under dp={m0.Layout.Dp},tp={m0.Layout.Tp},pp={m0.Layout.Pp})");
        var id = await client.Submit(ClusterAccess.Submission(job, priority: 0, resume?.Directory, overwrite));
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
            _ = client.Cancel(id);
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var code = await JobCommands.Follow(client, id, new TrainingProgress(job.Train.Steps, job.Train.LogEvery));
            var final = await client.Status(id);
            if (keepsCheckpoints && final.LastCheckpointStep is { } saved)
                Console.WriteLine($"saved model and optimizer state at step {saved} to {CheckpointStore.DirectoryFor(final.CheckpointDir!, saved)}");
            return cancel.IsCancellationRequested ? CliRunner.Interrupted : code;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    /// <summary>The job's model, and each growth stage when it has several.</summary>
    private static void PrintJob(JobConfig job, IReadOnlyList<ResolvedStage> stages)
    {
        var m = stages[0].Job.Model;
        Console.WriteLine($"job {job.Name}: {Describe(m)}, {m.ParameterCount:N0} parameters, seq {m.SeqLen}, tokenizer {job.Tokenizer}");
        if (stages.Count > 1)
            foreach (var stage in stages)
                Console.WriteLine($"  stage {stage.Name}: {Describe(stage.Job.Model)}, {stage.Job.Model.ParameterCount:N0} parameters, {stage.Job.Train.Steps} steps, peak LR {stage.Job.Optimizer.Lr:0.0e+00}, layout {ParallelLayout.FromConfig(stage.Job.Layout)}");
    }

    private static int Run(JobConfig job, CheckpointReader? resume, bool overwrite)
    {
        var loadWatch = Stopwatch.StartNew();
        using var run = TrainingRun.Create(job, log: message => Console.WriteLine($"  {message}"));
        run.OverwriteCheckpoints = overwrite;
        PrintJob(job, run.Stages);
        var m = run.Stage.Job.Model;
        var layout = run.Engine.Layout;
        Console.WriteLine($"layout {layout} ({layout.WorldSize} rank{(layout.WorldSize == 1 ? "" : "s")} in this process), global batch {run.Stage.Job.Train.GlobalBatch} × {m.SeqLen} tokens, {job.Train.Device} {run.Engine.Ranks[0].Model.DType}");
        Console.WriteLine($"data: {run.Data.DocumentCount:N0} documents, {run.Data.TokenCount:N0} tokens (ready in {loadWatch.Elapsed.TotalSeconds:0.0} s)");
        if (resume is not null)
        {
            run.Restore(resume);
            Console.WriteLine($"resumed from {resume.Directory} at step {run.NextStep} (stage {run.Stage.Name}, layout {run.Engine.Layout}), run {run.Run.RunId}");
        }
        if (!string.IsNullOrWhiteSpace(job.Checkpoint.Dir))
            foreach (var removed in run.ClaimCheckpointFolder())
                Console.WriteLine($"removed {removed} (another run's checkpoint; --overwrite)");

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
                progress.Report(run.Stage.Name, run.RunStepAndCheckpoint());
            }
            progress.Finish();
            if (!string.IsNullOrWhiteSpace(job.Checkpoint.Dir))
            {
                if (run.Checkpoints.LastCommitted?.Step != run.NextStep)
                    run.SaveCheckpoint();
                run.Checkpoints.WaitForPending();
                Console.WriteLine($"saved model and optimizer state at step {run.NextStep} to {run.Checkpoints.LastCommitted!.Directory}");
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
