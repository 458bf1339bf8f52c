using System.Security.Claims;
using FlmCluster.Grains.Abstractions;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Authorization.Policy;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace FlmCluster.Silo.Web;

/// <summary>
/// Who may use a secure silo's web port (dashboard, its API and streams, the Orleans dashboard, /metrics): the
/// cluster's clients, by the same tokens the gateway accepts. Scripts and Prometheus send
/// <c>Authorization: Bearer TOKEN</c>; a browser signs in once at <see cref="LoginPath"/> with a token and then
/// holds a session cookie (HttpOnly, Secure, SameSite=Strict, encrypted with a key that lives only in this silo's
/// memory, so a restart signs everyone out). Every page is read-only, so a viewer sees all of it. The health
/// endpoints stay open for orchestrators' probes. Refusals are logged and counted like refused grain calls.
/// </summary>
public static class WebAccess
{
    public const string LoginPath = "/login";
    public const string LogoutPath = "/logout";
    public const string CookieName = "flm_session";
    public const string RoleClaim = ClaimTypes.Role;

    private const string Selector = "flm";
    private static readonly TimeSpan SessionLifetime = TimeSpan.FromHours(12);

    public static IServiceCollection AddFlmWebAccess(this IServiceCollection services)
    {
        services.AddSingleton<IDataProtectionProvider>(new EphemeralDataProtectionProvider());
        services.AddAuthentication(Selector)
            .AddPolicyScheme(Selector, null, o => o.ForwardDefaultSelector = http =>
                http.Request.Headers.Authorization.Count > 0 ? TokenAuthenticationHandler.SchemeName : CookieAuthenticationDefaults.AuthenticationScheme)
            .AddScheme<AuthenticationSchemeOptions, TokenAuthenticationHandler>(TokenAuthenticationHandler.SchemeName, null)
            .AddCookie(CookieAuthenticationDefaults.AuthenticationScheme, o =>
            {
                o.Cookie.Name = CookieName;
                o.Cookie.HttpOnly = true;
                o.Cookie.SecurePolicy = CookieSecurePolicy.Always;
                o.Cookie.SameSite = SameSiteMode.Strict;
                o.ExpireTimeSpan = SessionLifetime;
                o.SlidingExpiration = true;
                o.LoginPath = LoginPath;
                o.LogoutPath = LogoutPath;
                // Pages go to the sign-in form; the API, streams and /metrics answer 401 (a script cannot fill in a form).
                o.Events.OnRedirectToLogin = context =>
                {
                    if (WantsPage(context.Request))
                        context.Response.Redirect(context.RedirectUri);
                    else
                        TokenAuthenticationHandler.Challenge(context.Response);
                    return Task.CompletedTask;
                };
            });
        services.AddAuthorizationBuilder()
            .SetFallbackPolicy(new AuthorizationPolicyBuilder().RequireAuthenticatedUser().RequireRole(Role(ClientRole.Viewer), Role(ClientRole.Operator)).Build());
        services.AddSingleton<IAuthorizationMiddlewareResultHandler, RefusedWebRequests>();
        return services;
    }

    /// <summary>Before anything the web port serves: authentication, the sign-in and sign-out endpoints, and the rule that every other request needs a role.</summary>
    public static void UseFlmWebAccess(this WebApplication app)
    {
        app.UseAuthentication();
        app.UseAuthorization();
        LoginPage.Map(app);
    }

    public static string Role(ClientRole role) => role == ClientRole.Operator ? "operator" : "viewer";

    public static ClaimsPrincipal Principal(ClientRole role, string scheme) =>
        new(new ClaimsIdentity([new Claim(ClaimTypes.Name, Role(role)), new Claim(RoleClaim, Role(role))], scheme));

    /// <summary>A browser navigating to a page (not the dashboard's script fetching JSON or a stream, not a scraper).</summary>
    private static bool WantsPage(HttpRequest request) =>
        HttpMethods.IsGet(request.Method) && !request.Path.StartsWithSegments("/api") && !request.Path.StartsWithSegments("/metrics")
        && request.Headers.Accept.ToString().Contains("text/html", StringComparison.OrdinalIgnoreCase);
}
