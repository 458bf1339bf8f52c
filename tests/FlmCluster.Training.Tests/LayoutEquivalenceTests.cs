using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

/// <summary>
/// The same job (seed, data, schedule) under every layout with dp, tp, pp ∈ {1, 2} gives the single
/// worker's losses and parameters. In fp32 the layouts sum in different orders (TP splits matmul
/// reductions, DP and micro-batches split the batch sum, the norm is summed per shard), so results agree to
/// rounding, which Adam's normalised update carries into the weights at about lr × (relative rounding of the
/// gradient) per step. The fp64 run shows the differences are rounding, not logic: they shrink by ~9 orders of
/// magnitude.
/// </summary>
[Collection("Training")]
public class LayoutEquivalenceTests
{
    private const int Steps = 4;

    public static TheoryData<int, int, int> Layouts => new()
    {
        { 2, 1, 1 }, { 1, 2, 1 }, { 1, 1, 2 }, { 2, 2, 1 }, { 2, 1, 2 }, { 1, 2, 2 }, { 2, 2, 2 },
    };

    private sealed record Result(List<double> Losses, List<double> Norms, Dictionary<string, Tensor> Parameters);

    private static Result Run(JobConfig job, int dp, int tp, int pp)
    {
        using var data = TestJobs.SharedBytes();
        // Two micro-batches per DP rank: pipelined layouts exercise 1F1B, the others accumulate.
        var layout = new LayoutConfig { Dp = dp, Tp = tp, Pp = pp, MicroBatches = 2 };
        using var engine = LocalEngine.Create(job with { Layout = layout }, data, TimeSpan.FromMinutes(2));
        var losses = new List<double>();
        var norms = new List<double>();
        for (var i = 0; i < Steps; i++)
        {
            var s = engine.RunStep();
            losses.Add(s.Loss);
            norms.Add(s.GradNorm);
        }
        return new Result(losses, norms, StateAssembler.GatherParameters(engine.Ranks));
    }

    private static JobConfig Job(string precision, double dropout = 0) => TestJobs.Micro(steps: Steps) with
    {
        Model = TestJobs.Micro().Model with { Dropout = dropout },
        Train = TestJobs.Micro().Train with { Precision = precision, Steps = Steps },
        // Clipping active from the first step, so the distributed global norm matters.
        Optimizer = TestJobs.Micro().Optimizer with { ClipGrad = 0.3, WarmupSteps = 1 },
    };

    private static readonly Lazy<Result> Single32 = new(() => Run(Job("fp32"), 1, 1, 1));
    private static readonly Lazy<Result> Single64 = new(() => Run(Job("fp64"), 1, 1, 1));
    private static readonly Lazy<Result> Single64Dropout = new(() => Run(Job("fp64", 0.1), 1, 1, 1));

    private static void AssertFp64Matches(Result expected, Result actual, double lossTolerance, double normTolerance, double paramTolerance)
    {
        for (var i = 0; i < Steps; i++)
        {
            Assert.Equal(expected.Losses[i], actual.Losses[i], lossTolerance);
            Assert.Equal(expected.Norms[i], actual.Norms[i], normTolerance);
        }
        Assert.Equal(expected.Parameters.Keys.Order(), actual.Parameters.Keys.Order());
        var worst = actual.Parameters.Max(kv => (kv.Value - expected.Parameters[kv.Key]).abs().max().item<double>());
        Assert.True(worst < paramTolerance, $"fp64 max |Δparam| {worst:E2}");
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Layout_gives_the_single_worker_losses_and_parameters(int dp, int tp, int pp)
    {
        var reference32 = Single32.Value;
        var run32 = Run(Job("fp32"), dp, tp, pp);
        AssertFp64Matches(Single64.Value, Run(Job("fp64"), dp, tp, pp), 1e-13, 1e-12, 1e-13);

        for (var i = 0; i < Steps; i++)
        {
            Assert.Equal(reference32.Losses[i], run32.Losses[i], 2e-6);
            Assert.Equal(reference32.Norms[i], run32.Norms[i], 1e-5);
        }
        var (refParams32, params32) = (reference32.Parameters, run32.Parameters);
        Assert.Equal(refParams32.Keys.Order(), params32.Keys.Order());
        var worst32 = params32.Max(kv => (kv.Value - refParams32[kv.Key]).abs().max().item<float>());
        var mean32 = params32.Sum(kv => (kv.Value - refParams32[kv.Key]).abs().sum().item<float>()) / params32.Sum(kv => kv.Value.NumberOfElements);
        // Adam moves a weight by at most about lr per step, whatever the gradient's size; for the few weights whose
        // gradient is near zero, rounding noise decides the direction. Bound the worst weight by 1% of the largest
        // possible movement Σ lr_t, and the average by fp32 rounding of the weights themselves.
        var schedule = new FlmCluster.Training.Optim.LrSchedule(Job("fp32").Optimizer, Steps);
        var maxMovement = Enumerable.Range(0, Steps).Sum(t => schedule.At(t));
        Assert.True(worst32 < 0.01 * maxMovement, $"fp32 max |Δparam| {worst32:E2} vs Σlr {maxMovement:E2}");
        Assert.True(mean32 < 1e-7, $"fp32 mean |Δparam| {mean32:E2}");
    }

    /// <summary>
    /// Dropout masks are keyed by global sample, layer, site and position (global head for attention
    /// probabilities), so every layout drops the same elements: fp64 agrees to rounding as without dropout.
    /// </summary>
    [Theory]
    [MemberData(nameof(Layouts))]
    public void Layout_with_dropout_gives_the_single_worker_losses_and_parameters(int dp, int tp, int pp) =>
        AssertFp64Matches(Single64Dropout.Value, Run(Job("fp64", 0.1), dp, tp, pp), 1e-12, 1e-12, 1e-12);
}
