using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Training.Tests;

/// <summary>The figures behind MFU and the step-time split: model FLOPs, device peaks, pipeline idle.</summary>
[Collection("Training")]
public sealed class TelemetryTests
{
    [Fact]
    public void Model_flops_of_the_tiny_preset_are_6N_plus_attention_per_token()
    {
        // tiny: 4 layers × 128 (2 heads of 64, FFN 512), cl100k padded to 100,352 rows: N = 4 × 198,272 + 100,352 × 128 + 256
        // = 13,638,400; per token 6N + 12 · 4 layers · 128 wide · 128 positions = 81,830,400 + 786,432.
        var model = JobValidator.Validate(Presets.Get("tiny")).Model; // validation sizes the vocabulary from the tokenizer
        Assert.Equal(13_638_400, model.ParameterCount);
        Assert.Equal(82_616_832.0, ModelFlops.PerToken(model));
        Assert.Equal(82_616_832.0 * 1024, ModelFlops.PerStep(model, 1024));
    }

    [Fact]
    public void Mfu_is_achieved_flops_over_the_summed_peaks_and_unknown_without_every_peak()
    {
        Assert.Equal(0.001, ModelFlops.Utilization(1e12, TimeSpan.FromSeconds(2), [250e12, 250e12]));
        Assert.Null(ModelFlops.Utilization(1e12, TimeSpan.FromSeconds(2), [250e12, 0]));
        Assert.Null(ModelFlops.Utilization(1e12, TimeSpan.FromSeconds(2), []));
        Assert.Equal(312e12, DevicePeaks.Of("NVIDIA A800-SXM4-80GB"));
        Assert.Equal(312e12, DevicePeaks.Of("a100"));
        Assert.Equal(989e12, DevicePeaks.Of("NVIDIA H100 80GB HBM3"));
        Assert.Equal(989e12, DevicePeaks.Of("NVIDIA H200"));
        Assert.Null(DevicePeaks.Of("cpu"));
    }

    [Fact]
    public void Pipeline_idle_is_the_time_in_pipeline_receives_and_none_without_a_pipeline()
    {
        foreach (var (layout, pipelined) in new[] { (new LayoutConfig { Pp = 2, MicroBatches = 4 }, true), (new LayoutConfig { Dp = 2 }, false) })
        {
            using var engine = LocalEngine.Create(TestJobs.Micro() with { Layout = layout });
            var plan = engine.Progress.Plan(engine.Cursor);
            var reports = engine.Fan(r => engine.Ranks[r].TrainStep(plan));
            foreach (var report in reports)
            {
                Assert.True(report.PipelineWait <= report.CommTime, $"rank {report.Rank}: {report.PipelineWait} of {report.CommTime}");
                if (pipelined)
                    Assert.True(report.PipelineWait > TimeSpan.Zero, $"rank {report.Rank} never waited in a pipeline receive");
                else
                    Assert.Equal(TimeSpan.Zero, report.PipelineWait);
            }
        }
    }
}
