using System.CommandLine;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Engine;
using Spectre.Console;

namespace FlmCluster.Cli.Commands;

/// <summary>
/// <c>flm submit</c>, <c>flm jobs</c>, <c>flm status</c>, <c>flm logs</c>, <c>flm pause</c>, <c>flm resume</c>,
/// <c>flm cancel</c>: jobs on a running cluster. Results go to standard output (--json: one JSON document, field
/// names in docs/operations.md); progress while following a job goes to standard error.
/// </summary>
public static class JobCommands
{
    private static Option<bool> JsonOption() => new("--json") { Description = "Print JSON (stable field names, see docs/operations.md) instead of a table" };

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
            return parse.GetValue(watch) ? await Follow(client, id, progressOut: Console.Error) : CliRunner.Ok;
        });
        return command;
    }

    public static Command Jobs()
    {
        var json = JsonOption();
        var command = new Command("jobs", "List the cluster's jobs") { json };
        command.SetAction(async parse =>
        {
            await using var client = await ClusterAccess.Connect();
            var jobs = await client.Jobs();
            if (parse.GetValue(json))
            {
                JsonOutput.Print(jobs.Select(JsonOutput.Of).ToList());
                return CliRunner.Ok;
            }
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
        var watch = new Option<bool>("--watch") { Description = "Follow the job until it ends (progress on standard error); exit code 0 only if it completed" };
        var json = JsonOption();
        var command = new Command("status", "Progress of a job: step, loss, tokens/s, stage, workers per node") { jobId, watch, json };
        command.SetAction(async parse =>
        {
            var id = parse.GetValue(jobId)!;
            await using var client = await ClusterAccess.Connect();
            if (parse.GetValue(json))
            {
                var final = parse.GetValue(watch) ? await ClusterAccess.Watch(client, id, _ => { }) : await client.Status(id);
                JsonOutput.Print(JsonOutput.StatusOf(final));
                return final.State == JobPhase.Completed || !parse.GetValue(watch) ? CliRunner.Ok : CliRunner.Failed;
            }
            Print(await client.Status(id));
            return parse.GetValue(watch) ? await Follow(client, id, progressOut: Console.Error) : CliRunner.Ok;
        });
        return command;
    }

    public static Command Logs()
    {
        var jobId = new Argument<string>("job") { Description = "Job id" };
        var follow = new Option<bool>("--follow", "-f") { Description = "Keep printing new steps and events until the job ends; exit code 0 only if it completed" };
        var since = new Option<long>("--since") { Description = "Start at this step (events: all of them)", DefaultValueFactory = _ => 0 };
        var json = new Option<bool>("--json") { Description = "One JSON record per line (type step or event; field names in docs/operations.md)" };
        var command = new Command("logs", "A job's durable history: every committed step's metrics and every event, from its start") { jobId, follow, since, json };
        command.SetAction(async parse =>
        {
            var id = parse.GetValue(jobId)!;
            var from = parse.GetValue(since);
            if (from < 0)
                throw new FlmCluster.Training.FlmUserException($"--since {from}: a step number is 0 or more");
            var asJson = parse.GetValue(json);
            await using var client = await ClusterAccess.Connect();
            var final = await ClusterAccess.Watch(client, id,
                step => { if (asJson) JsonOutput.PrintLine(JsonOutput.StepOf(step)); else Console.WriteLine(LogLine(step)); },
                (e, index) => { if (asJson) JsonOutput.PrintLine(JsonOutput.EventOf(e, index)); else Console.WriteLine(EventLine(e)); },
                sinceStep: from, untilEnd: parse.GetValue(follow));
            return !parse.GetValue(follow) || final.State == JobPhase.Completed ? CliRunner.Ok : CliRunner.Failed;
        });
        return command;
    }

    public static Command Pause() =>
        JobAction("pause", "Pause a running job before its next step (it keeps its GPUs); 'flm resume' continues it", "paused", (client, id) => client.Pause(id));

    public static Command Resume() => JobAction("resume", "Resume a paused job", "resumed", (client, id) => client.Resume(id));

    public static Command Cancel() => JobAction("cancel", "Cancel a queued or running job and free its GPUs", "cancelled", (client, id) => client.Cancel(id));

    /// <summary>A command that does one thing to a job and says so ("paused JOB").</summary>
    private static Command JobAction(string name, string description, string done, Func<FlmCluster.Client.FlmClusterClient, string, Task> act)
    {
        var jobId = new Argument<string>("job") { Description = "Job id" };
        var command = new Command(name, description) { jobId };
        command.SetAction(async parse =>
        {
            var id = parse.GetValue(jobId)!;
            await using var client = await ClusterAccess.Connect();
            await act(client, id);
            Console.WriteLine($"{done} {id}");
            return CliRunner.Ok;
        });
        return command;
    }

    private static string LogLine(StepRecord r)
    {
        var p = r.Point;
        return $"{r.At:HH:mm:ss} step {p.Step,6} {p.Stage} loss {p.Loss:0.000000} tokens {p.Tokens} {p.TokensPerSecond:N0} tok/s {p.StepMs:0.0} ms gnorm {p.GradNorm:0.000} lr {p.Lr:0.00e+00}" +
            (r.Mfu is { } mfu ? $" mfu {mfu:P2}" : "") + (p.Skipped ? " SKIPPED" : "");
    }

    private static string EventLine(JobEvent e) => $"{e.At:HH:mm:ss} [{e.Kind}] {e.Message}";

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

    /// <summary>
    /// Follows a job to its end with the training progress display (step lines and events to
    /// <paramref name="progressOut"/>, standard output by default); 0 when it completed.
    /// </summary>
    public static async Task<int> Follow(FlmCluster.Client.FlmClusterClient client, string id, TrainingProgress? progress = null, TextWriter? progressOut = null)
    {
        var total = (await client.Status(id)).TotalSteps;
        var output = progressOut ?? Console.Out;
        progress ??= new TrainingProgress(total, Math.Max(1, (int)Math.Min(10, total / 10 + 1)), output);
        var final = await ClusterAccess.Watch(client, id,
            r => progress.Report(r.Point.Stage, ToSummary(r.Point)),
            (e, _) => { if (e.Kind is not "allocated") output.WriteLine($"  [{e.At:HH:mm:ss}] {e.Kind}: {e.Message}"); });
        progress.Finish();
        Console.WriteLine($"{id}: {Text.Of(final.State)} at step {final.Step}/{final.TotalSteps}" + (final.Error is null ? "" : $": {final.Error}"));
        progress.PrintSummary();
        return final.State == JobPhase.Completed ? CliRunner.Ok : CliRunner.Failed;
    }

    public static StepSummary ToSummary(StepPoint p) =>
        new(p.Step, p.Loss, p.Tokens, p.Lr, p.GradNorm, p.Skipped, TimeSpan.FromMilliseconds(p.StepMs), p.TokensPerSecond, p.CommFraction, 0);
}
