using FlmCluster.Training.Engine;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// Fault injection for tests: called on a rank's device thread before each step's optimizer update, it may
/// corrupt the rank's gradients or weights. No silo registers one; a test's silos do.
/// </summary>
public interface IStepFaults
{
    void BeforeUpdate(string worker, string jobId, int rank, StepPlan plan, RankTrainer trainer);
}
