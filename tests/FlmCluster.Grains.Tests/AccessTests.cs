using System.Diagnostics.Metrics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Security;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.DependencyInjection;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// Raw grain calls from a client against the access filter of an open cluster (development): internal methods are
/// refused with a typed failure, counted; what clients may call answers; silos' own calls pass.
/// </summary>
public sealed class OpenAccessTests() : ClusterTestClass(2, 0)
{
    private static WorkerAssignment Assignment => new("raw", 1, "{}", 0, ["Silo_0/gpu0"], 0, 0, 0, Rebuild.Fresh);

    public static TheoryData<string> InternalCalls => ["Assign", "HoldReplica", "FetchReplica", "Deliver", "Release", "JobEnded", "Reallocate", "WakeJobs", "Wake", "Initialize"];

    [Theory]
    [MemberData(nameof(InternalCalls))]
    public async Task A_client_cannot_call_an_internal_method(string method)
    {
        var worker = Cluster.Client.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0");
        var scheduler = Cluster.Client.GetGrain<IClusterSchedulerGrain>("cluster");
        Func<Task> call = method switch
        {
            "Assign" => () => worker.Assign(Assignment),
            "HoldReplica" => () => worker.HoldReplica(new ReplicaChunk("j", 0, 1, 0, 1, new byte[8], "x")),
            "FetchReplica" => () => worker.FetchReplica("j", 0, 1, 0),
            "Deliver" => () => worker.Deliver(new TensorChunk("j", 1, 0, "k", 0, 1, 4, new byte[4])),
            "Release" => () => worker.Release("j", 1),
            "JobEnded" => () => scheduler.JobEnded("j", JobPhase.Completed),
            "Reallocate" => () => scheduler.Reallocate("j", [1], 1, 1),
            "WakeJobs" => scheduler.WakeJobs,
            "Wake" => () => Cluster.Client.GetGrain<IJobCoordinatorGrain>("j").Wake(),
            _ => () => Cluster.Client.GetGrain<IJobCoordinatorGrain>("j").Initialize(new AcceptedJob("j", new JobSubmission("{}"), "run", 1, 1, 1, 1, "cpu", DateTime.UnixEpoch)),
        };
        using var refused = new RefusalCount();
        var ex = await Assert.ThrowsAsync<AccessDeniedException>(call);
        Assert.Equal(AccessRefusal.Internal, ex.Reason);
        Assert.EndsWith($".{method}", ex.Method);
        Assert.Contains("internal to the cluster", ex.Message);
        Assert.Equal(1, refused.Of("internal", ex.Method));
    }

    /// <summary>
    /// Orleans' system targets are the silos' protocol: a client that addresses one (silo control's and
    /// membership's ping, through Orleans' own interfaces for them) is refused before anything runs there, while the
    /// same call from inside a silo answers. Clients' one system target, the gateway's manifest, answers: every
    /// client here connected through it.
    /// </summary>
    [Theory]
    [InlineData("silo-control", "ISiloControl", "hello")]
    [InlineData("clustering", "IMembershipService", 1)]
    public async Task A_client_cannot_call_the_silos_system_targets(string systemTarget, string orleansInterface, object pingArgument)
    {
        var silo = (await Cluster.Client.GetGrain<IManagementGrain>(0).GetHosts(true, TestContext.Current.CancellationToken)).Keys.First();
        await Ping(InsideCluster, systemTarget, orleansInterface, silo, pingArgument);
        using var refused = new RefusalCount();
        var ex = await Assert.ThrowsAsync<AccessDeniedException>(() => Ping(Cluster.Client, systemTarget, orleansInterface, silo, pingArgument));
        Assert.Equal(AccessRefusal.Internal, ex.Reason);
        Assert.Equal($"{orleansInterface}.Ping", ex.Method);
        Assert.Equal(1, refused.Of("internal", ex.Method));
    }

    /// <summary>Ping on a silo's system target through Orleans' internal interface for it, as a crafted caller would.</summary>
    private static Task Ping(IGrainFactory grains, string systemTarget, string orleansInterface, SiloAddress silo, object argument)
    {
        var type = typeof(IManagementGrain).Assembly.GetTypes().Single(t => t.IsInterface && t.Name == orleansInterface);
        var id = SystemTargetGrainId.Create(SystemTargetGrainId.CreateGrainType(systemTarget), silo).GrainId;
        var getGrain = typeof(IGrainFactory).GetMethods().Single(m => m.Name == nameof(IGrainFactory.GetGrain) && m.IsGenericMethod && m.GetParameters() is [{ ParameterType: var p }] && p == typeof(GrainId));
        var target = getGrain.MakeGenericMethod(type).Invoke(grains, [id]);
        var ping = type.GetMethods().Single(m => m.Name == "Ping");
        // Ping's first parameter, and the defaults of the rest (a cancellation token, where Orleans has one).
        object?[] arguments = [argument, .. ping.GetParameters().Skip(1).Select(p => p.HasDefaultValue ? p.DefaultValue : Activator.CreateInstance(p.ParameterType))];
        return (Task)ping.Invoke(target, arguments)!;
    }

    [Fact]
    public async Task Clients_read_and_operate_while_silos_reach_internal_methods()
    {
        Assert.Equal(WorkerState.Idle, (await Cluster.Client.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0").GetStatus()).State);
        Assert.Empty(await Scheduler.ListJobs());
        Assert.False(await Scheduler.Cancel("no-such-job")); // an operator method: everyone is an operator in open mode
        Assert.Null(await InsideCluster.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0").FetchReplica("j", 0, 1, 0));
    }

    [Fact]
    public void Methods_need_the_role_their_attribute_names_and_the_rest_of_FlmClusters_are_internal()
    {
        Assert.Equal(ClientRole.Operator, CallRules.RequiredRole(typeof(IClusterSchedulerGrain).GetMethod(nameof(IClusterSchedulerGrain.Submit))!));
        Assert.Equal(ClientRole.Viewer, CallRules.RequiredRole(typeof(IClusterSchedulerGrain).GetMethod(nameof(IClusterSchedulerGrain.ListJobs))!));
        Assert.Null(CallRules.RequiredRole(typeof(IGpuWorkerGrain).GetMethod(nameof(IGpuWorkerGrain.RunStep))!));
        Assert.Null(CallRules.RequiredRole(typeof(IJobCoordinatorGrain).GetMethod(nameof(IJobCoordinatorGrain.Cancel))!));
        Assert.Equal(ClientRole.Operator, CallRules.RequiredRole(typeof(IManagementGrain).GetMethods().First(m => m.Name == nameof(IManagementGrain.GetHosts))));
        var open = typeof(IGpuWorkerGrain).GetMethods().Concat(typeof(IJobCoordinatorGrain).GetMethods()).Concat(typeof(IClusterSchedulerGrain).GetMethods())
            .Where(m => CallRules.RequiredRole(m) is not null).Select(m => $"{m.DeclaringType!.Name}.{m.Name}").Order().ToList();
        Assert.Equal(
        [
            "IClusterSchedulerGrain.Cancel", "IClusterSchedulerGrain.GetInventory", "IClusterSchedulerGrain.ListJobs", "IClusterSchedulerGrain.Submit",
            "IGpuWorkerGrain.GetStatus", "IGpuWorkerGrain.Probe",
            "IJobCoordinatorGrain.GetHistory", "IJobCoordinatorGrain.GetStatus", "IJobCoordinatorGrain.Pause", "IJobCoordinatorGrain.Resume", "IJobCoordinatorGrain.SaveCheckpoint",
        ], open);
    }
}

/// <summary>
/// A secure cluster (cluster key and token files) against raw client calls with tokens in the request context:
/// roles, wrong and missing credentials, and a forged open-mode key.
/// </summary>
public sealed class SecureAccessTests : ClusterTestClass
{
    private const string OperatorToken = "operator-token-0123456789";
    private const string ViewerToken = "viewer-token-0123456789ab";

    public SecureAccessTests() : base(TimeSpan.FromMinutes(5), silo => silo.Services.AddSingleton(Access.Value), 2, 0)
    {
    }

    private static readonly Lazy<AccessOptions> Access = new(() =>
    {
        var dir = Directory.CreateTempSubdirectory("flm-access-").FullName;
        File.WriteAllText(Path.Combine(dir, "cluster.key"), Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)));
        File.WriteAllText(Path.Combine(dir, "operator.tokens"), $"# operators\n{OperatorToken}\n");
        File.WriteAllText(Path.Combine(dir, "viewer.tokens"), $"{ViewerToken}\n");
        using var key = System.Security.Cryptography.ECDsa.Create();
        var authority = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=test authority", key, System.Security.Cryptography.HashAlgorithmName.SHA256)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        var access = AccessOptions.FromFiles("test-service", Path.Combine(dir, "cluster.key"), Path.Combine(dir, "operator.tokens"), Path.Combine(dir, "viewer.tokens"), authority);
        Directory.Delete(dir, recursive: true);
        return access;
    });

    private static async Task<T> As<T>(string? token, Func<Task<T>> call)
    {
        RequestContext.Clear();
        if (token is not null)
            RequestContext.Set(CallCredentials.Token, token);
        try
        {
            return await call();
        }
        finally
        {
            RequestContext.Clear();
        }
    }

    [Fact]
    public async Task A_viewer_reads_but_cannot_operate()
    {
        Assert.Empty(await As(ViewerToken, () => Scheduler.ListJobs()));
        using var refused = new RefusalCount();
        var ex = await Assert.ThrowsAsync<AccessDeniedException>(() => As(ViewerToken, () => Scheduler.Cancel("j")));
        Assert.Equal(AccessRefusal.NeedsOperator, ex.Reason);
        Assert.Equal(1, refused.Of("needs_operator", ex.Method));
    }

    [Fact]
    public async Task An_operator_operates_but_cannot_call_internal_methods()
    {
        Assert.False(await As(OperatorToken, () => Scheduler.Cancel("no-such-job")));
        var ex = await Assert.ThrowsAsync<AccessDeniedException>(() => As(OperatorToken, async () =>
        {
            await Cluster.Client.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0").Release("j", 1);
            return 0;
        }));
        Assert.Equal(AccessRefusal.Internal, ex.Reason);
    }

    [Fact]
    public async Task Missing_wrong_and_forged_credentials_are_refused()
    {
        Assert.Equal(AccessRefusal.NoCredentials, (await Assert.ThrowsAsync<AccessDeniedException>(() => As(null, () => Scheduler.ListJobs()))).Reason);
        Assert.Equal(AccessRefusal.BadCredentials, (await Assert.ThrowsAsync<AccessDeniedException>(() => As("not-a-token-of-this-cluster", () => Scheduler.ListJobs()))).Reason);
        // The key an open cluster of this service would use is no key here.
        var forged = await Assert.ThrowsAsync<AccessDeniedException>(() => As(OperatorToken, async () =>
        {
            RequestContext.Set(CallCredentials.ClusterKey, AccessOptions.Open("test-service").ClusterKey);
            await Cluster.Client.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0").Release("j", 1);
            return 0;
        }));
        Assert.Equal(AccessRefusal.Internal, forged.Reason);
    }

    [Fact]
    public async Task Silos_reach_internal_methods_with_the_cluster_key()
    {
        Assert.Null(await InsideCluster.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0").FetchReplica("j", 0, 1, 0));
    }
}

/// <summary>Counts flm.access.refused by refusal while it lives (in-process silos share the meter with the test).</summary>
internal sealed class RefusalCount : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly Dictionary<string, long> _counts = [];

    public RefusalCount()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            // By name: comparing with FlmTelemetry.AccessRefused here would run FlmTelemetry's static initializer
            // inside its own instrument's publication, where that field is still null.
            if (instrument.Meter.Name == FlmTelemetry.Name && instrument.Name == "flm.access.refused")
                listener.EnableMeasurementEvents(instrument);
        };
        _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            string? refusal = null, method = null;
            foreach (var tag in tags)
                if (tag.Key == FlmTelemetry.Tags.Refusal)
                    refusal = (string)tag.Value!;
                else if (tag.Key == FlmTelemetry.Tags.Method)
                    method = (string)tag.Value!;
            lock (_counts)
                _counts[$"{refusal} {method}"] = _counts.GetValueOrDefault($"{refusal} {method}") + value;
        });
        _listener.Start();
    }

    /// <summary>Refusals of this kind of calls to <paramref name="method"/> (the listener hears every test class of the process: the method tells this test's).</summary>
    public long Of(string refusal, string method)
    {
        lock (_counts)
            return _counts.GetValueOrDefault($"{refusal} {method}");
    }

    public void Dispose() => _listener.Dispose();
}
