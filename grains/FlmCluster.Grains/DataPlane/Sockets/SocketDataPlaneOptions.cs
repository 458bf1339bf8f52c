using System.Net;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>The socket data plane of one silo: where it listens, how it is secured, and how patient it is with peers.</summary>
public sealed record SocketDataPlaneOptions
{
    /// <summary>The address the data port is bound to.</summary>
    public IPAddress ListenAddress { get; init; } = IPAddress.Loopback;

    /// <summary>The address peers connect to, published in the silo's metadata.</summary>
    public IPAddress AdvertisedAddress { get; init; } = IPAddress.Loopback;

    /// <summary>The data port (0: any free port; peers learn it from the metadata).</summary>
    public int Port { get; init; }

    /// <summary>PEM certificate (and <see cref="TlsKey"/>, its private key) for TLS on every data connection; none: plain TCP.</summary>
    public string TlsCertificate { get; init; } = "";

    public string TlsKey { get; init; } = "";

    /// <summary>PEM certificate of the authority peers' certificates must chain to; none: peers must present this silo's own certificate.</summary>
    public string TlsCa { get; init; } = "";

    public bool UsesTls => TlsCertificate.Length > 0;

    /// <summary>An idle connection sends a heartbeat this often.</summary>
    public TimeSpan Heartbeat { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>A connection on which nothing arrives this long (not even a heartbeat) has lost its peer.</summary>
    public TimeSpan Silence { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>The most bytes of one peer's messages a rank keeps before it has asked for them; beyond, the peer waits.</summary>
    public long PeerBufferBytes { get; init; } = 64L << 20;

    /// <summary>How long a connecting peer may take to authenticate, and how long it is kept waiting for a rank that is still being built.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(30);
}
