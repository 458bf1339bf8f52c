using FlmCluster.Training.Engine;

namespace FlmCluster.Training.Sim;

/// <summary>How long one pipeline stage takes for one micro-batch: forward and backward (compute and its tensor-parallel collectives), and its sends.</summary>
/// <param name="SendForward">Sending the activations to the next stage (blocking, as the engine's sends are).</param>
/// <param name="SendBackward">Sending the input gradient to the previous stage.</param>
public readonly record struct StageTimes(double Forward, double Backward, double SendForward, double SendBackward);

/// <summary>Where each stage of an executed pipeline ended and how long it was busy.</summary>
public sealed record PipelineRun(IReadOnlyList<double> Finish, IReadOnlyList<double> Busy)
{
    public double Makespan => Finish.Max();

    /// <summary>Idle time of stage s before its last action ended.</summary>
    public double Idle(int stage) => Finish[stage] - Busy[stage];
}

/// <summary>
/// Executes the engine's 1F1B schedule (<see cref="PipelineSchedule.OneForwardOneBackward"/>) in modelled time: each
/// stage runs its actions in the schedule's order; a forward starts when the previous stage's forward of the same
/// micro-batch has been sent, a backward when the next stage's backward has. The bubble is what this execution
/// leaves idle, not a formula.
/// </summary>
public static class PipelineTimeline
{
    public static PipelineRun Run(IReadOnlyList<StageTimes> stages, int microBatches)
    {
        var p = stages.Count;
        var actions = Enumerable.Range(0, p).Select(s => PipelineSchedule.OneForwardOneBackward(s, p, microBatches)).ToArray();
        var forwardDone = new double[p, microBatches];
        var backwardDone = new double[p, microBatches];
        for (var s = 0; s < p; s++)
            for (var k = 0; k < microBatches; k++)
                forwardDone[s, k] = backwardDone[s, k] = double.NaN;
        var next = new int[p];
        var free = new double[p];
        var busy = new double[p];
        var left = actions.Sum(a => a.Count);
        while (left > 0)
        {
            var progressed = false;
            for (var s = 0; s < p; s++)
            {
                while (next[s] < actions[s].Count)
                {
                    var action = actions[s][next[s]];
                    var k = action.MicroBatch;
                    var forward = action.Op == PipelineOp.Forward;
                    var dependency = forward
                        ? (s > 0 ? forwardDone[s - 1, k] : 0)
                        : (s < p - 1 ? backwardDone[s + 1, k] : 0);
                    if (double.IsNaN(dependency))
                        break;
                    var t = stages[s];
                    var duration = forward
                        ? t.Forward + (s < p - 1 ? t.SendForward : 0)
                        : t.Backward + (s > 0 ? t.SendBackward : 0);
                    var end = Math.Max(free[s], dependency) + duration;
                    if (forward)
                        forwardDone[s, k] = end;
                    else
                        backwardDone[s, k] = end;
                    free[s] = end;
                    busy[s] += duration;
                    next[s]++;
                    left--;
                    progressed = true;
                }
            }
            if (!progressed)
                throw new InvalidOperationException("the pipeline schedule waits on itself");
        }
        return new PipelineRun(free, busy);
    }
}
