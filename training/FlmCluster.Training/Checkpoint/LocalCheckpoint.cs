using System.Text.Json;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>Progress that a resumed run needs besides tensors.</summary>
/// <param name="Stage">Index of the growth stage the model belongs to.</param>
/// <param name="StageStartStep">First step of that stage (LR schedule and mask ramp count from it).</param>
/// <param name="Growth">New structure of the stage's model, while its masks may still be ramping.</param>
public sealed record TrainerProgress(long Step, long SamplesConsumed, long AdamStep, string DataFingerprint,
    int Stage = 0, long StageStartStep = 0, Model.GrowthShape? Growth = null);

/// <summary>
/// A whole-model checkpoint of a local run: config.json (the job), model.safetensors (parameters by
/// global name), optimizer.safetensors (Adam moments by name) and trainer.json (progress). Written to a
/// temporary folder, fsynced and renamed into place, so a half-written checkpoint never has the final name.
/// Loads into any layout. The sharded, manifest-based cluster format builds on the same names.
/// </summary>
public static class LocalCheckpoint
{
    public const string ConfigFile = "config.json";
    public const string ModelFile = "model.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string ProgressFile = "trainer.json";

    /// <summary>Saves a whole job (all stages' config) at the current stage.</summary>
    public static void Save(string directory, TrainingRun run) => Save(directory, run.Engine, run.Job, run.StageIndex);

    /// <summary>Saves one engine; <paramref name="job"/> is the whole job when the engine is one stage of it.</summary>
    public static void Save(string directory, LocalEngine engine, JobConfig? job = null, int stage = 0)
    {
        var parameters = StateAssembler.GatherParameters(engine.Ranks);
        var optimizer = StateAssembler.GatherOptimizer(engine.Ranks);
        var growth = engine.NextMaskValue < 1.0 ? engine.Growth : null;
        var progress = new TrainerProgress(engine.NextStep, engine.SamplesConsumed, engine.Ranks[0].Optimizer.Step, engine.Data.Fingerprint,
            stage, engine.StageStartStep, growth);
        try
        {
            Save(directory, job ?? engine.Job, parameters, optimizer, progress);
        }
        finally
        {
            foreach (var t in parameters.Values.Concat(optimizer.Values))
                t.Dispose();
        }
    }

    public static void Save(string directory, JobConfig job, IReadOnlyDictionary<string, Tensor> parameters,
        IReadOnlyDictionary<string, Tensor>? optimizer, TrainerProgress progress)
    {
        var final = Path.GetFullPath(directory);
        var parent = Path.GetDirectoryName(final)!;
        Directory.CreateDirectory(parent);
        var staging = Path.Combine(parent, $".{Path.GetFileName(final)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        try
        {
            var meta = new Dictionary<string, string> { ["format"] = "flmcluster", ["step"] = progress.Step.ToString(System.Globalization.CultureInfo.InvariantCulture) };
            SafeTensors.Write(Path.Combine(staging, ModelFile), parameters, meta);
            if (optimizer is not null)
                SafeTensors.Write(Path.Combine(staging, OptimizerFile), optimizer, meta);
            WriteSynced(Path.Combine(staging, ConfigFile), JobConfigLoader.ToJson(job));
            WriteSynced(Path.Combine(staging, ProgressFile), JsonSerializer.Serialize(progress, JobConfigLoader.JsonOptions));
            if (Directory.Exists(final))
            {
                var old = Path.Combine(parent, $".{Path.GetFileName(final)}.old-{Guid.NewGuid():N}");
                Directory.Move(final, old);
                Directory.Move(staging, final);
                Directory.Delete(old, recursive: true);
            }
            else
                Directory.Move(staging, final);
        }
        catch
        {
            if (Directory.Exists(staging))
                Directory.Delete(staging, recursive: true);
            throw;
        }
    }

    public static bool IsCheckpoint(string directory) =>
        File.Exists(Path.Combine(directory, ConfigFile)) && File.Exists(Path.Combine(directory, ModelFile));

    public static JobConfig ReadJob(string directory)
    {
        if (!IsCheckpoint(directory))
            throw new FlmUserException($"'{directory}' is not a model directory (it needs {ConfigFile} and {ModelFile}); train one with 'flm train --out DIR'");
        return JobConfigLoader.FromJson(File.ReadAllText(Path.Combine(directory, ConfigFile)), $"{directory}/{ConfigFile}");
    }

    public static Dictionary<string, Tensor> ReadParameters(string directory) =>
        SafeTensors.Read(Path.Combine(directory, ModelFile));

    public static TrainerProgress ReadProgress(string directory) =>
        JsonSerializer.Deserialize<TrainerProgress>(File.ReadAllText(Path.Combine(directory, ProgressFile)), JobConfigLoader.JsonOptions)
        ?? throw new InvalidDataException($"{directory}/{ProgressFile} is empty");

    /// <summary>Restores parameters, optimizer state and progress into an engine of any layout.</summary>
    public static void Restore(string directory, LocalEngine engine) => Restore(directory, engine, ReadProgress(directory));

    internal static void Restore(string directory, LocalEngine engine, TrainerProgress progress)
    {
        if (progress.DataFingerprint != engine.Data.Fingerprint)
            throw new FlmUserException($"checkpoint '{directory}' was trained on different data (fingerprint {progress.DataFingerprint[..12]}… vs {engine.Data.Fingerprint[..12]}…); resume with the same data.paths and tokenizer");
        var parameters = ReadParameters(directory);
        var optimizer = SafeTensors.Read(Path.Combine(directory, OptimizerFile));
        try
        {
            engine.Fan(r =>
            {
                StateAssembler.ScatterParameters(engine.Ranks[r], parameters);
                StateAssembler.ScatterOptimizer(engine.Ranks[r], optimizer, progress.AdamStep);
            });
            engine.SetProgress(progress.Step, progress.SamplesConsumed);
        }
        finally
        {
            foreach (var t in parameters.Values.Concat(optimizer.Values))
                t.Dispose();
        }
    }

    private static void WriteSynced(string path, string text)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        stream.Write(bytes);
        stream.Flush(flushToDisk: true);
    }
}
