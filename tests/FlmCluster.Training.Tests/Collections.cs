namespace FlmCluster.Training.Tests;

/// <summary>Training runs that share CPU time; run one after another.</summary>
[CollectionDefinition("Training")]
public sealed class TrainingCollection;

/// <summary>Measurements of this process (resident memory) that other tests running at the same time would disturb.</summary>
[CollectionDefinition("Alone", DisableParallelization = true)]
public sealed class AloneCollection;
