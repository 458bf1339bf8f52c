using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.DataPlane;

/// <summary>What a worker brings to a job's collectives: who it is in the job and where its messages arrive.</summary>
public sealed record CollectivesSession(string JobId, int Incarnation, int Rank, IReadOnlyList<string> RankWorkers, WorkerMailbox Mailbox);

/// <summary>
/// Makes the collectives a worker trains with. One implementation is registered per silo (Flm:DataPlane), so a
/// transport — Orleans messages today, sockets or NCCL later — is a registration, not a change to the worker.
/// </summary>
public interface ICollectivesFactory
{
    /// <summary>The transport's name, as the setting gives it.</summary>
    string Name { get; }

    ICollectives Create(CollectivesSession session);
}

/// <summary>Collectives over the Orleans data plane: in-process between workers of one silo, chunked grain calls across silos.</summary>
public sealed class OrleansCollectivesFactory(LocalWorkers local, IGrainFactory grains, FlmNodeOptions node) : ICollectivesFactory
{
    public const string TransportName = "orleans";

    public string Name => TransportName;

    public ICollectives Create(CollectivesSession session) =>
        new OrleansCollectives(session.JobId, session.Incarnation, session.Rank, session.RankWorkers, session.Mailbox, local, grains, node.CollectiveTimeout);
}
