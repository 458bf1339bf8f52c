using FlmCluster.Grains.DataPlane;
using FlmCluster.Grains.DataPlane.Sockets;
using FlmCluster.Grains.History;
using FlmCluster.Grains.Placement;
using FlmCluster.Grains.Security;
using FlmCluster.Grains.Sim;
using FlmCluster.Grains.Storage;
using FlmCluster.Grains.Workers;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans.Configuration;
using Orleans.Runtime.Hosting;
using Orleans.Runtime.MembershipService.SiloMetadata;

namespace FlmCluster.Grains;

/// <summary>What one server contributes to the cluster.</summary>
public sealed record FlmNodeOptions
{
    /// <summary>The server's name; its GPU workers are "Node/gpuK".</summary>
    public required string Node { get; init; }

    public DeviceSpec Devices { get; init; } = new("cpu", 1);

    /// <summary>How long a worker waits for a peer's tensor before failing the step.</summary>
    public TimeSpan CollectiveTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// How long a job waits for lost servers to come back (coordinators on this silo) before it continues on
    /// the GPUs that remain with fewer data-parallel replicas.
    /// </summary>
    public TimeSpan WorkerWait { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Replica memory this silo may hold for its workers, all jobs together (0: half the memory available to the process).</summary>
    public long ReplicaBudgetBytes { get; init; }

    /// <summary>The folders jobs may write checkpoints to and read data from on this server.</summary>
    public FileRoots Roots { get; init; } = FileRoots.Default;

    /// <summary>How long a worker's device is given to come back after an abort before it counts as hung.</summary>
    public TimeSpan HangGrace { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Peak FLOP/s of one of this server's devices, for MFU (0: unknown, no MFU for jobs on it).</summary>
    public double PeakFlops { get; init; }

    /// <summary>Torch intra-op threads per process (0: cores ÷ local workers).</summary>
    public int TorchThreads { get; init; }

    /// <summary>How tensors travel between workers (<see cref="ICollectivesFactory"/>): "orleans", "socket" or "nccl".</summary>
    public string DataPlane { get; init; } = OrleansCollectivesFactory.TransportName;

    /// <summary>The data planes a silo can be configured with.</summary>
    public static IReadOnlyList<string> DataPlanes { get; } =
        [OrleansCollectivesFactory.TransportName, SocketCollectivesFactory.TransportName, NcclCollectivesFactory.TransportName];

    /// <summary>
    /// The socket data plane's port, addresses, TLS and patience (used when <see cref="DataPlane"/> is "socket", and by
    /// "nccl" to hand NCCL's unique ids to the ranks).
    /// </summary>
    public SocketDataPlaneOptions Sockets { get; init; } = new();

    /// <summary>Who may call what (<see cref="AccessOptions"/>); null: open, with the key derived from the service id.</summary>
    public AccessOptions? Access { get; init; }

    /// <summary>
    /// The Orleans system targets a client may call, by grain type name (without Orleans' "sys.svc." prefix): the
    /// manifest every client reads from its gateway. A test host adds its own hooks.
    /// </summary>
    public IReadOnlyList<string> ClientSystemTargets { get; init; } = ["manifest"];

    /// <summary>
    /// Set on every silo of a simulated cluster: its jobs run on the simulation's virtual clock, and its sim devices
    /// (<c>sim:N</c>, which need it) model their work with the simulation's cost model.
    /// </summary>
    public FlmSimulation? Simulation { get; init; }
}

public static class FlmSiloBuilderExtensions
{
    /// <summary>Name of the grain storage provider that coordinators and the scheduler persist to.</summary>
    public const string StorageName = "flm";

    /// <summary>
    /// Service key of the clock jobs run on (coordinators, the scheduler): the silo's <see cref="TimeProvider"/>
    /// unless the node is part of a simulation, whose virtual clock it then is. Orleans itself keeps real time.
    /// </summary>
    public const string JobClock = "flm.jobs";

    /// <summary>
    /// Registers FlmCluster's grains and per-silo services on a silo: node metadata, the node-pinned and
    /// control-plane placement directors, the local worker registry (in-process tensor exchange), the
    /// silo's dataset cache and the access filters (internal methods for silos only, client roles). Clustering,
    /// storage, reminders and TLS are the host's choice.
    /// </summary>
    public static ISiloBuilder AddFlmNode(this ISiloBuilder silo, FlmNodeOptions options)
    {
        if (options.Devices.Kind == "sim" && options.Simulation is null)
            throw new ArgumentException("sim devices model their work: the node needs a simulation (FlmNodeOptions.Simulation: hardware and a virtual clock)");
        if (!FlmNodeOptions.DataPlanes.Contains(options.DataPlane))
            throw new ArgumentException($"data plane '{options.DataPlane}' is not one of {string.Join(", ", FlmNodeOptions.DataPlanes)}");
        if (options.DataPlane == NcclCollectivesFactory.TransportName && options.Devices.Kind != "cuda")
            throw new ArgumentException($"data plane nccl needs CUDA GPUs and a CUDA build (-p:FlmDevice=cuda), but this server has {options.Devices}; use socket");
        var metadata = new Dictionary<string, string>
        {
            [NodeMetadata.Node] = options.Node,
            [NodeMetadata.Devices] = options.Devices.ToString(),
        };
        if (options.DataPlane is SocketCollectivesFactory.TransportName or NcclCollectivesFactory.TransportName)
        {
            // Bound now, so that the port (any free one when Flm:DataPort is 0) goes into the metadata peers read.
            var plane = new SocketDataPlane(options.Sockets);
            metadata[NodeMetadata.DataEndpoint] = plane.Endpoint.ToString();
            silo.Services.AddSingleton(plane);
            silo.Services.AddSingleton<DataEndpoints>();
            silo.Services.AddSingleton<SocketCollectivesFactory>();
            silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, SocketDataPlaneLifecycle>();
            if (options.DataPlane == NcclCollectivesFactory.TransportName)
                silo.Services.AddSingleton<ICollectivesFactory, NcclCollectivesFactory>();
            else
                silo.Services.AddSingleton<ICollectivesFactory>(sp => sp.GetRequiredService<SocketCollectivesFactory>());
        }
        else
            silo.Services.AddSingleton<ICollectivesFactory, OrleansCollectivesFactory>();
        silo.UseSiloMetadata(metadata);
        // A worker's rank lives only in its activation. With Orleans' default directory, a silo that dies takes its
        // directory partition with it, and every other silo deactivates the activations registered there: a
        // control-plane silo's death would wipe ranks on healthy GPU servers. The distributed directory recovers
        // a lost partition from the surviving silos' activations instead, so only the dead silo's grains are lost.
#pragma warning disable ORLEANSEXP003 // experimental in Orleans 10; Orleans' own test clusters run on it
        silo.AddDistributedGrainDirectory();
#pragma warning restore ORLEANSEXP003
        silo.AddPlacementDirector<NodePinnedPlacementStrategy, NodePinnedPlacementDirector>();
        silo.AddPlacementDirector<ControlPlanePlacementStrategy, ControlPlanePlacementDirector>();
        silo.AddPlacementDirector<SiloPinnedPlacementStrategy, SiloPinnedPlacementDirector>();
        silo.Services.AddSingleton<NodeDirectory>();
        silo.Services.AddSingleton(options);
        silo.Services.AddSingleton<LocalWorkers>();
        silo.Services.AddSingleton<SiloDatasets>();
        silo.Services.AddSingleton<SiloReplicas>();
        if (options.Devices.Kind == "sim")
            silo.Services.AddSingleton<IRankExecutors, SimRankExecutors>();
        else
            silo.Services.AddSingleton<IRankExecutors, TorchRankExecutors>();
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, WorkersLeaveOnStop>();
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, Scheduling.DeadSiloWatch>();
        silo.Services.Configure<Orleans.Serialization.OrleansJsonSerializerOptions>(ConfigureStateJson);
        silo.Services.TryAddSingleton(TimeProvider.System);
        silo.Services.AddSingleton(sp => options.Access ?? AccessOptions.Open(sp.GetRequiredService<IOptions<ClusterOptions>>().Value.ServiceId));
        silo.Services.AddSingleton<ClientAuthenticator>();
        silo.AddIncomingGrainCallFilter<AccessFilter>();
        silo.AddOutgoingGrainCallFilter<InternalCallMarker>();
        if (options.Simulation is { } simulation)
            silo.Services.AddKeyedSingleton<TimeProvider>(JobClock, simulation.Clock);
        silo.Services.TryAddKeyedSingleton<TimeProvider>(JobClock, (sp, _) => sp.GetRequiredService<TimeProvider>());
        return silo;
    }

    /// <summary>
    /// Persisted grain state is plain JSON, without .NET type names: state reads back whatever type built a
    /// collection (a collection expression makes a compiler-generated one that cannot be named), and no type
    /// named in storage is ever instantiated (the state holds no polymorphic values). Every object read is a new
    /// one: filling a default value in place would change an instance other state shares.
    /// </summary>
    public static void ConfigureStateJson(Orleans.Serialization.OrleansJsonSerializerOptions options)
    {
        options.JsonSerializerSettings.TypeNameHandling = Newtonsoft.Json.TypeNameHandling.None;
        options.JsonSerializerSettings.ObjectCreationHandling = Newtonsoft.Json.ObjectCreationHandling.Replace;
    }

    /// <summary>
    /// Durable grain storage and job histories in files under <paramref name="directory"/> (shared by every silo on
    /// one machine).
    /// </summary>
    public static ISiloBuilder AddFlmFileStorage(this ISiloBuilder silo, string directory)
    {
        silo.Services.AddGrainStorage(StorageName, (sp, name) => new FileGrainStorage(directory, sp.GetRequiredService<Orleans.Storage.IGrainStorageSerializer>()));
        silo.Services.AddSingleton<IJobHistoryStore>(new FileJobHistory(directory));
        return silo;
    }
}

/// <summary>Accepts data connections while the silo runs; when it stops, the port closes and the ranks' sessions end.</summary>
internal sealed class SocketDataPlaneLifecycle(SocketDataPlane plane, ILogger<SocketDataPlane> log) : ILifecycleParticipant<ISiloLifecycle>
{
    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(SocketDataPlane), ServiceLifecycleStage.RuntimeInitialize,
            _ =>
            {
                plane.Start(log);
                return Task.CompletedTask;
            },
            _ =>
            {
                plane.Dispose();
                return Task.CompletedTask;
            });
}

/// <summary>
/// When the silo stops, its workers leave their jobs first: a step in flight fails at once (its peers' collectives
/// too, once the coordinator aborts them) instead of holding the shutdown until a timeout.
/// </summary>
internal sealed class WorkersLeaveOnStop(LocalWorkers workers) : ILifecycleParticipant<ISiloLifecycle>
{
    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(WorkersLeaveOnStop), ServiceLifecycleStage.Active, _ => Task.CompletedTask, _ =>
        {
            workers.LeaveAll();
            return Task.CompletedTask;
        });
}
