using System.Net;
using FlmCluster.Grains.Placement;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// Where a node's socket data plane listens: the endpoint its active silo publishes in its metadata (asked of the
/// silo itself when the metadata cache lacks it). Looked up when a link is made, so a restarted silo's new port
/// is found.
/// </summary>
public sealed class DataEndpoints(IClusterMembershipService membership, NodeDirectory nodes)
{
    /// <summary>The node's data endpoint; a node without an active silo is a lost peer.</summary>
    public IPEndPoint Of(string node)
    {
        foreach (var member in membership.CurrentSnapshot.Members.Values.Where(m => m.Status == SiloStatus.Active))
        {
            var identity = nodes.Known(member.SiloAddress) ?? nodes.Resolve(member.SiloAddress).GetAwaiter().GetResult();
            if (identity?.Node != node)
                continue;
            if (identity.DataEndpoint is { } text && IPEndPoint.TryParse(text, out var endpoint))
                return endpoint;
            throw new ArgumentException($"node {node}'s silo publishes no data port: every silo of a cluster must run the same data plane (Flm:DataPlane)");
        }
        throw LinkFailure.Lost($"no active silo for node '{node}'").ToException();
    }
}
