namespace FlmCluster.EndToEnd.Tests;

/// <summary>The repository these tests were built from (README.md, infra/ …).</summary>
public static class Repository
{
    public static string Root()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "README.md")) && File.Exists(Path.Combine(dir.FullName, "FlmCluster.sln")))
                return dir.FullName;
        throw new InvalidOperationException("README.md not found above the test's folder");
    }
}
