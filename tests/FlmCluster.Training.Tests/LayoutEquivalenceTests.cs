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

    private static (List<double> Losses, List<double> Norms, Dictionary<string, Tensor> Parameters) Run(JobConfig job, int dp, int tp, int pp)
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
        return (losses, norms, StateAssembler.GatherParameters(engine.Ranks));
    }

    private static JobConfig Job(string precision) => TestJobs.Micro(steps: Steps) with
    {
        Train = TestJobs.Micro().Train with { Precision = precision, Steps = Steps },
        // Clipping active from the first step, so the distributed global norm matters.
        Optimizer = TestJobs.Micro().Optimizer with { ClipGrad = 0.3, WarmupSteps = 1 },
    };

    private static readonly Lazy<(List<double>, List<double>, Dictionary<string, Tensor>)> Single32 = new(() => Run(Job("fp32"), 1, 1, 1));
    private static readonly Lazy<(List<double>, List<double>, Dictionary<string, Tensor>)> Single64 = new(() => Run(Job("fp64"), 1, 1, 1));

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Layout_gives_the_single_worker_losses_and_parameters(int dp, int tp, int pp)
    {
        var (refLoss32, refNorm32, refParams32) = Single32.Value;
        var (loss32, norm32, params32) = Run(Job("fp32"), dp, tp, pp);
        var (refLoss64, refNorm64, refParams64) = Single64.Value;
        var (loss64, norm64, params64) = Run(Job("fp64"), dp, tp, pp);

        for (var i = 0; i < Steps; i++)
        {
            Assert.Equal(refLoss32[i], loss32[i], 2e-6);
            Assert.Equal(refNorm32[i], norm32[i], 1e-5);
            Assert.Equal(refLoss64[i], loss64[i], 1e-13);
            Assert.Equal(refNorm64[i], norm64[i], 1e-12);
        }
        Assert.Equal(refParams32.Keys.Order(), params32.Keys.Order());
        var worst32 = params32.Max(kv => (kv.Value - refParams32[kv.Key]).abs().max().item<float>());
        var mean32 = params32.Sum(kv => (kv.Value - refParams32[kv.Key]).abs().sum().item<float>()) / params32.Sum(kv => kv.Value.NumberOfElements);
        var worst64 = params64.Max(kv => (kv.Value - refParams64[kv.Key]).abs().max().item<double>());
        // Adam moves a weight by at most about lr per step, whatever the gradient's size; for the few weights whose
        // gradient is near zero, rounding noise decides the direction. Bound the worst weight by 1% of the largest
        // possible movement Σ lr_t, and the average by fp32 rounding of the weights themselves.
        var schedule = new FlmCluster.Training.Optim.LrSchedule(Job("fp32").Optimizer, Steps);
        var maxMovement = Enumerable.Range(0, Steps).Sum(t => schedule.At(t));
        Assert.True(worst32 < 0.01 * maxMovement, $"fp32 max |Δparam| {worst32:E2} vs Σlr {maxMovement:E2}");
        Assert.True(mean32 < 1e-7, $"fp32 mean |Δparam| {mean32:E2}");
        Assert.True(worst64 < 1e-13, $"fp64 max |Δparam| {worst64:E2}");
    }
}
