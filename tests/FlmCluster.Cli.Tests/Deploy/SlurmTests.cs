namespace FlmCluster.Cli.Tests.Deploy;

/// <summary>
/// infra/slurm: the sbatch script is shellcheck clean (Debian's shellcheck, which .ci/run installs), and the silo
/// settings it exports are ones the silo knows.
/// </summary>
public sealed class SlurmTests
{
    private static readonly string Script = DeployFiles.PathOf("infra/slurm/flmcluster.sbatch");

    [Fact]
    public void The_sbatch_script_is_shellcheck_clean()
    {
        var check = DeployFiles.Run(DeployFiles.Tool("shellcheck", "shellcheck"), DeployFiles.Root, new Dictionary<string, string>(), "--shell=bash", "--severity=style", Script);
        Assert.True(check.ExitCode == 0, check.Output + check.Error);
    }

    [Fact]
    public void The_script_exports_settings_the_silo_knows_and_starts_one_silo_per_node()
    {
        var text = File.ReadAllText(Script);
        var exported = System.Text.RegularExpressions.Regex.Matches(text, @"^export (Flm__\w+)=", System.Text.RegularExpressions.RegexOptions.Multiline)
            .Select(m => m.Groups[1].Value).ToList();
        Assert.Contains("Flm__TlsCertificate", exported);
        var known = typeof(FlmCluster.Silo.SiloSettings).GetProperties().Where(p => p.SetMethod is not null).Select(p => p.Name).ToHashSet();
        Assert.All(exported, e => Assert.Contains(e["Flm__".Length..], known));
        Assert.Contains("--ntasks-per-node=1", text);
        Assert.Contains("/health/ready", text);
        Assert.Contains("trap stop_all EXIT", text);
    }
}
