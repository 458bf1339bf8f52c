using FlmCluster.Training.Sim;

namespace FlmCluster.Grains.Sim;

/// <summary>
/// What a silo of a simulated cluster (<c>sim:N</c> devices) models its GPUs with: the cluster's hardware and
/// fitted constants, and the virtual clock its jobs run on (shared by every silo of the cluster). In-process
/// simulations may also keep a ledger of the samples every step trained.
/// </summary>
public sealed record FlmSimulation(SimCluster Cluster, VirtualClock Clock, SampleLedger? Samples = null);
