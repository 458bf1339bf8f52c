using System.Net;
using System.Text.Json.Nodes;
using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Tests.Process;
using Microsoft.Playwright;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// A secure cluster of silo processes with Redis (`flm cluster up --secure`: mutual TLS between silos, TLS at the
/// gateways, tokens and client certificates): clients without credentials, with a certificate of another
/// authority, or with a viewer's token cannot submit (exit 77, one clear error line); an operator submits and
/// watches, by token and by certificate; a raw grain call from a client to a worker method is refused.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class SecureClusterEndToEndTests : IDisposable
{
    private const int BasePort = 24411; // a port range of its own: end-to-end test classes run in parallel
    private readonly Flm _flm = new("flm-secure-");

    public void Dispose() => _flm.Dispose();

    private string Credentials => Path.Combine(_flm.Home, "cluster", "credentials");

    private static readonly string[] Submit =
        ["submit", "--config", "tiny", "--set", "tokenizer=bytes", "--set", "model.vocab_pad_multiple=128", "--set", "model.layers=2", "--steps", "6", "--layout", "dp=2"];

    /// <summary>A copy of the cluster profile with its credentials replaced by <paramref name="edit"/>'s; runs `flm` with it.</summary>
    private FlmResult RunWithProfile(Action<JsonObject> edit, params string[] args)
    {
        var profile = JsonNode.Parse(File.ReadAllText(_flm.Profile))!.AsObject();
        profile["token_file"] = "";
        profile["client_certificate"] = "";
        profile["client_key"] = "";
        edit(profile);
        var path = Path.Combine(_flm.Home, $"profile-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, profile.ToJsonString());
        return FlmProcess.Run(_flm.Home, new Dictionary<string, string>(_flm.Environment) { ["FLM_PROFILE"] = path }, TimeSpan.FromMinutes(2), args);
    }

    private static void AssertRefused(FlmResult result, string why)
    {
        Assert.True(result.ExitCode == 77, $"exit {result.ExitCode}: {result.Output} {result.Error}");
        var line = Assert.Single(result.ErrorLines);
        Assert.StartsWith("error: the cluster refused IClusterSchedulerGrain.Submit: ", line);
        Assert.Contains(why, line);
    }

    [Fact]
    public async Task Only_an_operator_submits_to_a_secure_cluster_and_clients_never_reach_worker_methods()
    {
        var up = _flm.Run("cluster", "up", "--secure", "--nodes", "2", "--gpus-per-node", "1", "--control-nodes", "1", "--redis", _flm.Redis.ConnectionString,
            "--base-port", $"{BasePort}");
        Assert.True(up.ExitCode == 0, up.Output + up.Error);
        Assert.Contains("secure: TLS with the authority", up.Output);
        var log = File.ReadAllText(Path.Combine(_flm.Home, "cluster", "logs", "node0.log"));
        Assert.Contains("Secure mode: mutual TLS between silos", log);
        var profile = ClusterProfile.Load(_flm.Profile);
        using (var probe = new SiloWeb(profile, TimeSpan.FromSeconds(10), withToken: false))
        {
            // Probes need no credentials, but the port speaks HTTPS only, with a certificate of the cluster's authority.
            var ready = await probe.Http.GetAsync($"{probe.At(_flm.SiloHttpPorts()[1])}/health/ready", TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
            Assert.Contains("cluster: Healthy (active member", await ready.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
            using var plain = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
            await Assert.ThrowsAsync<HttpRequestException>(() => plain.GetAsync($"http://127.0.0.1:{_flm.SiloHttpPorts()[1]}/health/ready", TestContext.Current.CancellationToken));
        }

        AssertRefused(RunWithProfile(_ => { }, Submit), "this client sent no credentials");
        AssertRefused(RunWithProfile(p => p["token_file"] = Path.Combine(Credentials, "viewer.token"), Submit), "it needs the operator role");
        var foreign = CredentialFiles.Create(Path.Combine(_flm.Home, "foreign"), [], TimeSpan.FromDays(1));
        AssertRefused(RunWithProfile(p => (p["client_certificate"], p["client_key"]) = (foreign.OperatorCertificate, foreign.OperatorKey), Submit),
            "was not issued by its authority");
        var forgedToken = Path.Combine(_flm.Home, "forged.token");
        File.WriteAllText(forgedToken, "not-a-token-of-this-cluster\n");
        AssertRefused(RunWithProfile(p => p["token_file"] = forgedToken, Submit), "the token is not one of this cluster's");
        // A viewer reads.
        Assert.Equal(0, RunWithProfile(p => p["token_file"] = Path.Combine(Credentials, "viewer.token"), "nodes").ExitCode);

        // The operator (the profile's token) submits and watches; the job's two ranks exchange gradients over mutual TLS.
        var submit = _flm.Run([.. Submit, "--watch"]);
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Split('\n')[0].Trim();
        Assert.Contains($"{jobId}: completed at step 6/6", submit.Output);
        // The operator's certificate instead of the token.
        var byCertificate = RunWithProfile(p => (p["client_certificate"], p["client_key"]) = (Path.Combine(Credentials, "operator.pem"), Path.Combine(Credentials, "operator.key")),
            "cancel", "no-such-job");
        Assert.Equal(2, byCertificate.ExitCode); // let in: the cluster answered that the job is unknown
        Assert.Contains("no job 'no-such-job'", byCertificate.Error);

        // A raw grain call from an operator's client to a worker's internal method.
        await using var client = await FlmClusterClient.ConnectAsync(profile);
        var refused = await Assert.ThrowsAsync<AccessDeniedException>(() =>
            client.Grains.GetGrain<IGpuWorkerGrain>("node0/gpu0").FetchReplica(jobId, 0, 6, 0));
        Assert.Equal(AccessRefusal.Internal, refused.Reason);
        Assert.Equal("IGpuWorkerGrain.FetchReplica", refused.Method);

        var webPort = _flm.SiloHttpPorts()[1];
        await WebPortRefusesWhoHasNoToken(profile, webPort, jobId);

        // Refusals are counted on the silo that refused them (every silo serves /metrics, to the cluster's clients).
        using var viewer = new SiloWeb(profile with { TokenFile = Path.Combine(Credentials, "viewer.token") }, TimeSpan.FromSeconds(10));
        var refusals = new List<Sample>();
        foreach (var port in _flm.SiloHttpPorts())
            refusals.AddRange((await Prometheus.Scrape(viewer.Http, $"{viewer.At(port)}/metrics")).Where(s => s.Name == "flm_access_refused_total"));
        Assert.Equal(5, refusals.Where(s => !s["flm_method"]!.Contains(' ')).Sum(s => s.Value)); // grain calls: Interface.Method
        var web = refusals.Where(s => s["flm_method"]!.Contains(' ')).ToList(); // web requests: VERB route
        Assert.Equal(3, web.Where(s => s["flm_refusal"] == "no_credentials").Sum(s => s.Value));
        Assert.Equal(1, web.Where(s => s["flm_refusal"] == "bad_credentials").Sum(s => s.Value));
        Assert.Contains(web, s => s["flm_method"] == "GET /api/jobs/{id}"); // the route, not the job's id

        await SignInToTheDashboard(webPort, jobId);
    }

    /// <summary>
    /// The web port of a secure silo (dashboard API, pages, /metrics) answers only with a token of the cluster:
    /// scripts get 401, a browser's page request goes to the sign-in form. Four refusals, all on this port.
    /// </summary>
    private async Task WebPortRefusesWhoHasNoToken(ClusterProfile profile, int port, string jobId)
    {
        var ct = TestContext.Current.CancellationToken;
        using var anonymous = new SiloWeb(profile with { TokenFile = "" }, TimeSpan.FromSeconds(10));
        var api = $"{anonymous.At(port)}/api/jobs/{jobId}";
        using (var refused = await anonymous.Http.GetAsync(api, ct))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
            Assert.Equal("Bearer realm=\"flmcluster\"", refused.Headers.WwwAuthenticate.ToString());
        }
        using (var refused = await anonymous.Http.GetAsync($"{anonymous.At(port)}/metrics", ct))
            Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
        using (var page = new HttpRequestMessage(HttpMethod.Get, $"{anonymous.At(port)}/static/index.html"))
        {
            page.Headers.Accept.ParseAdd("text/html");
            using var redirected = await anonymous.Http.SendAsync(page, HttpCompletionOption.ResponseHeadersRead, ct);
            // Followed to the sign-in form, which anyone may load.
            Assert.Equal(HttpStatusCode.OK, redirected.StatusCode);
            Assert.Equal("/login", redirected.RequestMessage!.RequestUri!.AbsolutePath);
            Assert.Contains("ReturnUrl=%2Fstatic%2Findex.html", redirected.RequestMessage.RequestUri.Query);
        }
        var forged = Path.Combine(_flm.Home, "forged.token");
        using (var forger = new SiloWeb(profile with { TokenFile = forged }, TimeSpan.FromSeconds(10)))
        using (var refused = await forger.Http.GetAsync(api, ct))
            Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);

        // A viewer's token reads everything the port serves.
        using var viewer = new SiloWeb(profile with { TokenFile = Path.Combine(Credentials, "viewer.token") }, TimeSpan.FromSeconds(10));
        using var job = await viewer.Http.GetAsync(api, ct);
        Assert.Equal(HttpStatusCode.OK, job.StatusCode);
        Assert.Contains($"\"{jobId}\"", await job.Content.ReadAsStringAsync(ct));
    }

    /// <summary>A browser: the dashboard sends it to the sign-in form; a wrong token is refused there; the viewer's token opens the job's page.</summary>
    private async Task SignInToTheDashboard(int port, string jobId)
    {
        await using var browser = await Browser.Launch();
        var page = await browser.Open($"https://127.0.0.1:{port}/#/jobs/{jobId}", authority: true);
        await page.WaitForSelectorAsync("input#token");
        await Browser.Screenshot(page, "dashboard-sign-in.png");
        await page.FillAsync("input#token", "not-a-token-of-this-cluster");
        await page.ClickAsync("button[type=submit]");
        Assert.Equal("that token is not one of this cluster's", await page.Locator(".error").InnerTextAsync());
        await page.FillAsync("input#token", File.ReadAllText(Path.Combine(Credentials, "viewer.token")).Trim());
        await page.ClickAsync("button[type=submit]");
        await page.WaitForURLAsync(url => url.Contains("/static/index.html", StringComparison.Ordinal));
        await page.GotoAsync($"https://127.0.0.1:{port}/static/index.html#/jobs/{jobId}");
        await page.WaitForFunctionAsync("() => window.flmCharts && flmCharts.loss && flmCharts.loss.data[0].length === 6");
        var cookie = Assert.Single(await page.Context.CookiesAsync(), c => c.Name == "flm_session");
        Assert.True(cookie.HttpOnly && cookie.Secure);
        Assert.Equal(SameSiteAttribute.Strict, cookie.SameSite);
        Assert.Equal("viewer Sign out", (await page.Locator("#signout").InnerTextAsync()).Trim());
        await Browser.Screenshot(page, "dashboard-signed-in.png");

        // Signing out ends the session: the dashboard sends the browser back to the form.
        await page.ClickAsync("#signout button");
        await page.WaitForSelectorAsync("input#token");
        await page.GotoAsync($"https://127.0.0.1:{port}/static/index.html");
        await page.WaitForSelectorAsync("input#token");
        Assert.DoesNotContain(await page.Context.CookiesAsync(), c => c.Name == "flm_session");
    }
}
