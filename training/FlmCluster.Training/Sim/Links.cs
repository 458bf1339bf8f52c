namespace FlmCluster.Training.Sim;

/// <summary>A link a collective runs over: its bandwidth (bytes/s, one direction, as achieved) and the start-up time of one step.</summary>
public readonly record struct Link(double Bandwidth, double Latency);

/// <summary>
/// α–β times of the collectives the engine runs, as NCCL's ring algorithms do them: n − 1 steps per phase, each
/// member moving (n − 1)/n of the buffer per phase over the ring's slowest link.
/// </summary>
public static class Collective
{
    /// <summary>Ring all-reduce: a reduce-scatter and an all-gather phase.</summary>
    public static double AllReduce(double bytes, int members, Link link) =>
        members <= 1 ? 0 : 2 * (members - 1) * link.Latency + 2.0 * (members - 1) / members * bytes / link.Bandwidth;

    /// <summary>Reduce-scatter of a buffer of <paramref name="bytes"/> per member (each keeps 1/n of the sum).</summary>
    public static double ReduceScatter(double bytes, int members, Link link) =>
        members <= 1 ? 0 : (members - 1) * link.Latency + (members - 1.0) / members * bytes / link.Bandwidth;

    /// <summary>All-gather into a buffer of <paramref name="bytes"/> per member (each contributes 1/n).</summary>
    public static double AllGather(double bytes, int members, Link link) => ReduceScatter(bytes, members, link);

    /// <summary>A small all-reduce (a few scalars) by a tree: latency only.</summary>
    public static double ScalarAllReduce(int members, Link link) =>
        members <= 1 ? 0 : 2 * Math.Ceiling(Math.Log2(members)) * link.Latency;

    /// <summary>One message from one GPU to another.</summary>
    public static double PointToPoint(double bytes, Link link) => link.Latency + bytes / link.Bandwidth;
}
