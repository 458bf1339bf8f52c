using System.Text.RegularExpressions;
using FlmCluster.Client;
using YamlDotNet.RepresentationModel;

namespace FlmCluster.Cli.Tests.Deploy;

/// <summary>
/// docker-compose.yml validates offline (Debian's docker-compose), and what its silo services run is what a silo
/// accepts: the image's and the service's environment together pass the silo's own settings validation with real
/// credential files where the compose file mounts them, on ports the image exposes, publishes and scrapes.
/// </summary>
public sealed partial class ComposeTests
{
    private static readonly Dictionary<string, string> Environment = new() { ["GRAFANA_ADMIN_PASSWORD"] = "only-for-validation" };

    private static (int ExitCode, string Output, string Error) Compose(params string[] args) =>
        DeployFiles.Run(DeployFiles.Tool("docker-compose", "docker-compose"), DeployFiles.Root, Environment, ["-f", "docker-compose.yml", .. args]);

    [Fact]
    public void The_compose_file_validates_offline()
    {
        var check = Compose("config", "-q");
        Assert.True(check.ExitCode == 0, check.Error);
    }

    [Fact]
    public void Without_a_grafana_password_the_compose_file_does_not_validate()
    {
        var check = DeployFiles.Run(DeployFiles.Tool("docker-compose", "docker-compose"), DeployFiles.Root, new Dictionary<string, string> { ["GRAFANA_ADMIN_PASSWORD"] = "" },
            "-f", "docker-compose.yml", "config", "-q");
        Assert.NotEqual(0, check.ExitCode);
        Assert.Contains("set GRAFANA_ADMIN_PASSWORD", check.Error);
    }

    [Fact]
    public void Every_silo_service_runs_settings_the_silo_accepts_on_the_ports_the_image_exposes()
    {
        var resolved = Compose("config");
        Assert.True(resolved.ExitCode == 0, resolved.Error);
        var services = (YamlMappingNode)DeployFiles.Documents(resolved.Output)[0].Get("services")!;
        var silos = services.Children.Where(s => s.Value.Get("image").Text().StartsWith("flmcluster/silo:", StringComparison.Ordinal))
            .ToDictionary(s => s.Key.Text(), s => s.Value);
        Assert.Equal(["control", "gpu-0", "gpu-1"], silos.Keys.Order());
        Assert.Contains("--appendonly", services.Get("redis", "command").Items().Select(i => i.Text()));

        var dockerfile = File.ReadAllText(DeployFiles.PathOf("infra/docker/Dockerfile"));
        var image = ImageEnvironment(dockerfile, "base", "silo");
        var exposed = ExposeLine().Match(dockerfile).Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToHashSet();
        var credentials = CredentialFiles.Create(Directory.CreateTempSubdirectory("flm-compose-").FullName, ["control", "gpu-0", "gpu-1"], TimeSpan.FromDays(1));
        var scraped = File.ReadAllText(DeployFiles.PathOf("infra/prometheus/compose.yml"));
        try
        {
            var nodes = new HashSet<string>();
            foreach (var (name, service) in silos)
            {
                // The credentials folder mounted at /credentials, read from where this test made them.
                var mount = service.Get("volumes").Items().Select(v => v.Text()).Single(v => v.Contains(":/credentials"));
                Assert.EndsWith("/infra/credentials:/credentials:ro", mount);
                var environment = new Dictionary<string, string>(image);
                foreach (var (key, value) in ((YamlMappingNode)service.Get("environment")!).Children)
                    environment[key.Text()] = value.Text().Replace("/credentials/", credentials.Folder + "/");
                var settings = DeployFiles.Settings(environment);
                Assert.NotNull(settings.LoadAccess()); // the key and token files read as a secure silo reads them
                Assert.True(settings.Secure && !settings.LoopbackOnly, $"{name} is not a secure silo listening on the network");
                Assert.True(nodes.Add(settings.Node), $"{name}: node name {settings.Node} is taken");
                Assert.Equal("redis", settings.Clustering);
                Assert.Equal("redis:6379", settings.Redis);
                Assert.Subset(exposed, new HashSet<int> { settings.SiloPort, settings.GatewayPort, settings.HttpPort, settings.DataPort });
                Assert.Equal("http://otel-collector:4318", settings.OtlpEndpoint);
                Assert.Contains($"\"{name}:{settings.HttpPort}\"", scraped);
                foreach (var published in service.Get("ports").Items().Select(p => p.Text()))
                    Assert.Contains(int.Parse(published.Split(':')[^1].Split('/')[0]), new[] { settings.GatewayPort, settings.HttpPort });
                Assert.Equal(name == "control" ? 0 : 2, settings.DeviceSpec.Count);
            }
            Assert.Contains("127.0.0.1:30000:30000/tcp", silos["control"].Get("ports").Items().Select(p => p.Text()));
        }
        finally
        {
            Directory.Delete(credentials.Folder, recursive: true);
        }
        Assert.Contains("4318", File.ReadAllText(DeployFiles.PathOf("infra/otel/collector.yaml")));
        Assert.Contains("/health/ready", dockerfile);
    }

    [Fact]
    public void Grafana_is_provisioned_with_the_repositorys_dashboard_and_prometheus()
    {
        var resolved = Compose("config");
        var grafana = DeployFiles.Documents(resolved.Output)[0].Get("services", "grafana")!;
        var mounts = grafana.Get("volumes").Items().Select(v => v.Text()).ToList();
        var dashboard = mounts.Single(m => m.Contains("flmcluster-dashboard.json")).Split(':');
        Assert.True(File.Exists(dashboard[0]), dashboard[0]);
        var provider = DeployFiles.Documents(File.ReadAllText(DeployFiles.PathOf("infra/grafana/provisioning/dashboards/flmcluster.yml")))[0];
        Assert.Equal(Path.GetDirectoryName(dashboard[1]), provider.Get("providers")!.Items().Single().Get("options", "path").Text());
        var source = DeployFiles.Documents(File.ReadAllText(DeployFiles.PathOf("infra/grafana/provisioning/datasources/prometheus.yml")))[0].Get("datasources")!.Items().Single();
        Assert.Equal("http://prometheus:9090", source.Get("url").Text());
        Assert.Contains("\"name\": \"DS_PROMETHEUS\"", File.ReadAllText(dashboard[0])); // the dashboard's data-source variable picks it
    }

    /// <summary>The ENV settings of the named stages of a Dockerfile (KEY=value pairs, lines continued with '\').</summary>
    private static Dictionary<string, string> ImageEnvironment(string dockerfile, params string[] stages)
    {
        var environment = new Dictionary<string, string>();
        var stage = "";
        var lines = dockerfile.Replace("\\\n", " ").Split('\n');
        foreach (var line in lines.Select(l => l.Trim()))
        {
            if (FromLine().Match(line) is { Success: true } from)
                stage = from.Groups[1].Value;
            else if (line.StartsWith("ENV ", StringComparison.Ordinal) && stages.Contains(stage))
                foreach (Match pair in EnvPair().Matches(line[4..]))
                    environment[pair.Groups[1].Value] = pair.Groups[2].Value;
        }
        return environment;
    }

    [GeneratedRegex(@"^FROM \S+ AS (\S+)$")]
    private static partial Regex FromLine();

    [GeneratedRegex(@"(\w+)=(\S+)")]
    private static partial Regex EnvPair();

    [GeneratedRegex(@"^EXPOSE ([\d ]+)$", RegexOptions.Multiline)]
    private static partial Regex ExposeLine();
}
