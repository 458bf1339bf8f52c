using System.CommandLine;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using Spectre.Console;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm checkpoint list|verify|inspect</c>, <c>flm export --hf</c>, <c>flm import --hf</c>.</summary>
public static class CheckpointCommands
{
    public static Command Checkpoint()
    {
        var listTarget = new Argument<string>("job-or-folder") { Description = "A job id (its checkpoint.dir on the cluster) or a folder of checkpoints" };
        var checksums = new Option<bool>("--checksums") { Description = "Also verify every shard's checksum" };
        var json = new Option<bool>("--json") { Description = "Print JSON (stable field names, see docs/operations.md) instead of a table" };
        var list = new Command("list", "List the checkpoints of a folder, newest last, with their validity") { listTarget, checksums, json };
        list.SetAction(async parse =>
        {
            var root = parse.GetValue(listTarget)!;
            if (!Directory.Exists(root))
            {
                // Job ids have no path separators: a path that is not a folder is a mistake, not a job on a cluster.
                if (File.Exists(root) || root.IndexOfAny(['/', '\\']) >= 0 || root.StartsWith('.'))
                    throw new FlmUserException($"'{root}' is not a folder of checkpoints ({(File.Exists(root) ? "it is a file" : "it does not exist")}); give a folder or a job id");
                await using var client = await ClusterAccess.Connect();
                var status = await client.Status(root);
                root = status.CheckpointDir ?? throw new FlmUserException($"job {status.JobId} has no checkpoint.dir");
            }
            var entries = CheckpointStore.List(root, parse.GetValue(checksums));
            if (entries.Count == 0)
                throw new FlmUserException($"'{root}' holds no checkpoints (step-NNNNNNNN folders)");
            if (entries.All(e => !e.Valid))
                throw CheckpointStore.NoValidCheckpoint(root, entries.Select(e => (e.Directory, e.Problem ?? "")));
            if (parse.GetValue(json))
            {
                JsonOutput.Print(entries.Select(e =>
                {
                    var m = e.Valid ? CheckpointReader.Open(e.Directory).Manifest : null;
                    return new JsonOutput.CheckpointJson(Path.GetFileName(e.Directory), e.Directory, e.Step, e.Valid,
                        m is null ? null : $"dp={m.Layout.Dp},tp={m.Layout.Tp},pp={m.Layout.Pp}", m?.Shards.Sum(s => s.Bytes), e.Problem);
                }).ToList());
                return CliRunner.Ok;
            }
            var table = new Table().Border(TableBorder.Rounded);
            foreach (var c in new[] { "checkpoint", "step", "valid", "layout", "size", "problem" })
                table.AddColumn(c);
            foreach (var e in entries)
            {
                var (layout, size) = e.Valid ? Describe(e.Directory) : ("", "");
                table.AddRow(Path.GetFileName(e.Directory), $"{e.Step}", e.Valid ? "yes" : "no", layout, size, Markup.Escape(e.Problem ?? ""));
            }
            AnsiConsole.Write(table);
            return CliRunner.Ok;
        });

        var verifyTarget = new Argument<string>("checkpoint") { Description = "A checkpoint (a step-NNNNNNNN folder)" };
        var verify = new Command("verify", "Check a checkpoint's manifest, shard sizes and every checksum; exit 0 only if all are good") { verifyTarget };
        verify.SetAction(parse =>
        {
            var reader = Open(parse.GetValue(verifyTarget)!);
            var problems = reader.Verify();
            foreach (var p in problems)
                Console.Error.WriteLine($"error: {p}");
            if (problems.Count > 0)
                return CliRunner.Failed;
            Console.WriteLine($"{reader.Directory}: manifest and {reader.Manifest.Shards.Count} shard checksum(s) good (step {reader.Manifest.Step})");
            return CliRunner.Ok;
        });

        var inspectTarget = new Argument<string>("checkpoint") { Description = "A checkpoint (a step-NNNNNNNN folder)" };
        var inspect = new Command("inspect", "Show what a checkpoint holds") { inspectTarget };
        inspect.SetAction(parse =>
        {
            var reader = Open(parse.GetValue(inspectTarget)!);
            var m = reader.Manifest;
            var job = m.Job();
            Console.WriteLine($"{reader.Directory}");
            Console.WriteLine($"  job {m.JobId} ({job.Name}), stage {m.Stage}, next step {m.Step}, samples consumed {m.SamplesConsumed:N0}, Adam step {m.AdamStep}, next LR {m.NextLr:0.###e+0}");
            Console.WriteLine($"  saved under layout dp={m.Layout.Dp},tp={m.Layout.Tp},pp={m.Layout.Pp}; data {m.SampleOrder} seed {m.DataSeed}, fingerprint {(m.DataFingerprint.Length > 12 ? m.DataFingerprint[..12] + "…" : m.DataFingerprint.Length > 0 ? m.DataFingerprint : "none")}; train seed {m.TrainSeed}");
            if (m.Growth is not null)
                Console.WriteLine($"  growth masks at {m.MaskValue:0.###} (new layers {string.Join(",", m.Growth.NewLayers)})");
            Console.WriteLine($"  {m.Shards.Count} shard(s), {m.Shards.Sum(s => s.Bytes) / 1e6:0.0} MB; created {m.CreatedAt:yyyy-MM-dd HH:mm:ss} UTC");
            var table = new Table().Border(TableBorder.Rounded);
            foreach (var c in new[] { "kind", "tensors", "elements", "pieces" })
                table.AddColumn(new TableColumn(c).RightAligned());
            foreach (var group in m.Tensors.GroupBy(t => t.Kind))
                table.AddRow(group.Key, $"{group.Count()}", $"{group.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)):N0}", $"{group.Sum(t => t.Pieces.Count)}");
            AnsiConsole.Write(table);
            return CliRunner.Ok;
        });
        var saveJob = new Argument<string>("job") { Description = "Job id" };
        var save = new Command("save", "Take a checkpoint of a running job at its next step boundary") { saveJob };
        save.SetAction(async parse =>
        {
            var id = parse.GetValue(saveJob)!;
            await using var client = await ClusterAccess.Connect();
            await client.Grains.GetGrain<FlmCluster.Grains.Abstractions.IJobCoordinatorGrain>(id).SaveCheckpoint();
            Console.WriteLine($"{id}: checkpoint requested; 'flm status {id}' shows when it is committed");
            return CliRunner.Ok;
        });
        return new Command("checkpoint", "Sharded checkpoints") { list, verify, inspect, save };
    }

    public static Command Export()
    {
        var hf = new Option<bool>("--hf") { Description = "Hugging Face layout (the only format)", Required = true };
        var source = new Argument<string>("checkpoint") { Description = "A checkpoint, or a folder of them (the newest valid one)" };
        var target = new Argument<string>("dir") { Description = "New folder for config.json and model.safetensors" };
        var command = new Command("export", "Write a checkpoint's model in FLM-101B's Hugging Face layout") { hf, source, target };
        command.SetAction(parse =>
        {
            var dir = parse.GetValue(target)!;
            OutputLocation.RequireNewOrEmptyDirectory(dir, "export folder");
            var reader = CheckpointStore.Resolve(parse.GetValue(source)!);
            var job = JobValidator.Validate(reader.Manifest.Job());
            var stages = FlmCluster.Training.Growth.GrowthSchedule.Resolve(job);
            var model = stages[Math.Clamp(reader.Manifest.Stage, 0, stages.Count - 1)].Job.Model;
            reader.RequireParameters(model);
            HfFormat.Export(model, job.Tokenizer, name => reader.ReadWhole("param", name), dir);
            Console.WriteLine($"exported {model.ParameterCount:N0} parameters (step {reader.Manifest.Step}) to {dir}");
            return CliRunner.Ok;
        });
        return command;
    }

    public static Command Import()
    {
        var hf = new Option<bool>("--hf") { Description = "Hugging Face layout (the only format)", Required = true };
        var source = new Argument<string>("dir") { Description = "Folder with config.json and model.safetensors" };
        var output = new Option<string>("--out", "-o") { Description = "Checkpoint folder to create (step-00000000 inside)", Required = true };
        var command = new Command("import", "Turn a Hugging Face export into a checkpoint (weights only; a fresh optimizer when training resumes)") { hf, source, output };
        command.SetAction(parse =>
        {
            var dir = parse.GetValue(source)!;
            var root = parse.GetValue(output)!;
            if (!HfFormat.IsExport(dir))
                throw new FlmUserException($"'{dir}' is not a Hugging Face export (it needs {HfFormat.ConfigFile} with model_type and {HfFormat.WeightsFile})");
            OutputLocation.RequireCreatableDirectory(root, "--out");
            if (Directory.Exists(CheckpointStore.DirectoryFor(root, 0)))
                throw new FlmUserException($"'{CheckpointStore.DirectoryFor(root, 0)}' already exists; import into another folder");
            var (job, parameters) = HfFormat.Read(dir);
            try
            {
                var written = CheckpointStore.WriteWeights(root, job, parameters);
                Console.WriteLine($"imported {job.Model.ParameterCount:N0} parameters into {written}");
            }
            finally
            {
                foreach (var t in parameters.Values)
                    t.Dispose();
            }
            return CliRunner.Ok;
        });
        return command;
    }

    private static CheckpointReader Open(string path)
    {
        try
        {
            return CheckpointReader.Open(path);
        }
        catch (InvalidCheckpointException ex)
        {
            throw new FlmUserException(ex.Message);
        }
    }

    private static (string Layout, string Size) Describe(string directory)
    {
        var m = CheckpointReader.Open(directory).Manifest;
        return ($"dp={m.Layout.Dp},tp={m.Layout.Tp},pp={m.Layout.Pp}", $"{m.Shards.Sum(s => s.Bytes) / 1e6:0.0} MB");
    }
}
