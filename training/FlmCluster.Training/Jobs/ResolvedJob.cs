using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Model;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Jobs;

/// <summary>
/// A job checked once and resolved into what every party needs: the whole validated config, its stages (each
/// a job of its own shape, steps, batch and layout), the step each stage starts at, and the widest layout
/// (the GPUs the job holds from stage to stage). Its JSON form is how a job travels; parsing it resolves and
/// validates again, so an invalid job exists nowhere.
/// </summary>
public sealed class ResolvedJob
{
    private ResolvedJob(JobConfig job, IReadOnlyList<ResolvedStage> stages)
    {
        Job = job;
        Stages = stages;
        var starts = new List<long>(stages.Count);
        long step = 0;
        foreach (var stage in stages)
        {
            starts.Add(step);
            step += stage.Job.Train.Steps;
        }
        StageStarts = starts;
        TotalSteps = step;
        WidestLayout = stages.Select(s => ParallelLayout.FromConfig(s.Job.Layout)).MaxBy(l => l.WorldSize)!;
        Fingerprint = FingerprintOf(job);
    }

    /// <summary>The whole job, validated (for a job with stages: the first stage's model and layout, the steps of all).</summary>
    public JobConfig Job { get; }

    public IReadOnlyList<ResolvedStage> Stages { get; }

    /// <summary>First global step of each stage.</summary>
    public IReadOnlyList<long> StageStarts { get; }

    public long TotalSteps { get; }

    /// <summary>The layout of the stage with the most ranks: the GPUs the job holds.</summary>
    public ParallelLayout WidestLayout { get; }

    /// <summary>
    /// What makes two runs the same training: tokenizer, model, data, seeds, optimizer and the stages' shapes —
    /// not steps, layouts, devices or the checkpoint policy, which a resume may change.
    /// </summary>
    public string Fingerprint { get; }

    public string Name => Job.Name;

    /// <summary>Validates and resolves; throws <see cref="FlmUserException"/> naming the problem.</summary>
    public static ResolvedJob Resolve(JobConfig job)
    {
        var valid = JobValidator.Validate(job);
        return new ResolvedJob(valid, GrowthSchedule.Resolve(valid));
    }

    /// <summary>Parses a job's JSON (a submission, an assignment, a manifest) and resolves it.</summary>
    public static ResolvedJob Parse(string json, string origin) => Resolve(JobConfigLoader.FromJson(json, origin));

    public string ToJson() => JobConfigLoader.ToJson(Job);

    /// <summary>The step after the last of stage <paramref name="stage"/>.</summary>
    public long StageEnd(int stage) => StageStarts[stage] + Stages[stage].Job.Train.Steps;

    /// <summary>
    /// The data-parallel sizes of the widest stage, largest first, that the job can run with using every GPU they
    /// ask for (dp × tp × pp): the sizes it may shrink to or grow back to.
    /// </summary>
    public IReadOnlyList<int> DataParallelChoices => _choices ??= Enumerable.Range(1, WidestLayout.Dp).Reverse()
        .Where(dp => FitInto(dp * WidestLayout.Tp * WidestLayout.Pp)?.WidestLayout.WorldSize == dp * WidestLayout.Tp * WidestLayout.Pp)
        .ToList();

    private IReadOnlyList<int>? _choices;

    /// <summary>The job with every stage's layout fitted into <paramref name="gpus"/> GPUs (fewer replicas, the same batch), or null.</summary>
    public ResolvedJob? FitInto(int gpus) => ElasticLayout.Fit(Job, gpus) is { } fitted ? Resolve(fitted) : null;

    /// <summary>The new structure of stage <paramref name="stage"/>'s model while its growth masks are in place (null for the first).</summary>
    public GrowthShape? GrowthShapeOf(int stage) => GrowthSchedule.ShapeOf(Stages, stage);

    private static string FingerprintOf(JobConfig job)
    {
        var identity = new
        {
            job.Tokenizer,
            job.Model,
            Data = job.Data,
            TrainSeed = job.Train.Seed,
            job.Optimizer,
            Stages = job.Stages.Select(s => new { s.Name, s.Layers, s.Hidden, s.Heads, s.Ffn, s.HeadSize, s.Lr, s.MinLr, s.MaskRampSteps, s.DepthPlacement, s.NewBlockInit }),
        };
        var bytes = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(identity, JobConfigLoader.JsonOptions));
        return Convert.ToHexStringLower(SHA256.HashData(bytes))[..16];
    }
}
