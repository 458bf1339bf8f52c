using System.Collections.Concurrent;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Runtime.Placement;

namespace FlmCluster.Grains.Placement;

/// <summary>Which server a silo is, its devices, and where its socket data plane listens (when it runs one).</summary>
public sealed record NodeIdentity(string Node, DeviceSpec Devices, string? DataEndpoint = null);

/// <summary>
/// Which server every silo is. First from the silo metadata Orleans caches; a silo whose metadata is not in
/// that cache (a metadata fetch that fails while the silo is still starting is not retried until membership
/// changes again, which in a steady cluster may be never) is asked directly, through its own
/// <see cref="INodeInfoGrain"/>. Only answers are remembered, so a failed question is asked again next time.
/// </summary>
public sealed class NodeDirectory(ISiloMetadataCache metadata, IServiceProvider services)
{
    private static readonly TimeSpan AskTimeout = TimeSpan.FromSeconds(5);
    private readonly ConcurrentDictionary<SiloAddress, NodeIdentity> _answers = new();

    /// <summary>What the metadata cache (or an earlier answer) says, without asking.</summary>
    public NodeIdentity? Known(SiloAddress silo)
    {
        var meta = metadata.GetSiloMetadata(silo).Metadata;
        if (meta.TryGetValue(NodeMetadata.Node, out var node) && meta.TryGetValue(NodeMetadata.Devices, out var devices) && DeviceSpec.TryParse(devices, out var spec))
            return new NodeIdentity(node, spec, meta.GetValueOrDefault(NodeMetadata.DataEndpoint));
        return _answers.GetValueOrDefault(silo);
    }

    /// <summary>The silo's identity, asking the silo when the cache lacks it; null when it does not answer.</summary>
    public async Task<NodeIdentity?> Resolve(SiloAddress silo)
    {
        if (Known(silo) is { } known)
            return known;
        try
        {
            var grains = services.GetRequiredService<IGrainFactory>();
            var answer = await grains.GetGrain<INodeInfoGrain>(silo.ToParsableString()).Describe().WaitAsync(AskTimeout);
            if (!DeviceSpec.TryParse(answer.Devices, out var spec))
                return null;
            return _answers[silo] = new NodeIdentity(answer.Node, spec, answer.DataEndpoint);
        }
        catch (Exception ex) when (ex is OrleansException or TimeoutException or SiloUnavailableException)
        {
            return null;
        }
    }
}

/// <summary>What a silo says about itself.</summary>
[GenerateSerializer, Immutable, Alias("flm.NodeDescription")]
public sealed record NodeDescription([property: Id(0)] string Node, [property: Id(1)] string Devices, [property: Id(2)] string? DataEndpoint = null);

/// <summary>One per silo (key: the silo's address), living on that silo: tells which server it is.</summary>
public interface INodeInfoGrain : IGrainWithStringKey
{
    Task<NodeDescription> Describe();
}

[SiloPinnedPlacement]
public sealed class NodeInfoGrain(FlmNodeOptions node, IServiceProvider services) : Grain, INodeInfoGrain
{
    public Task<NodeDescription> Describe() =>
        Task.FromResult(new NodeDescription(node.Node, node.Devices.ToString(), services.GetService<DataPlane.Sockets.SocketDataPlane>()?.Endpoint.ToString()));
}

/// <summary>Places a grain whose key is a silo address on that silo, and nowhere else.</summary>
[GenerateSerializer, Immutable, SuppressReferenceTracking, Alias("flm.SiloPinnedPlacement")]
public sealed class SiloPinnedPlacementStrategy : PlacementStrategy;

[AttributeUsage(AttributeTargets.Class)]
public sealed class SiloPinnedPlacementAttribute() : PlacementAttribute(new SiloPinnedPlacementStrategy());

public sealed class SiloPinnedPlacementDirector : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silo = SiloAddress.FromParsableString(target.GrainIdentity.Key.ToString()!);
        return context.GetCompatibleSilos(target).Contains(silo)
            ? Task.FromResult(silo)
            : throw new OrleansException($"silo {silo} is not active");
    }
}
