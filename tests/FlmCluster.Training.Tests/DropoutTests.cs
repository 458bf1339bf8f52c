using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

public class DropoutMaskTests
{
    private const ulong Seed = 11;
    private const double P = 0.1;

    private static DropoutMasks Samples(long first, int count) => new(Seed, Enumerable.Range(0, count).Select(i => first + i).ToArray());

    private static double Fraction(Tensor mask) => mask.to(ScalarType.Float64).mean().item<double>();

    [Theory]
    [InlineData(0.1)]
    [InlineData(0.5)]
    public void The_keep_fraction_is_1_minus_p(double p)
    {
        // 8 samples × 512 × 256 = 2²⁰ elements: the kept fraction has binomial sd √(p(1−p)/n) (2.9e-4 at p 0.1,
        // 4.9e-4 at p 0.5); allow 5 sd.
        using var mask = Samples(1000, 8).Keep([8, 512, 256], p, 3, DropoutSite.MlpOutput, 0, CPU);
        var n = (double)mask.NumberOfElements;
        Assert.Equal(1 - p, Fraction(mask), 5 * Math.Sqrt(p * (1 - p) / n));
    }

    [Fact]
    public void Masks_of_other_samples_layers_sites_and_heads_are_independent()
    {
        // Independent masks drop the same element with probability p²; equal or shifted masks would not. Each
        // comparison covers 2 × 4 × 256 × 256 = 2¹⁹ pairs: binomial sd √(p²(1−p²)/n) = 1.4e-4; allow 5 sd.
        long[] shape = [2, 4, 256, 256];
        var masks = Samples(40, 2);
        using var reference = masks.Keep(shape, P, 1, DropoutSite.AttentionProbabilities, 0, CPU);
        Tensor[] others =
        [
            Samples(42, 2).Keep(shape, P, 1, DropoutSite.AttentionProbabilities, 0, CPU),
            masks.Keep(shape, P, 0, DropoutSite.AttentionProbabilities, 0, CPU),
            masks.Keep(shape, P, 1, DropoutSite.MlpOutput, 0, CPU),
            masks.Keep(shape, P, 1, DropoutSite.AttentionProbabilities, 4, CPU),
            new DropoutMasks(Seed + 1, [40, 41]).Keep(shape, P, 1, DropoutSite.AttentionProbabilities, 0, CPU),
        ];
        var n = (double)reference.NumberOfElements;
        foreach (var other in others)
            Assert.Equal(P * P, Fraction(reference.logical_not().logical_and(other.logical_not())), 5 * Math.Sqrt(P * P * (1 - P * P) / n));
        // Within one mask, the two samples and the heads differ too.
        Assert.Equal(P * P, Fraction(reference[0].logical_not().logical_and(reference[1].logical_not())), 5 * Math.Sqrt(P * P * (1 - P * P) / (n / 2)));
        Assert.False(reference[0, 0].equal(reference[0, 1]).all().item<bool>());
    }

    [Fact]
    public void A_slice_of_a_mask_is_the_mask_of_the_slice()
    {
        // What TP (heads), DP and micro-batches (samples) rely on: the part of the whole batch's mask a rank holds
        // is what that rank generates for its own samples and heads.
        using var whole = Samples(100, 4).Keep([4, 8, 32, 32], P, 5, DropoutSite.AttentionProbabilities, 0, CPU);
        using var heads = Samples(100, 4).Keep([4, 2, 32, 32], P, 5, DropoutSite.AttentionProbabilities, 6, CPU);
        using var samples = Samples(102, 2).Keep([2, 8, 32, 32], P, 5, DropoutSite.AttentionProbabilities, 0, CPU);
        Assert.True(whole.narrow(1, 6, 2).equal(heads).all().item<bool>());
        Assert.True(whole.narrow(0, 2, 2).equal(samples).all().item<bool>());

        using var hidden = Samples(100, 4).Keep([4, 32, 64], P, 0, DropoutSite.Embedding, 0, CPU);
        using var hiddenPart = Samples(103, 1).Keep([1, 32, 64], P, 0, DropoutSite.Embedding, 0, CPU);
        Assert.True(hidden.narrow(0, 3, 1).equal(hiddenPart).all().item<bool>());
    }

    [Fact]
    public void Apply_zeroes_dropped_elements_and_scales_the_rest()
    {
        var masks = Samples(7, 2);
        using var x = rand([2, 16, 64], ScalarType.Float64);
        using var keep = masks.Keep([2, 16, 64], P, 2, DropoutSite.AttentionOutput, 0, CPU);
        using var expected = where(keep, x / (1 - P), zeros_like(x));
        Assert.True(masks.Apply(x, P, 2, DropoutSite.AttentionOutput).allclose(expected, rtol: 1e-15, atol: 0));
    }

    [Fact]
    public void Training_with_dropout_and_no_sample_indices_is_refused()
    {
        Assert.Null(DropoutMasks.For(null, training: false, P));
        Assert.Null(DropoutMasks.For(null, training: true, 0));
        Assert.Throws<InvalidOperationException>(() => DropoutMasks.For(null, training: true, P));
    }
}

[Collection("Training")]
public class DropoutTrainingTests
{
    private const int Steps = 4;

    private static (List<double> Losses, Dictionary<string, Tensor> Parameters) Run(double dropout)
    {
        using var data = TestJobs.SharedBytes();
        var job = TestJobs.Micro(steps: Steps) with { Model = TestJobs.Micro().Model with { Dropout = dropout } };
        using var engine = LocalEngine.Create(job, data);
        var losses = TrainingTests.Train(engine, Steps).Select(s => s.Loss).ToList();
        return (losses, StateAssembler.GatherParameters(engine.Ranks));
    }

    [Fact]
    public void A_replay_with_dropout_is_bit_identical_and_dropout_changes_the_loss()
    {
        var (losses, parameters) = Run(0.1);
        var (again, parametersAgain) = Run(0.1);
        var (plain, _) = Run(0);

        Assert.Equal(losses, again);
        foreach (var (name, t) in parameters)
            Assert.True(t.equal(parametersAgain[name]).all().item<bool>(), name);
        // Far beyond fp32 rounding of the attention path (~1e-6): the masks really drop activations.
        Assert.True(Math.Abs(losses[0] - plain[0]) > 1e-3, $"loss with dropout {losses[0]} vs without {plain[0]}");
    }
}
