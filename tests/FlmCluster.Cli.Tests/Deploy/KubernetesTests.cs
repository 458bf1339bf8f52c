using FlmCluster.Client;
using FlmCluster.Silo.Health;
using YamlDotNet.RepresentationModel;

namespace FlmCluster.Cli.Tests.Deploy;

/// <summary>
/// infra/k8s checked offline: every manifest parses; the kinds are there; each silo pod's settings (ConfigMap and
/// container environment, with the credential files the Secret holds) pass the silo's validation; probes are on the
/// health endpoints at the web port; GPU pods take 8 GPUs of a labelled node, one per node; services point at
/// ports the pods declare.
/// </summary>
public sealed class KubernetesTests
{
    private static readonly string Folder = DeployFiles.PathOf("infra/k8s");

    private static YamlMappingNode Kustomization => DeployFiles.Documents(File.ReadAllText(Path.Combine(Folder, "kustomization.yaml")))[0];

    private static List<YamlMappingNode> Manifests =>
        Kustomization.Get("resources").Items().SelectMany(r => DeployFiles.Documents(File.ReadAllText(Path.Combine(Folder, r.Text())))).ToList();

    private static YamlMappingNode Named(string kind, string name) =>
        Manifests.Single(m => m.Get("kind").Text() == kind && m.Get("metadata", "name").Text() == name);

    [Fact]
    public void Every_manifest_parses_and_the_kinds_a_cluster_needs_are_there()
    {
        var manifests = Manifests;
        Assert.All(manifests, m => Assert.False(string.IsNullOrEmpty(m.Get("apiVersion").Text()) || string.IsNullOrEmpty(m.Get("metadata", "name").Text())));
        var kinds = manifests.Select(m => m.Get("kind").Text()).ToHashSet();
        Assert.Superset(kinds, new HashSet<string> { "Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim", "StatefulSet", "Service" });
        Assert.Equal(["flm-control", "flm-gpu", "redis"], manifests.Where(m => m.Get("kind").Text() == "StatefulSet").Select(m => m.Get("metadata", "name").Text()).Order());
        // The Secret comes from the credential files in the layout 'flm cluster credentials' writes.
        var generator = Kustomization.Get("secretGenerator").Items().Single();
        Assert.Equal("flm-credentials", generator.Get("name").Text());
        var layout = new CredentialFiles("credentials");
        Assert.Equal(
            new[] { layout.Authority, layout.SiloCertificate, layout.SiloKey, layout.ClusterKey, layout.OperatorToken, layout.ViewerToken }.Order(),
            generator.Get("files").Items().Select(f => f.Text()).Order());
    }

    public static TheoryData<string> Silos => ["flm-gpu", "flm-control"];

    [Theory]
    [MemberData(nameof(Silos))]
    public void A_silo_pods_settings_are_ones_the_silo_accepts_with_probes_on_its_health_endpoints(string statefulSet)
    {
        var pod = Named("StatefulSet", statefulSet).Get("spec", "template")!;
        var container = pod.Get("spec", "containers").Items().Single();
        var config = (YamlMappingNode)Named("ConfigMap", container.Get("envFrom").Items().Single().Get("configMapRef", "name").Text()).Get("data")!;
        var credentials = CredentialFiles.Create(Directory.CreateTempSubdirectory("flm-k8s-").FullName, [], TimeSpan.FromDays(1));
        try
        {
            var mount = container.Get("volumeMounts").Items().Single(v => v.Get("name").Text() == "credentials");
            Assert.Equal("/credentials", mount.Get("mountPath").Text());
            var secret = pod.Get("spec", "volumes").Items().Single(v => v.Get("name").Text() == "credentials").Get("secret", "secretName").Text();
            Assert.Equal("flm-credentials", secret);
            var environment = config.Children.ToDictionary(e => e.Key.Text(), e => e.Value.Text().Replace("/credentials/", credentials.Folder + "/"));
            foreach (var variable in container.Get("env").Items())
                environment[variable.Get("name").Text()] = variable.Get("valueFrom", "fieldRef", "fieldPath").Text() switch
                {
                    "metadata.name" => $"{statefulSet}-0",
                    "metadata.namespace" => "flmcluster",
                    "status.podIP" => "10.0.0.7",
                    "" => variable.Get("value").Text(),
                    var other => throw new InvalidOperationException($"unexpected field {other}"),
                };
            var settings = DeployFiles.Settings(environment);
            Assert.NotNull(settings.LoadAccess());
            Assert.True(settings.Kubernetes && settings.Secure && !settings.LoopbackOnly);
            Assert.Equal($"{statefulSet}-0", settings.Node);
            Assert.Equal((settings.ServiceId, settings.ClusterId), (environment["ORLEANS_SERVICE_ID"], environment["ORLEANS_CLUSTER_ID"]));
            Assert.Equal((settings.ServiceId, settings.ClusterId), (pod.Get("metadata", "labels", "orleans/serviceId").Text(), pod.Get("metadata", "labels", "orleans/clusterId").Text()));

            var ports = container.Get("ports").Items().ToDictionary(p => p.Get("name").Text(), p => int.Parse(p.Get("containerPort").Text()));
            Assert.Equal(new Dictionary<string, int> { ["silo"] = settings.SiloPort, ["gateway"] = settings.GatewayPort, ["http"] = settings.HttpPort, ["data"] = settings.DataPort }, ports);
            Assert.Equal(SiloHealth.LivePath, container.Get("livenessProbe", "httpGet", "path").Text());
            Assert.Equal(SiloHealth.ReadyPath, container.Get("readinessProbe", "httpGet", "path").Text());
            Assert.Equal("http", container.Get("livenessProbe", "httpGet", "port").Text());
            Assert.Equal("http", container.Get("readinessProbe", "httpGet", "port").Text());
            // The silos are secure: their web port speaks HTTPS only.
            Assert.Equal("HTTPS", container.Get("livenessProbe", "httpGet", "scheme").Text());
            Assert.Equal("HTTPS", container.Get("readinessProbe", "httpGet", "scheme").Text());
            Assert.Equal($"{settings.HttpPort}", pod.Get("metadata", "annotations", "prometheus.io/port").Text());
            Assert.Equal("flm-silo", pod.Get("spec", "serviceAccountName").Text());
            Assert.Equal("true", pod.Get("spec", "securityContext", "runAsNonRoot").Text());
            if (statefulSet == "flm-gpu")
            {
                Assert.Equal("cuda", settings.DeviceSpec.Kind);
                Assert.Equal($"{settings.DeviceSpec.Count}", container.Get("resources", "limits", "nvidia.com/gpu").Text());
                Assert.Equal("8", container.Get("resources", "limits", "nvidia.com/gpu").Text());
                Assert.Equal("true", pod.Get("spec", "nodeSelector", "flmcluster.io/gpu-server").Text());
                var antiAffinity = pod.Get("spec", "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution").Items().Single();
                Assert.Equal("kubernetes.io/hostname", antiAffinity.Get("topologyKey").Text());
                Assert.Equal(pod.Get("metadata", "labels", "app").Text(), antiAffinity.Get("labelSelector", "matchLabels", "app").Text());
            }
            else
                Assert.Equal(0, settings.DeviceSpec.Count);
        }
        finally
        {
            Directory.Delete(credentials.Folder, recursive: true);
        }
    }

    [Fact]
    public void Services_select_silo_pods_and_point_at_ports_they_declare()
    {
        var pods = Manifests.Where(m => m.Get("kind").Text() == "StatefulSet").Select(m => m.Get("spec", "template")!).ToList();
        foreach (var service in Manifests.Where(m => m.Get("kind").Text() == "Service"))
        {
            var selector = ((YamlMappingNode)service.Get("spec", "selector")!).Children.ToDictionary(c => c.Key.Text(), c => c.Value.Text());
            var selected = pods.Where(p => selector.All(s => p.Get("metadata", "labels", s.Key).Text() == s.Value)).ToList();
            Assert.True(selected.Count > 0, $"service {service.Get("metadata", "name").Text()} selects no pod");
            foreach (var port in service.Get("spec", "ports").Items())
                Assert.All(selected, p => Assert.Contains(port.Get("targetPort").Text(),
                    p.Get("spec", "containers").Items().SelectMany(c => c.Get("ports").Items()).Select(cp => cp.Get("name").Text())));
        }
        Assert.Equal("http", Named("Service", "flm-dashboard").Get("spec", "ports").Items().Single().Get("targetPort").Text());
    }
}
