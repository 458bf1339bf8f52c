using System.Text.Encodings.Web;
using FlmCluster.Grains.Security;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace FlmCluster.Silo.Web;

/// <summary>
/// <c>Authorization: Bearer TOKEN</c> on the web port, checked by the same <see cref="ClientAuthenticator"/> as
/// the gateway's calls: a token from the operator or viewer token file gives that role.
/// </summary>
public sealed class TokenAuthenticationHandler(
    IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder, ClientAuthenticator authenticator)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    public const string SchemeName = "FlmToken";
    private const string Prefix = "Bearer ";

    protected override Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        var header = Request.Headers.Authorization.ToString();
        if (!header.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase))
            return Task.FromResult(AuthenticateResult.Fail("the Authorization header is not 'Bearer TOKEN'"));
        var (role, _) = authenticator.Authenticate(header[Prefix.Length..].Trim(), null, null, null);
        return Task.FromResult(role is { } r
            ? AuthenticateResult.Success(new AuthenticationTicket(WebAccess.Principal(r, SchemeName), SchemeName))
            : AuthenticateResult.Fail("the token is not one of this cluster's"));
    }

    protected override Task HandleChallengeAsync(AuthenticationProperties properties)
    {
        Challenge(Response);
        return Task.CompletedTask;
    }

    public static void Challenge(HttpResponse response)
    {
        response.StatusCode = StatusCodes.Status401Unauthorized;
        response.Headers.WWWAuthenticate = "Bearer realm=\"flmcluster\"";
    }
}
