using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Generation;

public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 64;

    /// <summary>0 = greedy (argmax); otherwise logits are divided by it before sampling.</summary>
    public double Temperature { get; init; }

    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>CTRL-style penalty on tokens already present: positive logits ÷ p, negative × p (1 = off).</summary>
    public double RepetitionPenalty { get; init; } = 1.0;

    public ulong Seed { get; init; }

    /// <summary>Decode with a KV cache (keys kept before xPos and re-rotated as the centre moves); off recomputes every position.</summary>
    public bool UseCache { get; init; } = true;

    public void Validate()
    {
        if (MaxNewTokens <= 0)
            throw new FlmUserException($"--max-new-tokens must be positive (got {MaxNewTokens})");
        if (!double.IsFinite(Temperature) || Temperature < 0)
            throw new FlmUserException($"--temperature must be a finite number, 0 or more (got {Temperature}); 0 means greedy");
        if (TopP is not (> 0 and <= 1))
            throw new FlmUserException($"--top-p must be in (0, 1] (got {TopP})");
        if (!double.IsFinite(RepetitionPenalty) || RepetitionPenalty <= 0)
            throw new FlmUserException($"--repetition-penalty must be a finite positive number (got {RepetitionPenalty}); 1 disables it");
    }

    /// <summary>Checks the options against the model that will generate: the new tokens must fit in its context.</summary>
    public void Validate(ModelConfig model)
    {
        Validate();
        if (MaxNewTokens > model.SeqLen)
            throw new FlmUserException($"--max-new-tokens {MaxNewTokens} is beyond the model's context of {model.SeqLen} tokens; give at most {model.SeqLen}");
    }
}

/// <summary>Autoregressive decoding with an <see cref="FlmModel"/> holding every layer on one rank.</summary>
public static class TextGenerator
{
    /// <summary>Returns the new token ids (stops after end-of-text or the token budget).</summary>
    public static List<int> Generate(FlmModel model, IReadOnlyList<int> prompt, GenerationOptions options, int vocabSize, int endOfText)
    {
        options.Validate();
        if (prompt.Count == 0)
            throw new FlmUserException("the prompt is empty; give some text with --prompt");
        model.eval();
        using var _ = no_grad();
        using var cache = options.UseCache ? new KvCache(model.Blocks.Count) : null;
        using var generator = new Generator(options.Seed == 0 ? 1UL : options.Seed);
        var sequence = new List<int>(prompt);
        var produced = new List<int>();
        for (var i = 0; i < options.MaxNewTokens; i++)
        {
            using var scope = NewDisposeScope();
            IReadOnlyList<int> feed = cache is null || i == 0 ? sequence : [sequence[^1]];
            var ids = tensor(feed.Select(x => (long)x).ToArray(), [1, feed.Count], dtype: ScalarType.Int64).to(model.Device);
            var logits = model.Forward(ids, cache).select(1, -1).squeeze(0).to(ScalarType.Float64).cpu();
            var next = Choose(logits, sequence, options, vocabSize, generator);
            sequence.Add(next);
            produced.Add(next);
            if (next == endOfText)
                break;
        }
        return produced;
    }

    private static int Choose(Tensor logits, IReadOnlyList<int> history, GenerationOptions options, int vocabSize, Generator generator)
    {
        var padded = logits.shape[0];
        if (padded > vocabSize)
            logits.narrow(0, vocabSize, padded - vocabSize).fill_(double.NegativeInfinity);
        if (options.RepetitionPenalty != 1.0)
        {
            var seen = tensor(history.Distinct().Select(x => (long)x).ToArray(), dtype: ScalarType.Int64);
            var values = logits.index_select(0, seen);
            var penalised = where(values.gt(0), values / options.RepetitionPenalty, values * options.RepetitionPenalty);
            logits.index_copy_(0, seen, penalised);
        }
        if (options.Temperature == 0)
            return (int)logits.argmax().item<long>();
        // Shifted to a maximum of 0 (with ±∞ from a strong penalty clamped first), so that any positive
        // temperature, however small, divides into finite values or −∞ and the softmax never sees ∞ − ∞.
        logits.clamp_(-double.MaxValue, double.MaxValue);
        var probs = nn.functional.softmax((logits - logits.max()) / options.Temperature, 0);
        if (options.TopP < 1.0)
        {
            var (sorted, order) = probs.sort(descending: true);
            var cumulative = sorted.cumsum(0);
            // Keep tokens until the mass before them reaches top_p (the first token is always kept).
            var drop = (cumulative - sorted).ge(options.TopP);
            sorted = sorted.masked_fill(drop, 0);
            probs = zeros_like(probs).scatter_(0, order, sorted);
            probs = probs / probs.sum();
        }
        return (int)multinomial(probs, 1, generator: generator).item<long>();
    }

    /// <summary>
    /// Loads a model onto one CPU rank: a checkpoint folder, a checkpoint store (its newest valid checkpoint,
    /// e.g. what <c>flm train --out</c> wrote), or a Hugging Face export.
    /// </summary>
    public static (JobConfig Job, FlmModel Model, ITextTokenizer Tokenizer) LoadModel(string path)
    {
        if (HfFormat.IsExport(path))
            return HfFormat.Import(path);
        CheckpointReader reader;
        try
        {
            reader = CheckpointStore.Resolve(path);
        }
        catch (InvalidCheckpointException ex)
        {
            throw new FlmUserException($"'{path}' is not a model: {ex.Message}; train one with 'flm train --out DIR' or import one with 'flm import --hf'");
        }
        var m = reader.Manifest;
        var stages = Growth.GrowthSchedule.Resolve(JobValidator.Validate(m.Job()));
        var stage = stages[Math.Clamp(m.Stage, 0, stages.Count - 1)];
        var job = stage.Job;
        try
        {
            reader.RequireParameters(job.Model);
        }
        catch (InvalidCheckpointException ex)
        {
            throw new FlmUserException($"'{path}' is not a model: {ex.Message}");
        }
        var dtype = reader.Records("param").FirstOrDefault()?.DType == "F64" ? ScalarType.Float64 : ScalarType.Float32;
        var model = new FlmModel(job.Model, dtype: dtype, growth: m.Growth);
        if (m.Growth is not null)
            model.SetMaskValue(m.MaskValue);
        using (no_grad())
            foreach (var p in model.Parameters)
            {
                using var whole = reader.ReadWhole("param", p.Name);
                p.Tensor.copy_(whole);
            }
        return (job, model, TokenizerFactory.Create(job.Tokenizer));
    }
}
