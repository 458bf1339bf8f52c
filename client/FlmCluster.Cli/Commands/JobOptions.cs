using System.CommandLine;
using FlmCluster.Training.Config;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Cli.Commands;

/// <summary>The job arguments shared by every command that starts a job (train now, submit on a cluster).</summary>
public sealed class JobOptions
{
    public Option<string> Config { get; } = new("--config", "-c")
    {
        Description = $"Preset ({string.Join(", ", Presets.Names)}) or path to a JSON job config",
        DefaultValueFactory = _ => "tiny",
    };

    public Option<long?> Steps { get; } = new("--steps") { Description = "Optimizer steps (overrides train.steps)" };

    public Option<string[]> Set { get; } = new("--set")
    {
        Description = "Override any config key, e.g. --set optimizer.lr=3e-4 (repeatable)",
        AllowMultipleArgumentsPerToken = false,
    };

    public Option<string?> Layout { get; } = new("--layout") { Description = "Parallel layout, e.g. dp=2,tp=2,pp=2" };

    public Option<int?> MicroBatches { get; } = new("--micro-batches") { Description = "Micro-batches per step on each data-parallel rank" };

    public Option<bool> Overwrite { get; } = new("--overwrite")
    {
        Description = "Replace another run's checkpoints in the checkpoint folder (deletes them) instead of refusing to save there",
    };

    public void AddTo(Command command)
    {
        command.Add(Config);
        command.Add(Steps);
        command.Add(Set);
        command.Add(Layout);
        command.Add(MicroBatches);
        command.Add(Overwrite);
    }

    /// <summary>
    /// Loads and validates the job; every problem is an FlmUserException before anything runs. <paramref name="baseJson"/>
    /// (a checkpoint's job) replaces --config as the base; --layout, --micro-batches and <paramref name="checkpointDir"/>
    /// (--out) are applied before the job is validated, so that they count as part of it.
    /// </summary>
    public JobConfig Load(ParseResult parse, string? baseJson = null, string? checkpointDir = null)
    {
        var overrides = new List<string>(parse.GetValue(Set) ?? []);
        var steps = parse.GetValue(Steps);
        if (steps is not null)
            overrides.Add($"train.steps={steps}");
        var layoutText = parse.GetValue(Layout);
        var micro = parse.GetValue(MicroBatches);
        JobConfig Adjust(JobConfig job)
        {
            var layout = layoutText is null ? job.Layout : ParallelLayout.Parse(layoutText, new LayoutConfig { MicroBatches = job.Layout.MicroBatches });
            if (micro is not null)
                layout = layout with { MicroBatches = micro.Value };
            return job with
            {
                Layout = layout,
                Checkpoint = checkpointDir is null ? job.Checkpoint : job.Checkpoint with { Dir = checkpointDir },
            };
        }
        var job = baseJson is null
            ? JobConfigLoader.Load(parse.GetValue(Config)!, overrides, Adjust)
            : JobConfigLoader.LoadFromJson(baseJson, "the checkpoint's job", overrides, Adjust);
        if (steps is not null && job.Stages.Count > 0 && steps != job.Train.Steps)
            throw new Training.FlmUserException($"--steps: this job has growth stages whose steps add up to {job.Train.Steps}; set a stage's steps with --set stages.N.steps=…");
        return job;
    }
}
