using Microsoft.Playwright;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// Debian's headless Chromium (/usr/bin/chromium, installed by .ci/run) driven through Playwright, with a fresh
/// profile per launch. Records every console error and uncaught page error of its pages.
/// </summary>
public sealed class Browser : IAsyncDisposable
{
    public const string Executable = "/usr/bin/chromium";

    private readonly IPlaywright _playwright;
    private readonly IBrowser _browser;
    private readonly List<string> _errors = [];

    private Browser(IPlaywright playwright, IBrowser browser)
    {
        _playwright = playwright;
        _browser = browser;
    }

    /// <summary>Console errors and page errors seen so far, in order.</summary>
    public IReadOnlyList<string> Errors
    {
        get
        {
            lock (_errors)
                return _errors.ToList();
        }
    }

    /// <summary>Where the tests save screenshots: TestResults/screenshots beside the test binaries.</summary>
    public static string Screenshots { get; } = Directory.CreateDirectory(Path.Combine(AppContext.BaseDirectory, "TestResults", "screenshots")).FullName;

    public static async Task<Browser> Launch()
    {
        if (!File.Exists(Executable))
            throw new InvalidOperationException($"{Executable} is not installed (apt-get install chromium); .ci/run installs it");
        var playwright = await Playwright.CreateAsync();
        var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Executable,
            Headless = true,
            Args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
        });
        return new Browser(playwright, browser);
    }

    /// <param name="authority">The site's certificate comes from a cluster's own authority, which the browser does not know.</param>
    public async Task<IPage> Open(string url, int width = 1400, int height = 1100, bool authority = false)
    {
        var page = await _browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = width, Height = height }, IgnoreHTTPSErrors = authority });
        page.Console += (_, message) =>
        {
            if (message.Type == "error")
                lock (_errors)
                    _errors.Add($"console: {message.Text} ({message.Location})");
        };
        page.PageError += (_, error) =>
        {
            lock (_errors)
                _errors.Add($"page error: {error}");
        };
        await page.GotoAsync(url);
        return page;
    }

    public static async Task<string> Screenshot(IPage page, string name)
    {
        var path = Path.Combine(Screenshots, name);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = path, FullPage = true });
        return path;
    }

    public async ValueTask DisposeAsync()
    {
        await _browser.DisposeAsync();
        _playwright.Dispose();
    }
}
