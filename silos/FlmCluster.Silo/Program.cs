using FlmCluster.Silo;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;

// One FlmCluster silo: `FlmCluster.Silo --node gpu-a --devices cpu:2 [--clustering redis --redis host:6379] [--http-port 8080]`.
var configuration = new ConfigurationManager();
configuration.SetBasePath(AppContext.BaseDirectory)
    .AddJsonFile("appsettings.json", optional: true)
    .AddEnvironmentVariables()
    .AddCommandLine(args, SiloSettings.Switches);
IHost host;
try
{
    // Settings are checked, and the data port bound while the host is built, before the silo starts.
    host = FlmSiloHost.Build(SiloSettings.From(configuration), configuration);
}
catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException)
{
    Console.Error.WriteLine($"error: {ex.Message}");
    return 2;
}
using (host)
    await host.RunAsync();
return 0;
