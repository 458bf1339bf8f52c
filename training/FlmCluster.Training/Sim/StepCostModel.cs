using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Training.Sim;

/// <summary>One pipeline stage's share of a step, in seconds; the parts add up to <see cref="Total"/>.</summary>
/// <param name="Compute">Forward and backward kernels of its micro-batches.</param>
/// <param name="TensorParallel">Its tensor-parallel all-reduces (on the critical path: nothing overlaps them).</param>
/// <param name="PipelineSends">Sending activations and gradients to the neighbouring stages.</param>
/// <param name="Bubble">Waiting inside the executed 1F1B schedule.</param>
/// <param name="DataParallel">The distributed optimizer's reduce-scatter and all-gather, the tied embedding's gradient sum, the gradient norm.</param>
/// <param name="Optimizer">Adam on its shard (memory-bound).</param>
public sealed record StageCost(int Stage, double Compute, double TensorParallel, double PipelineSends, double Bubble, double DataParallel, double Optimizer)
{
    public double Total => Compute + TensorParallel + PipelineSends + Bubble + DataParallel + Optimizer;

    /// <summary>Time its links were busy.</summary>
    public double Communication => TensorParallel + PipelineSends + DataParallel;
}

/// <summary>A modelled training step: every stage's share, the step (the slowest stage), its FLOPs and bytes moved.</summary>
/// <param name="ModelFlops">FLOPs of the step over the whole cluster, counted as Megatron-LM does (<see cref="Sim.ModelFlops"/>).</param>
/// <param name="CommBytes">Bytes one rank of each stage sends in a step.</param>
public sealed record StepCost(IReadOnlyList<StageCost> Stages, double ModelFlops, int Gpus, double PeakFlops, IReadOnlyList<double> CommBytes)
{
    /// <summary>The step: every rank has finished (the slowest stage).</summary>
    public double Seconds => Stages.Max(s => s.Total);

    /// <summary>The stage that sets the step time.</summary>
    public StageCost Critical => Stages.MaxBy(s => s.Total)!;

    public double TflopsPerGpu => ModelFlops / Seconds / Gpus / 1e12;

    /// <summary>Model FLOPs utilisation: achieved FLOP/s over the GPUs' dense bf16 peak.</summary>
    public double Mfu => ModelFlops / Seconds / Gpus / PeakFlops;
}

/// <summary>
/// The time of one training step of a stage of the job on a simulated cluster (docs/simulation.md): compute from the
/// model's FLOPs at the fitted efficiency; α–β collectives over NVLink or the network depending on where the
/// members sit (ranks fill servers in order, as the scheduler allocates them); tensor-parallel all-reduces per layer,
/// pipeline sends and the 1F1B bubble from the executed schedule; then the distributed optimizer's reduce-scatter,
/// update and all-gather. The engine overlaps none of its communication with compute, and neither does the model.
/// </summary>
public static class StepCostModel
{
    public static StepCost For(ModelConfig model, ParallelLayout layout, int globalBatch, string precision, SimCluster cluster)
    {
        var h = cluster.Hardware;
        var (tp, pp, dp, m) = (layout.Tp, layout.Pp, layout.Dp, layout.MicroBatches);
        var b = layout.MicroBatchSize(globalBatch);
        var bytes = ElementBytes(precision);
        var activation = (double)b * model.SeqLen * model.Hidden * bytes;
        var layers = model.Layers / pp;
        var tpLink = LinkOf(cluster, Enumerable.Range(0, tp).ToList());
        var times = new StageTimes[pp];
        var tpPerMicroBatch = new double[pp];
        var computePerMicroBatch = new double[pp];
        var sendBytes = new double[pp];
        for (var s = 0; s < pp; s++)
        {
            var first = s == 0;
            var last = s == pp - 1;
            var flops = (layers * ModelFlops.Layer(model, b) + (last ? ModelFlops.Head(model, b) : 0)) / tp;
            var forward = flops / cluster.ComputeRate + layers * ElementwiseBytes(model, b, tp, bytes) / h.MemoryBandwidth;
            var backward = (cluster.Recompute ? 3 : 2) * forward;
            // Megatron's f/g pair: two all-reduces of the activations per layer forward, two backward.
            var tpForward = 2 * layers * Collective.AllReduce(activation, tp, tpLink)
                + (first ? Collective.AllReduce(activation, tp, tpLink) : 0) // vocab-parallel embedding
                + (last ? 3 * Collective.ScalarAllReduce(tp, tpLink) : 0); // vocab-parallel cross-entropy
            var tpBackward = 2 * layers * Collective.AllReduce(activation, tp, tpLink) + (cluster.Recompute ? tpForward : 0);
            var sendForward = last ? 0 : Collective.PointToPoint(activation, LinkOf(cluster, [RankOf(layout, 0, 0, s), RankOf(layout, 0, 0, s + 1)]));
            var sendBackward = first ? 0 : Collective.PointToPoint(activation, LinkOf(cluster, [RankOf(layout, 0, 0, s - 1), RankOf(layout, 0, 0, s)]));
            times[s] = new StageTimes(forward + tpForward, backward + tpBackward, sendForward, sendBackward);
            tpPerMicroBatch[s] = tpForward + tpBackward;
            computePerMicroBatch[s] = forward + backward;
            sendBytes[s] = m * ((s < pp - 1 ? activation : 0) + (s > 0 ? activation : 0))
                + m * (4 * layers + (first ? 1 : 0)) * 2.0 * (tp - 1) / tp * activation;
        }
        var run = PipelineTimeline.Run(times, m);
        var stages = new List<StageCost>(pp);
        var commBytes = new List<double>(pp);
        for (var s = 0; s < pp; s++)
        {
            var parameters = MemoryPlanner.RankParameters(model, layout, s);
            var gradients = (double)parameters * bytes;
            var dpLink = DataParallelLink(cluster, layout, s);
            var dataParallel = Collective.ReduceScatter(gradients, dp, dpLink) + Collective.AllGather(gradients, dp, dpLink)
                + Collective.ScalarAllReduce(layout.WorldSize, cluster.Network());
            var embedding = 0.0;
            if (pp > 1 && (s == 0 || s == pp - 1))
            {
                var rows = (double)model.PaddedVocab / tp * model.Hidden * bytes;
                embedding = Collective.AllReduce(rows, 2, LinkOf(cluster, [RankOf(layout, 0, 0, 0), RankOf(layout, 0, 0, pp - 1)]));
            }
            // Adam on the shard: read the gradient, read and write fp32 master and both moments, write the parameter.
            var optimizer = parameters / (double)dp * (bytes + 3 * 8 + bytes) / h.MemoryBandwidth;
            var compute = m * computePerMicroBatch[s];
            var tensorParallel = m * tpPerMicroBatch[s];
            var sends = run.Busy[s] - compute - tensorParallel;
            stages.Add(new StageCost(s, compute, tensorParallel, sends, run.Idle(s), dataParallel + embedding, optimizer));
            commBytes.Add(sendBytes[s] + 2 * (dp - 1.0) / dp * gradients + (embedding > 0 ? (double)model.PaddedVocab / tp * model.Hidden * bytes : 0));
        }
        return new StepCost(stages, ModelFlops.TrainingStep(model, globalBatch), layout.WorldSize, h.PeakFlops, commBytes);
    }

    /// <summary>Forward only (a loss measured without training): every micro-batch through the pipeline once.</summary>
    public static double EvaluationSeconds(ModelConfig model, ParallelLayout layout, int globalBatch, string precision, SimCluster cluster)
    {
        var b = layout.MicroBatchSize(globalBatch);
        var activation = (double)b * model.SeqLen * model.Hidden * ElementBytes(precision);
        var tpLink = LinkOf(cluster, Enumerable.Range(0, layout.Tp).ToList());
        var layers = model.Layers / layout.Pp;
        var slowest = (layers * ModelFlops.Layer(model, b) + ModelFlops.Head(model, b)) / layout.Tp / cluster.ComputeRate
            + 2 * layers * Collective.AllReduce(activation, layout.Tp, tpLink);
        var send = layout.Pp > 1 ? Collective.PointToPoint(activation, cluster.Network()) : 0;
        return (layout.MicroBatches + layout.Pp - 1) * (slowest + send);
    }

    /// <summary>
    /// Memory traffic of one block's forward outside its matrix products, whose FLOPs are not counted but whose
    /// bytes are: each LayerNorm reads and writes the hidden state (2 × 2 passes of h), each bias-dropout-residual
    /// add reads two and writes one (2 × 3 passes of h) — these replicated on every tensor-parallel rank — while
    /// xPos reads and writes q and k (4 passes of a/tp) and the fused bias-GELU reads and writes the FFN activations
    /// (2 passes of f/tp). Backward moves about twice as much (<see cref="For"/> counts it in the 2× of backward).
    /// </summary>
    public static double ElementwiseBytes(ModelConfig model, int sequences, int tp, int elementBytes) =>
        (double)sequences * model.SeqLen * elementBytes * (10.0 * model.Hidden + (4.0 * model.AttentionWidth + 2.0 * model.FfnSize) / tp);

    /// <summary>Bytes of one activation or gradient element: bf16 unless the job trains in fp32 or fp64.</summary>
    public static int ElementBytes(string precision) => precision switch
    {
        "fp32" => 4,
        "fp64" => 8,
        _ => 2,
    };

    /// <summary>Global rank of (tp, dp, pp), as <see cref="ParallelLayout"/> orders them.</summary>
    private static int RankOf(ParallelLayout layout, int tp, int dp, int pp) => layout.RankOf(new RankCoords(tp, dp, pp));

    /// <summary>NVLink when the members share a server, else the network (ranks fill servers in order).</summary>
    private static Link LinkOf(SimCluster cluster, IReadOnlyList<int> ranks)
    {
        var servers = ranks.Select(r => r / cluster.Hardware.GpusPerServer).Distinct().Count();
        return servers == 1 ? cluster.Nvlink : cluster.Network();
    }

    /// <summary>
    /// The link of stage <paramref name="stage"/>'s data-parallel rings: NVLink inside one server; across servers the
    /// server's adapters, shared by the data-parallel groups that run on it at the same time — a ring passes each
    /// server once, so a group with g members on a server gets g adapters' worth when every GPU runs one group.
    /// </summary>
    private static Link DataParallelLink(SimCluster cluster, ParallelLayout layout, int stage)
    {
        var perServer = cluster.Hardware.GpusPerServer;
        var members = Enumerable.Range(0, layout.Dp).Select(d => RankOf(layout, 0, d, stage)).ToList();
        var servers = members.GroupBy(r => r / perServer).ToList();
        if (servers.Count == 1)
            return cluster.Nvlink;
        // On the busiest server: how many groups (tp rank, stage) share its adapters.
        var server = servers.MaxBy(g => g.Count())!.Key;
        var onServer = Enumerable.Range(server * perServer, perServer).Where(r => r < layout.WorldSize).Select(layout.CoordsOf).ToList();
        var groups = onServer.Select(c => (c.Tp, c.Pp)).Distinct().Count();
        return cluster.Network((double)onServer.Count / groups);
    }
}
