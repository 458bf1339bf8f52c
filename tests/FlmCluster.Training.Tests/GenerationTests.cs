using FlmCluster.Training.Engine;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Data;
using FlmCluster.Training.Generation;
using FlmCluster.Training.Model;

namespace FlmCluster.Training.Tests;

[Collection("Training")]
public class GenerationTests
{
    [Fact]
    public void Kv_cache_generation_equals_recomputing_every_position()
    {
        using var data = TestJobs.SharedBytes();
        var job = TestJobs.Micro(steps: 60);
        using var engine = LocalEngine.Create(job, data);
        for (var i = 0; i < 60; i++)
            engine.RunStep();
        using var model = new FlmModel(job.Model);
        var parameters = StateAssembler.GatherParameters(engine.Ranks);
        using (TorchSharp.torch.no_grad())
            foreach (var p in model.Parameters)
                p.Tensor.copy_(parameters[p.Name]);

        var tokenizer = new ByteTokenizer();
        var prompt = tokenizer.Encode("A house without books is like a body without a soul;");
        foreach (var options in new[]
        {
            new GenerationOptions { MaxNewTokens = 48 },
            new GenerationOptions { MaxNewTokens = 48, RepetitionPenalty = 1.3 },
            new GenerationOptions { MaxNewTokens = 48, Temperature = 0.8, TopP = 0.9, Seed = 3 },
        })
        {
            var cached = TextGenerator.Generate(model, prompt, options, job.Model.VocabSize, tokenizer.EndOfText);
            var uncached = TextGenerator.Generate(model, prompt, options with { UseCache = false }, job.Model.VocabSize, tokenizer.EndOfText);
            Assert.Equal(uncached, cached);
            Assert.True(cached.Count >= 8);
            Assert.All(cached, id => Assert.InRange(id, 0, job.Model.VocabSize - 1));
        }
    }

    [Fact]
    public void Cached_logits_equal_full_forward_logits_at_every_position()
    {
        var config = TestJobs.Micro().Model;
        using var model = new FlmModel(config);
        ModelInitializer.Initialize(model, 17);
        model.eval();
        using var scope = TorchSharp.torch.NewDisposeScope();
        using var _ = TorchSharp.torch.no_grad();
        var ids = TorchSharp.torch.randint(0, 257, [1, 30], dtype: TorchSharp.torch.ScalarType.Int64, generator: new TorchSharp.torch.Generator(3));
        var full = model.Forward(ids);
        using var cache = new KvCache(config.Layers);
        // Prefill 11 tokens, then a chunk of 7 (queries see keys up to their own position), then one at a time.
        var parts = new List<TorchSharp.torch.Tensor> { model.Forward(ids.narrow(1, 0, 11), cache), model.Forward(ids.narrow(1, 11, 7), cache) };
        for (var t = 18; t < 30; t++)
            parts.Add(model.Forward(ids.narrow(1, t, 1), cache));
        var incremental = TorchSharp.torch.cat(parts.ToArray(), 1);
        Assert.True(incremental.allclose(full, rtol: 1e-4, atol: 1e-5), $"max diff {(incremental - full).abs().max().item<float>()}");
    }
}
