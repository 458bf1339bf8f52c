using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Logs;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace FlmCluster.Silo;

/// <summary>
/// OpenTelemetry for a silo process: FlmCluster's meter and activity source, Orleans' meter, .NET runtime and
/// process instrumentation, logs as structured records; exported by every exporter the settings name (a
/// Prometheus scrape endpoint on the web port, OTLP, the console), several at once. One per process: the
/// instruments are process-wide, so a process that hosts several silos gives telemetry to one of them.
/// </summary>
public static class SiloTelemetry
{
    public const string ServiceName = "flmcluster";

    public static IHostApplicationBuilder AddFlmTelemetry(this IHostApplicationBuilder builder, SiloSettings s)
    {
        var exporters = s.ExporterList;
        if (exporters.Count == 0)
            return builder;
        var otel = builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService(ServiceName, serviceInstanceId: s.Node)
                .AddAttributes([new("flm.node", s.Node), new("flm.devices", s.Devices), new("flm.cluster", s.ClusterId)]))
            .WithMetrics(m =>
            {
                m.AddMeter(FlmTelemetry.Name, "Microsoft.Orleans");
                m.AddRuntimeInstrumentation();
                m.AddProcessInstrumentation();
                if (exporters.Contains("prometheus"))
                    m.AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0); // every scrape reads the figures of now
                if (exporters.Contains("console"))
                    m.AddConsoleExporter();
            })
            .WithTracing(t =>
            {
                t.AddSource(FlmTelemetry.Name);
                if (exporters.Contains("console"))
                    t.AddConsoleExporter();
            })
            .WithLogging(l =>
            {
                if (exporters.Contains("console"))
                    l.AddConsoleExporter();
            }, o =>
            {
                o.IncludeFormattedMessage = true;
                o.IncludeScopes = true;
            });
        if (exporters.Contains("otlp"))
            otel.UseOtlpExporter(s.OtlpProtocol == "grpc" ? OtlpExportProtocol.Grpc : OtlpExportProtocol.HttpProtobuf, new Uri(s.OtlpEndpoint));
        return builder;
    }
}
