using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Security;
using FlmCluster.Training.Telemetry;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Authorization.Policy;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Silo.Web;

/// <summary>
/// Requests to the web port that authorization turned away: logged and counted (flm.access.refused, with the
/// path as the method) like refused grain calls, then answered as usual (sign-in page, 401 or 403).
/// </summary>
internal sealed partial class RefusedWebRequests(ILogger<RefusedWebRequests> log) : IAuthorizationMiddlewareResultHandler
{
    private readonly AuthorizationMiddlewareResultHandler _answer = new();

    public Task HandleAsync(RequestDelegate next, HttpContext context, AuthorizationPolicy policy, PolicyAuthorizationResult result)
    {
        if (result.Challenged || result.Forbidden)
        {
            var refusal = result.Forbidden ? AccessRefusal.BadCredentials
                : context.Request.Headers.Authorization.Count > 0 ? AccessRefusal.BadCredentials : AccessRefusal.NoCredentials;
            // The route's pattern, not the path: a metric tag must not take a value per job id.
            var route = context.GetEndpoint() is RouteEndpoint endpoint ? endpoint.RoutePattern.RawText : FirstSegment(context.Request.Path);
            var method = $"{context.Request.Method} {route}";
            FlmTelemetry.AccessRefused.Add(1, new TagList { { FlmTelemetry.Tags.Method, method }, { FlmTelemetry.Tags.Refusal, refusal.TagName() } });
            LogRefused(log, context.Request.Method, context.Request.Path, refusal.TagName(), context.Connection.RemoteIpAddress?.ToString() ?? "unknown");
        }
        return _answer.HandleAsync(next, context, policy, result);
    }

    private static string FirstSegment(PathString path) =>
        "/" + (path.Value ?? "").TrimStart('/').Split('/', 2)[0];

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused a web request {Verb} {Path} ({Refusal}) from {Source}")]
    private static partial void LogRefused(ILogger log, string verb, string path, string refusal, string source);
}
