using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Parallel;
using FlmCluster.Grains.DataPlane.Sockets;

namespace FlmCluster.Grains.DataPlane;

/// <summary>
/// What a worker brings to a job's collectives: who it is in the job, where its messages arrive, and the key the
/// ranks of this build share (<see cref="SessionKeys"/>; transports that connect ranks directly prove it).
/// </summary>
public sealed record CollectivesSession(string JobId, int Incarnation, int Rank, IReadOnlyList<string> RankWorkers, WorkerMailbox Mailbox, string SessionKey);

/// <summary>
/// Makes the collectives a worker trains with. One implementation is registered per silo (Flm:DataPlane), so a
/// transport — Orleans messages, sockets, NCCL — is a registration, not a change to the worker.
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

/// <summary>
/// Collectives over the socket data plane (<see cref="SocketCollectives"/>): a connection per pair of ranks on
/// different silos, authenticated with the assignment's session key; in memory between ranks of one silo.
/// </summary>
public sealed class SocketCollectivesFactory(SocketDataPlane plane, DataEndpoints endpoints, FlmNodeOptions node) : ICollectivesFactory
{
    public const string TransportName = "socket";

    public string Name => TransportName;

    public ICollectives Create(CollectivesSession session)
    {
        var key = SessionKeys.Parse(session.SessionKey)
            ?? throw new ClusterRequestException($"job {session.JobId} came without a data-plane session key; the socket data plane needs the one its coordinator assigns");
        var socket = plane.Open(new SessionSpec(session.JobId, session.Incarnation, session.Rank, session.RankWorkers, key, node.Node, endpoints.Of, node.CollectiveTimeout));
        session.Mailbox.Closing(session.JobId, session.Incarnation).Register(() => socket.Leave("the worker left the job"));
        return new SocketCollectives(session.Rank, socket);
    }
}

/// <summary>
/// Collectives over NCCL (<see cref="Nccl.NcclCollectives"/>) for CUDA builds, with the socket data plane carrying the
/// unique ids that start NCCL's communicators. Refused on servers without CUDA devices. Untested until run on GPUs.
/// </summary>
public sealed class NcclCollectivesFactory(SocketCollectivesFactory sockets, FlmNodeOptions node) : ICollectivesFactory
{
    public const string TransportName = "nccl";

    public string Name => TransportName;

    public ICollectives Create(CollectivesSession session)
    {
        if (node.Devices.Kind != "cuda" || !TorchSharp.torch.cuda.is_available())
            throw new ClusterRequestException($"the nccl data plane needs CUDA GPUs and a CUDA build (-p:FlmDevice=cuda); server {node.Node} has {node.Devices}");
        var worker = session.RankWorkers[session.Rank];
        var device = int.Parse(worker[(worker.IndexOf("/gpu", StringComparison.Ordinal) + 4)..], System.Globalization.CultureInfo.InvariantCulture);
        var nccl = new Nccl.NcclCollectives(session.Rank, (SocketCollectives)sockets.Create(session), device, node.CollectiveTimeout);
        session.Mailbox.Closing(session.JobId, session.Incarnation).Register(() => nccl.Abort("the worker left the job"));
        return nccl;
    }
}
