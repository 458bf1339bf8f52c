namespace FlmCluster.Grains.Tests;

/// <summary>Clusters that train share the CPU: one at a time.</summary>
[CollectionDefinition("Cluster jobs", DisableParallelization = true)]
public sealed class ClusterJobsCollection;
