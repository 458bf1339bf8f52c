using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Training.Scaling;

/// <summary>One proxy run: its width, learning rate, size and held-out loss along training.</summary>
public sealed record ProxyRun(int Width, double Lr, long Parameters, IReadOnlyList<(long Step, double Loss)> EvalCurve)
{
    public double FinalLoss => EvalCurve[^1].Loss;
}

/// <summary>μP learning-rate sweep: every (width, LR) run and the best LR per width.</summary>
public sealed record SweepResult(IReadOnlyList<ProxyRun> Runs)
{
    public IReadOnlyDictionary<int, ProxyRun> BestByWidth =>
        Runs.GroupBy(r => r.Width).ToDictionary(g => g.Key, g => g.MinBy(r => r.FinalLoss)!);
}

/// <summary>Loss prediction: the ladder, the fit, and the held-out width predicted and then measured.</summary>
public sealed record LossPrediction(
    IReadOnlyList<ProxyRun> Ladder,
    PowerLaw Fit,
    ProxyRun Holdout,
    double Predicted,
    IReadOnlyList<(long Step, double Predicted)> PredictedCurve)
{
    public double Actual => Holdout.FinalLoss;
    public double ErrorPercent => 100 * (Predicted - Actual) / Actual;
}

/// <summary>
/// μP tooling on real training runs (docs/model.md, μP): proxies differ only in width (heads of a fixed size;
/// the μP base width stays that of the config, so multipliers follow m = width / base), see the same data in
/// the same order, and are scored on the same held-out batches.
/// </summary>
public static class ScalingExperiments
{
    /// <summary>Global sample index of the evaluation batches: far from the training cursor.</summary>
    public const long EvalStart = 50_000_000;

    /// <summary>Parameters outside the embedding (blocks and final LayerNorm): the N of the scaling law.</summary>
    public static long NonEmbeddingParameters(ModelConfig m) => m.Layers * m.BlockParameters + 2L * m.Hidden;

    /// <summary>The job at another width: heads of the same size, FFN 4 × width, everything else equal.</summary>
    public static JobConfig AtWidth(JobConfig job, int width)
    {
        var head = job.Model.HeadDim;
        if (width % head != 0)
            throw new FlmUserException($"width {width} is not a multiple of the head size {head}; widths grow by whole heads");
        return JobValidator.Validate(job with { Model = job.Model with { Hidden = width, Heads = width / head, HeadSize = 0, Ffn = 0 } });
    }

    public static ProxyRun Train(JobConfig job, TokenDataset data, int evalEvery, int evalBatches, Action<string>? log = null)
    {
        using var engine = LocalEngine.Create(job, data);
        var curve = new List<(long, double)>();
        double Eval() => Enumerable.Range(0, evalBatches).Average(i => engine.EvaluateLoss(EvalStart + (long)i * job.Train.GlobalBatch));
        for (var step = 1; step <= job.Train.Steps; step++)
        {
            engine.RunStep();
            if (step % evalEvery == 0 || step == job.Train.Steps)
                curve.Add((step, Eval()));
        }
        var run = new ProxyRun(job.Model.Hidden, job.Optimizer.Lr, NonEmbeddingParameters(job.Model), curve);
        log?.Invoke($"width {run.Width,5} ({run.Parameters,10:N0} parameters), lr {run.Lr:0.0e+00}: held-out loss {run.FinalLoss:0.0000}");
        return run;
    }

    /// <summary>Checks sweep widths and learning rates before anything trains.</summary>
    public static void ValidateSweep(JobConfig job, IReadOnlyList<int> widths, IReadOnlyList<double> lrs)
    {
        if (lrs.Any(lr => !double.IsFinite(lr) || lr <= 0))
            throw new FlmUserException($"learning rates must be positive and finite (got {string.Join(", ", lrs)})");
        foreach (var width in widths)
            AtWidth(job, width);
    }

    public static SweepResult Sweep(JobConfig job, TokenDataset data, IReadOnlyList<int> widths, IReadOnlyList<double> lrs, int evalEvery, int evalBatches, Action<string>? log = null)
    {
        ValidateSweep(job, widths, lrs);
        var runs = new List<ProxyRun>();
        foreach (var width in widths)
        {
            var atWidth = AtWidth(job, width);
            foreach (var lr in lrs)
                runs.Add(Train(atWidth with { Optimizer = atWidth.Optimizer with { Lr = lr, MinLr = lr * atWidth.Optimizer.MinLr / atWidth.Optimizer.Lr } }, data, evalEvery, evalBatches, log));
        }
        return new SweepResult(runs);
    }

    /// <summary>Checks a ladder and held-out width against the job before anything trains.</summary>
    public static void ValidateLadder(JobConfig job, IReadOnlyList<int> ladder, int holdout)
    {
        if (ladder.Count < 3)
            throw new FlmUserException("the width ladder needs at least three widths to fit L(N) = a·N^b + c");
        if (ladder.Distinct().Count() != ladder.Count)
            throw new FlmUserException("the width ladder lists a width twice");
        if (holdout <= ladder.Max())
            throw new FlmUserException($"the held-out width {holdout} must be larger than the ladder's largest ({ladder.Max()})");
        foreach (var width in ladder.Append(holdout))
            AtWidth(job, width);
    }

    public static LossPrediction PredictLoss(JobConfig job, TokenDataset data, IReadOnlyList<int> ladder, int holdout, int evalEvery, int evalBatches, Action<string>? log = null)
    {
        ValidateLadder(job, ladder, holdout);
        var runs = ladder.Select(w => Train(AtWidth(job, w), data, evalEvery, evalBatches, log)).ToList();
        var n = runs.Select(r => (double)r.Parameters).ToList();
        var fit = PowerLaw.Fit(n, runs.Select(r => r.FinalLoss).ToList());
        var holdoutJob = AtWidth(job, holdout);
        var holdoutN = NonEmbeddingParameters(holdoutJob.Model);
        var predicted = fit.Predict(holdoutN);
        log?.Invoke($"fit L(N) = {fit.A:0.###e+0}·N^{fit.B:0.0000} + {fit.C:0.0000} (rmse {fit.Rmse:0.0e+00}); predicted held-out loss at width {holdout}: {predicted:0.0000}");
        // A prediction for every evaluation step: the law fitted on the ladder at that step.
        var curve = runs[0].EvalCurve.Select((point, i) =>
            (point.Step, PowerLaw.Fit(n, runs.Select(r => r.EvalCurve[i].Loss).ToList()).Predict(holdoutN))).ToList();
        var measured = Train(holdoutJob, data, evalEvery, evalBatches, log);
        return new LossPrediction(runs, fit, measured, predicted, curve);
    }
}
