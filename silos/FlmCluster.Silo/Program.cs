using FlmCluster.Silo;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;

// One FlmCluster silo: `FlmCluster.Silo --node gpu-a --devices cpu:2 [--clustering redis --redis host:6379]`.
var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.Configuration.AddCommandLine(args, SiloSettings.Switches);
try
{
    // Settings are checked, and the data port bound, before the silo starts.
    builder.UseFlmSilo(SiloSettings.From(builder.Configuration));
}
catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException)
{
    Console.Error.WriteLine($"error: {ex.Message}");
    return 2;
}
using var host = builder.Build();
await host.RunAsync();
return 0;
