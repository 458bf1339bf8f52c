using System.CommandLine;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Engine;
using Spectre.Console;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm submit</c>, <c>flm jobs</c>, <c>flm status</c>, <c>flm cancel</c>: jobs on a running cluster.</summary>
public static class JobCommands
{
    public static Command Submit()
    {
        var job = new JobOptions();
        var priority = new Option<int>("--priority") { Description = "Higher runs first when GPUs are scarce", DefaultValueFactory = _ => 0 };
        var watch = new Option<bool>("--watch") { Description = "Follow the job until it ends" };
        var resumeFrom = new Option<string?>("--resume-from") { Description = "Continue from a checkpoint (or the newest valid one of a folder), in any layout; its job is the base config" };
        var command = new Command("submit", "Submit a job to the configured cluster (same job arguments as 'flm train'); prints the job id");
        job.AddTo(command);
        command.Add(priority);
        command.Add(watch);
        command.Add(resumeFrom);
        command.SetAction(async parse =>
        {
            var from = parse.GetValue(resumeFrom);
            var (config, checkpoint) = from is null ? (job.Load(parse), null) : TrainCommand.LoadResume(from, "--resume-from", parse, job);
            var overwrite = parse.GetValue(job.Overwrite);
            ClusterAccess.CheckCheckpointFolder(config, checkpoint, overwrite);
            var submission = ClusterAccess.Submission(config, parse.GetValue(priority), checkpoint?.Directory, overwrite);
            await using var client = await ClusterAccess.Connect();
            var id = await client.Submit(submission);
            Console.WriteLine(id);
            return parse.GetValue(watch) ? await Follow(client, id) : CliRunner.Ok;
        });
        return command;
    }

    public static Command Jobs()
    {
        var command = new Command("jobs", "List the cluster's jobs");
        command.SetAction(async _ =>
        {
            await using var client = await ClusterAccess.Connect();
            var jobs = await client.Jobs();
            var table = new Table().Border(TableBorder.Rounded);
            foreach (var column in new[] { "job", "name", "state", "step", "loss", "layout", "priority", "submitted (UTC)" })
                table.AddColumn(column);
            foreach (var j in jobs)
                table.AddRow(j.JobId, j.Name, Text.Of(j.State), $"{j.Step}/{j.TotalSteps}", j.Recent.Count > 0 ? $"{j.Recent[^1].Loss:0.0000}" : "", j.Layout, $"{j.Priority}", $"{j.SubmittedAt:yyyy-MM-dd HH:mm:ss}");
            AnsiConsole.Write(table);
            return CliRunner.Ok;
        });
        return command;
    }

    public static Command Status()
    {
        var jobId = new Argument<string>("job") { Description = "Job id (from 'flm submit' or 'flm jobs')" };
        var watch = new Option<bool>("--watch") { Description = "Follow the job until it ends; exit code 0 only if it completed" };
        var command = new Command("status", "Progress of a job: step, loss, tokens/s, stage, workers per node") { jobId, watch };
        command.SetAction(async parse =>
        {
            var id = parse.GetValue(jobId)!;
            await using var client = await ClusterAccess.Connect();
            var status = await client.Status(id);
            Print(status);
            return parse.GetValue(watch) ? await Follow(client, id) : CliRunner.Ok;
        });
        return command;
    }

    public static Command Cancel()
    {
        var jobId = new Argument<string>("job") { Description = "Job id" };
        var command = new Command("cancel", "Cancel a queued or running job and free its GPUs") { jobId };
        command.SetAction(async parse =>
        {
            var id = parse.GetValue(jobId)!;
            await using var client = await ClusterAccess.Connect();
            await client.Cancel(id);
            Console.WriteLine($"cancelled {id}");
            return CliRunner.Ok;
        });
        return command;
    }

    private static void Print(JobStatus s)
    {
        var last = s.Recent.Count > 0 ? s.Recent[^1] : null;
        Console.WriteLine($"{s.JobId} ({s.Name}): {Text.Of(s.State)}, step {s.Step}/{s.TotalSteps}, stage {s.Stage}, layout {s.Layout}" +
            (last is null ? "" : $", loss {last.Loss:0.0000}, {last.TokensPerSecond:N0} tokens/s"));
        if (s.Coordinator is not null)
            Console.WriteLine($"  coordinator on silo {s.Coordinator}");
        foreach (var node in s.Workers.Select((w, rank) => (w, rank)).GroupBy(x => x.w[..x.w.IndexOf('/')]))
            Console.WriteLine($"  {node.Key}: {string.Join(", ", node.Select(x => $"rank {x.rank} on {x.w[(x.w.IndexOf('/') + 1)..]}"))}");
        if (s.CheckpointDir is not null || s.LastReplicaStep is not null)
            Console.WriteLine($"  recovery points: checkpoint on disk {(s.LastCheckpointStep is { } c ? $"at step {c}" : "none yet")}" +
                (s.CheckpointDir is null ? "" : $" ({s.CheckpointDir})") +
                (s.LastReplicaStep is { } r ? $", in-memory replicas at step {r}" : ""));
        if (s.Time is { } t)
            Console.WriteLine($"  time: ETTR {t.Ettr:0.000}; productive {t.Productive:0.0} s, redone {t.Redone:0.0} s, checkpoint stall {t.CheckpointStall:0.0} s, " +
                $"growth {t.Growth:0.0} s, recovery {t.Recovery.Total:0.0} s ({t.Recovery.Count}), startup {t.Startup:0.0} s, queued {t.Queued:0.0} s, " +
                $"paused {t.Paused:0.0} s, overhead {t.Overhead:0.0} s");
        if (s.Error is not null)
            Console.WriteLine($"  error: {s.Error}");
    }

    /// <summary>Follows a job to its end with the training progress display; 0 when it completed.</summary>
    public static async Task<int> Follow(FlmCluster.Client.FlmClusterClient client, string id, TrainingProgress? progress = null)
    {
        var total = (await client.Status(id)).TotalSteps;
        progress ??= new TrainingProgress(total, Math.Max(1, (int)Math.Min(10, total / 10 + 1)));
        var final = await ClusterAccess.Watch(client, id,
            p => progress.Report(p.Stage, ToSummary(p)),
            e => { if (e.Kind is not "allocated") Console.WriteLine($"  [{e.At:HH:mm:ss}] {e.Kind}: {e.Message}"); });
        progress.Finish();
        Console.WriteLine($"{id}: {Text.Of(final.State)} at step {final.Step}/{final.TotalSteps}" + (final.Error is null ? "" : $": {final.Error}"));
        progress.PrintSummary();
        return final.State == JobPhase.Completed ? CliRunner.Ok : CliRunner.Failed;
    }

    public static StepSummary ToSummary(StepPoint p) =>
        new(p.Step, p.Loss, p.Tokens, p.Lr, p.GradNorm, p.Skipped, TimeSpan.FromMilliseconds(p.StepMs), p.TokensPerSecond, p.CommFraction, 0);
}
