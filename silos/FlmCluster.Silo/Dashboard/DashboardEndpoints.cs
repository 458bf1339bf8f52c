using System.Net.ServerSentEvents;
using System.Runtime.CompilerServices;
using System.Security.Claims;
using System.Text.Json;
using System.Text.Json.Serialization;
using FlmCluster.Grains.Abstractions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Silo.Dashboard;

/// <summary>
/// The dashboard's web endpoints, all read-only GETs: the page and its vendored assets, JSON snapshots, and
/// server-sent-event streams that push what changed: a job's new steps, events and status every
/// <see cref="LiveEvery"/>, the cluster map and jobs list every <see cref="MapEvery"/>.
/// </summary>
public static class DashboardEndpoints
{
    public static readonly TimeSpan LiveEvery = TimeSpan.FromMilliseconds(250);

    /// <summary>The cluster map changes with jobs and servers, not steps: it is looked at less often.</summary>
    public static readonly TimeSpan MapEvery = TimeSpan.FromSeconds(1);
    private const int HistoryPage = 2000;

    /// <summary>JSON as the dashboard sends it: camelCase, and a NaN loss stays a number (NaN) instead of failing the page.</summary>
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static IServiceCollection AddFlmDashboard(this IServiceCollection services) =>
        services.AddSingleton<DashboardData>()
            .ConfigureHttpJsonOptions(o => o.SerializerOptions.NumberHandling = Json.NumberHandling);

    public static IEndpointRouteBuilder MapFlmDashboard(this WebApplication app)
    {
        app.UseStaticFiles(new StaticFileOptions
        {
            FileProvider = new EmbeddedFileProvider(typeof(DashboardEndpoints).Assembly, "FlmCluster.Silo.Dashboard.wwwroot"),
            RequestPath = "/static",
        });
        app.MapGet("/", () => Results.Redirect("/static/index.html"));
        var api = app.MapGroup("/api").AddEndpointFilter(async (context, next) =>
        {
            try
            {
                return await next(context);
            }
            catch (ClusterRequestException ex)
            {
                return Results.BadRequest(new { error = ex.Message });
            }
        });
        // Who is signed in, for the page's header: a role on a secure silo; none on an open one, which has no sessions.
        api.MapGet("/session", (ClaimsPrincipal user) => new { role = user.FindFirstValue(ClaimTypes.Role) });
        api.MapGet("/cluster", (DashboardData data) => data.Cluster());
        api.MapGet("/jobs/{id}", (DashboardData data, string id) => data.Job(id));
        api.MapGet("/jobs/{id}/history", (DashboardData data, string id, long? sinceStep, int? sinceEvent, int? max) =>
            data.History(id, sinceStep ?? 0, sinceEvent ?? 0, max ?? HistoryPage));
        api.MapGet("/stream/cluster", (DashboardData data, ILogger<DashboardData> log, CancellationToken ct) =>
            TypedResults.ServerSentEvents(ClusterStream(data, log, ct)));
        api.MapGet("/stream/jobs/{id}", (DashboardData data, ILogger<DashboardData> log, string id, long? sinceStep, int? sinceEvent, CancellationToken ct) =>
            TypedResults.ServerSentEvents(JobStream(data, log, id, sinceStep ?? 0, sinceEvent ?? 0, ct)));
        return app;
    }

    /// <summary>The cluster map and jobs list, sent when they change.</summary>
    private static async IAsyncEnumerable<SseItem<ClusterPage>> ClusterStream(DashboardData data, ILogger log, [EnumeratorCancellation] CancellationToken ct)
    {
        string? last = null;
        while (!ct.IsCancellationRequested)
        {
            if (await Try(log, data.Cluster) is { } page && JsonSerializer.Serialize(page, Json) is var json && json != last)
            {
                last = json;
                yield return new SseItem<ClusterPage>(page, "cluster");
            }
            await Pause(MapEvery, ct);
        }
    }

    /// <summary>A job's new steps and events (from the given positions on) and its status, sent as they come.</summary>
    private static async IAsyncEnumerable<SseItem<object>> JobStream(DashboardData data, ILogger log, string id, long sinceStep, int sinceEvent,
        [EnumeratorCancellation] CancellationToken ct)
    {
        string? lastRow = null, lastPage = null;
        while (!ct.IsCancellationRequested)
        {
            if (await Try(log, () => data.History(id, sinceStep, sinceEvent, HistoryPage)) is { } page && (page.Steps.Count > 0 || page.Events.Count > 0))
            {
                (sinceStep, sinceEvent) = (page.NextStep, page.NextEvent);
                yield return new SseItem<object>(page, "history");
            }
            if (await Try(log, () => data.Status(id)) is { } status && JsonSerializer.Serialize(DashboardData.RowOf(status), Json) is var row && row != lastRow)
            {
                lastRow = row;
                // The whole page (layout, checkpoints) when what it shows changed; the job's row for every step.
                var pageKey = $"{status.State}|{status.Layout}|{status.LastCheckpointStep}|{status.LastReplicaStep}|{status.Error}|{string.Join(',', status.Workers)}";
                if (pageKey != lastPage && await Try(log, () => data.Job(id)) is { } job)
                {
                    lastPage = pageKey;
                    yield return new SseItem<object>(job, "job");
                }
                else
                    yield return new SseItem<object>(DashboardData.RowOf(status), "status");
            }
            await Pause(LiveEvery, ct);
        }
    }

    /// <summary>
    /// A read for a live page. It may fail while a server is lost (a coordinator moving, a gateway gone, a worker
    /// refused by placement): the stream skips this round and reads again at the next, so an open page never loses
    /// its stream to the failure it is showing.
    /// </summary>
    private static async Task<T?> Try<T>(ILogger log, Func<Task<T>> read) where T : class
    {
        try
        {
            return await read();
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            log.LogDebug("Dashboard read failed, tried again next round: {Type}: {Message}", ex.GetType().Name, ex.Message);
            return null;
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    private static async Task Pause(TimeSpan period, CancellationToken ct)
    {
        try
        {
            await Task.Delay(period, ct);
        }
        catch (OperationCanceledException)
        {
            // the browser went away
        }
    }
}
