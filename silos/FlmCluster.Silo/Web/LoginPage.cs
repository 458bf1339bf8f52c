using System.Net;
using FlmCluster.Grains.Security;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace FlmCluster.Silo.Web;

/// <summary>
/// The web port's sign-in: a form that takes a token (the contents of an operator or viewer token file) and, when
/// the cluster knows it, starts a session; and sign-out. Tokens go in a POST body, never in a URL, where they
/// would end up in histories and logs.
/// </summary>
internal static class LoginPage
{
    private const int MaxTokenLength = 4096;

    public static void Map(WebApplication app)
    {
        app.MapGet(WebAccess.LoginPath, (string? returnUrl) => Page(returnUrl, null)).AllowAnonymous();
        app.MapPost(WebAccess.LoginPath, SignIn).AllowAnonymous().DisableAntiforgery();
        app.MapPost(WebAccess.LogoutPath, async (HttpContext http) =>
        {
            await http.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme);
            return Results.Redirect(WebAccess.LoginPath);
        }).DisableAntiforgery();
    }

    private static async Task<IResult> SignIn(HttpContext http, ClientAuthenticator authenticator)
    {
        if (!http.Request.HasFormContentType)
            return Page(null, "send the token as a form field named token", StatusCodes.Status400BadRequest);
        var form = await http.Request.ReadFormAsync(http.RequestAborted);
        var returnUrl = Local(form["returnUrl"].ToString());
        var token = form["token"].ToString().Trim();
        if (token.Length is 0 or > MaxTokenLength)
            return Page(returnUrl, "paste the contents of a token file (viewer.token or operator.token)", StatusCodes.Status401Unauthorized);
        if (authenticator.Authenticate(token, null, null, null).Role is not { } role)
            return Page(returnUrl, "that token is not one of this cluster's", StatusCodes.Status401Unauthorized);
        await http.SignInAsync(CookieAuthenticationDefaults.AuthenticationScheme, WebAccess.Principal(role, CookieAuthenticationDefaults.AuthenticationScheme));
        return Results.Redirect(returnUrl ?? "/");
    }

    /// <summary>Only a path on this site: an absolute or protocol-relative address would send the browser elsewhere.</summary>
    private static string? Local(string? url) =>
        url is { Length: > 0 } && url[0] == '/' && !url.StartsWith("//", StringComparison.Ordinal) && !url.StartsWith("/\\", StringComparison.Ordinal) ? url : null;

    private static IResult Page(string? returnUrl, string? error, int status = StatusCodes.Status200OK)
    {
        var back = Local(returnUrl) is { } r ? $"<input type=\"hidden\" name=\"returnUrl\" value=\"{WebUtility.HtmlEncode(r)}\">" : "";
        var problem = error is null ? "" : $"<p class=\"error\" role=\"alert\">{WebUtility.HtmlEncode(error)}</p>";
        var html = $$"""
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>FlmCluster — sign in</title>
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <style>
              body { font-family: system-ui, sans-serif; background: #0f1419; color: #e6e6e6; display: grid; place-items: center; min-height: 100vh; margin: 0; }
              form { background: #182028; padding: 2rem; border-radius: 8px; width: 26rem; }
              h1 { font-size: 1.2rem; margin-top: 0; }
              input[type=password] { width: 100%; box-sizing: border-box; padding: .5rem; margin: .5rem 0 1rem; background: #0f1419; color: inherit; border: 1px solid #3a4654; border-radius: 4px; }
              button { padding: .5rem 1.2rem; background: #3b82f6; color: white; border: 0; border-radius: 4px; cursor: pointer; }
              .error { color: #f87171; }
              .hint { color: #9aa5b1; font-size: .85rem; }
            </style></head>
            <body><form method="post" action="{{WebAccess.LoginPath}}">
              <h1>FlmCluster dashboard</h1>
              {{problem}}
              <label for="token">Token</label>
              <input id="token" name="token" type="password" autocomplete="off" autofocus required>
              {{back}}
              <button type="submit">Sign in</button>
              <p class="hint">The contents of a viewer or operator token file (<code>flm cluster up --secure</code> writes them to the cluster's credentials folder).</p>
            </form></body></html>
            """;
        return Results.Content(html, "text/html; charset=utf-8", statusCode: status);
    }
}
