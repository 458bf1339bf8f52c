using System.Diagnostics;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Model;
using FlmCluster.Training.Optim;
using FlmCluster.Training.Parallel;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Engine;

/// <summary>What the coordinator tells every rank for one step.</summary>
/// <param name="Step">0-based step number.</param>
/// <param name="FirstSample">Global index of the step's first sample (the data cursor).</param>
/// <param name="Lr">Peak-group learning rate for this step.</param>
/// <param name="MaskValue">Growth mask value c (1 = no masks).</param>
public sealed record StepPlan(long Step, long FirstSample, double Lr, double MaskValue = 1.0);

/// <summary>One rank's account of a step.</summary>
/// <param name="CommTime">Time in communication, pipeline receives included.</param>
/// <param name="PipelineWait">The part of <paramref name="CommTime"/> spent waiting in pipeline receives for the neighbouring stage.</param>
public sealed record RankStepReport(
    long Step,
    int Rank,
    bool ReportsLoss,
    double LossSum,
    long Tokens,
    double GradNorm,
    bool Skipped,
    TimeSpan Elapsed,
    TimeSpan CommTime,
    long CommBytes,
    TimeSpan PipelineWait = default);

/// <summary>
/// Everything one rank (one GPU) holds and does: its pipeline stage and tensor shard of the model, its
/// flat parameter/gradient buffers, its distributed-optimizer shard, and the step itself (micro-batches
/// with 1F1B when pipelined, tied-embedding gradient sync, optimizer update). Ranks meet only through
/// <see cref="ICollectives"/>, so the same class runs threads in one process or grains across silos.
/// </summary>
public sealed class RankTrainer : IDisposable
{
    private readonly ICollectives _comm;
    private readonly TokenDataset _data;
    private readonly SampleOrder _order;
    private readonly int _globalBatch;
    private readonly int _microBatchSize;

    public JobConfig Job { get; }
    public RankGroups Groups { get; }
    public ParallelLayout Layout => Groups.Layout;
    public FlmModel Model { get; }
    public FlatParameters Flat { get; }
    public DistributedAdamW Optimizer { get; }

    public RankTrainer(JobConfig job, RankGroups groups, ICollectives comm, TokenDataset data, GrowthShape? growth = null)
    {
        Job = job;
        Groups = groups;
        _comm = comm;
        _data = data;
        var config = job.Model;
        _order = new SampleOrder(data.TokenCount, config.SeqLen, job.Data.Seed);
        _globalBatch = job.Train.GlobalBatch;
        _microBatchSize = Layout.MicroBatchSize(_globalBatch);
        var device = TorchEnvironment.ResolveDevice(job.Train.Device);
        var dtype = TorchEnvironment.ResolvePrecision(job.Train.Precision, job.Train.Device);
        var tp = new TensorParallelContext(comm, groups.Tensor);
        Model = new FlmModel(config, StagePlan.For(config, groups.Coords.Pp, Layout.Pp), tp, dtype, device, growth);
        ModelInitializer.Initialize(Model, job.Train.Seed);
        Flat = new FlatParameters(Model.Parameters, groups.Coords.Tp, Layout.Dp);
        Optimizer = new DistributedAdamW(Flat, comm, groups.Data, groups.World, job.Optimizer, config.WidthMult);
    }

    /// <summary>
    /// Called right before the optimizer update, gradients summed: a seam for fault injection in tests (a
    /// corrupted gradient or weights); null in normal runs.
    /// </summary>
    public Action<StepPlan, RankTrainer>? BeforeUpdate { get; set; }

    /// <summary>Fingerprint of the data this rank reads (recorded in checkpoints).</summary>
    public string DataFingerprint => _data.Fingerprint;

    /// <summary>Whether this rank's report carries the loss (last stage, TP rank 0: one per data-parallel replica).</summary>
    public bool ReportsLoss => Groups.IsLastStage && Groups.Coords.Tp == 0;

    public RankStepReport TrainStep(StepPlan plan)
    {
        var started = Stopwatch.GetTimestamp();
        var (bytes0, comm0) = _comm.Stats.Snapshot();
        var wait0 = _comm.Stats.ReceiveTime;
        double lossSum;
        using (NewDisposeScope())
        {
            Model.train();
            Model.SetMaskValue(plan.MaskValue);
            Flat.ZeroGrads();
            var firstSample = plan.FirstSample + (long)Groups.Coords.Dp * (_globalBatch / Layout.Dp);
            // Each micro-batch's loss is divided by the tokens of the whole global batch, so accumulated
            // gradients summed over micro-batches and DP ranks are the gradient of the global mean loss.
            var normalizer = (double)_globalBatch * Job.Model.SeqLen;
            lossSum = Layout.Pp == 1
                ? RunMicroBatches(firstSample, normalizer)
                : RunPipeline(firstSample, normalizer);
            if (Groups.Embedding is { } embeddingGroup)
            {
                // The first and last stage both hold the tied embedding: sum their gradients.
                var entry = Flat.Entry("transformer.wte.weight");
                _comm.AllReduce(embeddingGroup, Flat.Grads.narrow(0, entry.Offset, entry.Count));
            }
        }
        BeforeUpdate?.Invoke(plan, this);
        var update = Optimizer.Update(plan.Lr);
        var (bytes1, comm1) = _comm.Stats.Snapshot();
        return new RankStepReport(plan.Step, Groups.Rank, ReportsLoss, ReportsLoss ? lossSum : 0,
            ReportsLoss ? (long)(_globalBatch / Layout.Dp) * Job.Model.SeqLen : 0,
            update.GradNorm, update.Skipped, Stopwatch.GetElapsedTime(started), comm1 - comm0, bytes1 - bytes0, _comm.Stats.ReceiveTime - wait0);
    }

    private double RunMicroBatches(long firstSample, double normalizer)
    {
        double lossSum = 0;
        for (var k = 0; k < Layout.MicroBatches; k++)
        {
            using var scope = NewDisposeScope();
            var (ids, targets) = LoadMicroBatch(firstSample, k);
            var dropout = Dropout(firstSample, k);
            var sum = Model.LossSum(Model.RunBlocks(Model.Embed(ids, dropout), dropout: dropout), targets);
            lossSum += sum.ToScalar().ToDouble();
            (sum / normalizer).backward();
        }
        return lossSum;
    }

    private double RunPipeline(long firstSample, double normalizer)
    {
        double lossSum = 0;
        var shape = new long[] { _microBatchSize, Job.Model.SeqLen, Job.Model.Hidden };
        var inFlight = new Queue<(Tensor? Input, Tensor Output)>();
        foreach (var action in PipelineSchedule.OneForwardOneBackward(Groups.Coords.Pp, Layout.Pp, Layout.MicroBatches))
        {
            var k = action.MicroBatch;
            if (action.Op == PipelineOp.Forward)
            {
                // A scope per forward frees the micro-batch's intermediate handles; autograd keeps what backward needs.
                using var scope = NewDisposeScope();
                var dropout = Dropout(firstSample, k);
                Tensor? input = null;
                Tensor hidden;
                if (Groups.IsFirstStage)
                    hidden = Model.Embed(LoadMicroBatch(firstSample, k).Ids, dropout);
                else
                {
                    input = empty(shape, dtype: Model.DType, device: Model.Device);
                    _comm.Recv(input, Groups.PreviousStageRank!.Value, 2 * k);
                    input.requires_grad_(true);
                    hidden = input;
                }
                var output = Model.RunBlocks(hidden, dropout: dropout);
                if (Groups.IsLastStage)
                {
                    var sum = Model.LossSum(output, LoadMicroBatch(firstSample, k).Targets);
                    lossSum += sum.ToScalar().ToDouble();
                    output = sum / normalizer;
                }
                else
                    _comm.Send(output.detach().contiguous(), Groups.NextStageRank!.Value, 2 * k);
                input?.MoveToOuterDisposeScope();
                inFlight.Enqueue((input, output.MoveToOuterDisposeScope()));
            }
            else
            {
                var (input, output) = inFlight.Dequeue();
                using var scope = NewDisposeScope();
                if (Groups.IsLastStage)
                    output.backward();
                else
                {
                    var grad = empty(shape, dtype: Model.DType, device: Model.Device);
                    _comm.Recv(grad, Groups.NextStageRank!.Value, 2 * k + 1);
                    autograd.backward([output], [grad]);
                }
                if (input is not null)
                    _comm.Send(input.grad!.contiguous(), Groups.PreviousStageRank!.Value, 2 * k + 1);
                input?.Dispose();
                output.Dispose();
            }
        }
        return lossSum;
    }

    /// <summary>
    /// Σ token losses of the global batch starting at <paramref name="firstSample"/> with no gradient and no
    /// update (reported by the same ranks that report training loss). Every rank of the job must call it.
    /// </summary>
    public (double LossSum, long Tokens) EvaluateLoss(long firstSample, double maskValue)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Model.eval();
        Model.SetMaskValue(maskValue);
        var start = firstSample + (long)Groups.Coords.Dp * (_globalBatch / Layout.Dp);
        var shape = new long[] { _microBatchSize, Job.Model.SeqLen, Job.Model.Hidden };
        double lossSum = 0;
        for (var k = 0; k < Layout.MicroBatches; k++)
        {
            using var inner = NewDisposeScope();
            Tensor hidden;
            if (Groups.IsFirstStage)
                hidden = Model.Embed(LoadMicroBatch(start, k).Ids);
            else
            {
                hidden = empty(shape, dtype: Model.DType, device: Model.Device);
                _comm.Recv(hidden, Groups.PreviousStageRank!.Value, 2 * k);
            }
            var output = Model.RunBlocks(hidden);
            if (Groups.IsLastStage)
                lossSum += Model.LossSum(output, LoadMicroBatch(start, k).Targets).ToScalar().ToDouble();
            else
                _comm.Send(output.contiguous(), Groups.NextStageRank!.Value, 2 * k);
        }
        return ReportsLoss ? (lossSum, (long)(_globalBatch / Layout.Dp) * Job.Model.SeqLen) : (0, 0);
    }

    /// <summary>Global index of the first sample of micro-batch k of the share starting at <paramref name="firstSample"/>.</summary>
    private long MicroBatchStart(long firstSample, int k) => firstSample + (long)k * _microBatchSize;

    /// <summary>Inputs and next-token targets [mbs, S] of micro-batch k of this DP rank's share.</summary>
    private (Tensor Ids, Tensor Targets) LoadMicroBatch(long firstSample, int k)
    {
        var seq = Job.Model.SeqLen;
        var start = MicroBatchStart(firstSample, k);
        var windows = new long[_microBatchSize * (seq + 1)];
        for (var i = 0; i < _microBatchSize; i++)
            _data.CopyTokens(_order.StartToken(start + i), windows.AsSpan(i * (seq + 1), seq + 1));
        var batch = tensor(windows, [_microBatchSize, seq + 1], dtype: ScalarType.Int64).to(Model.Device);
        return (batch.narrow(1, 0, seq), batch.narrow(1, 1, seq));
    }

    /// <summary>Dropout masks of micro-batch k, keyed by its samples' global indices so that no layout changes them.</summary>
    private DropoutMasks Dropout(long firstSample, int k)
    {
        var start = MicroBatchStart(firstSample, k);
        return new DropoutMasks(Job.Train.Seed, Enumerable.Range(0, _microBatchSize).Select(i => start + i).ToArray());
    }

    public void Dispose()
    {
        Optimizer.Dispose();
        Flat.Dispose();
        Model.Dispose();
    }
}
