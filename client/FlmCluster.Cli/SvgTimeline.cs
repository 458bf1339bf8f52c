using System.Globalization;
using System.Text;
using FlmCluster.Silo.Sim;

namespace FlmCluster.Cli;

/// <summary>
/// A twin run on a time axis in simulated days: each stage's span, the growth transitions between them, each
/// server loss as a red line and its recovery until the first step after it as a red band. (A bar timeline, so
/// <see cref="SvgPlot"/>'s line chart does not fit; it shares its escaping.)
/// </summary>
public static class SvgTimeline
{
    private const double Width = 1200, Left = 60, Right = 20;
    private static readonly string[] Colours = ["#4e79a7", "#59a14f", "#9c755f", "#76b7b2", "#b07aa1"];

    public static string Render(TwinReport report)
    {
        var days = Math.Max(report.TotalDays, 1e-9);
        string F(double v) => v.ToString("0.0", CultureInfo.InvariantCulture);
        string X(double d) => F(Left + d / days * (Width - Left - Right));
        string W(double from, double to) => F(Math.Max(1, (to - from) / days * (Width - Left - Right)));
        var svg = new StringBuilder();
        svg.AppendLine(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"190\" font-family=\"sans-serif\" font-size=\"12\">");
        svg.AppendLine(CultureInfo.InvariantCulture, $"<rect width=\"{Width}\" height=\"190\" fill=\"white\"/>");
        svg.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{Left}\" y=\"14\">{SvgPlot.Escape($"{report.Config} on {report.Servers} × {report.GpusPerServer} simulated GPUs: {report.TotalDays:0.00} days, ETTR {report.Ettr:P2}")}</text>");
        for (var i = 0; i < report.Stages.Count; i++)
        {
            var s = report.Stages[i];
            svg.AppendLine(CultureInfo.InvariantCulture, $"<rect x=\"{X(s.StartDays)}\" y=\"40\" width=\"{W(s.StartDays, s.EndDays)}\" height=\"40\" fill=\"{Colours[i % Colours.Length]}\"><title>{SvgPlot.Escape(s.Name)}: {s.Days:0.00} d</title></rect>");
            svg.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{X(s.StartDays)}\" y=\"34\">{SvgPlot.Escape(s.Name)}: {s.Days:0.00} d</text>");
        }
        foreach (var g in report.Growth)
            svg.AppendLine(CultureInfo.InvariantCulture, $"<rect x=\"{X(g.StartDays)}\" y=\"40\" width=\"{W(g.StartDays, g.EndDays)}\" height=\"40\" fill=\"#f28e2b\"><title>growth {SvgPlot.Escape(g.From)} → {SvgPlot.Escape(g.To)}: {g.Seconds / 60:0.0} min</title></rect>");
        foreach (var f in report.Failures)
        {
            var what = SvgPlot.Escape($"{f.Server} ({f.Kind}) lost at step {f.AtStep}; recovery {f.RecoverySeconds:0.0} s, redone {f.RedoneSeconds:0.0} s");
            svg.AppendLine(CultureInfo.InvariantCulture, $"<line x1=\"{X(f.AtDays)}\" x2=\"{X(f.AtDays)}\" y1=\"85\" y2=\"130\" stroke=\"#e15759\" stroke-width=\"2\"><title>{what}</title></line>");
            if (f.RecoveredDays is { } back)
                svg.AppendLine(CultureInfo.InvariantCulture, $"<rect x=\"{X(f.AtDays)}\" y=\"100\" width=\"{W(f.AtDays, back)}\" height=\"20\" fill=\"#e15759\" opacity=\"0.6\"><title>{what}</title></rect>");
        }
        var tick = days > 40 ? 5 : days > 2 ? 1 : days > 0.2 ? 0.1 : 0.01;
        for (var d = 0.0; d <= days + 1e-9; d += tick)
            svg.AppendLine(CultureInfo.InvariantCulture, $"<line x1=\"{X(d)}\" x2=\"{X(d)}\" y1=\"140\" y2=\"145\" stroke=\"black\"/><text x=\"{X(d)}\" y=\"160\" text-anchor=\"middle\">{d.ToString("0.##", CultureInfo.InvariantCulture)}</text>");
        svg.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{Left}\" y=\"180\">simulated days; stages (blue, green, brown), growth (orange), server losses (red lines) and recoveries until their first step (red)</text>");
        svg.AppendLine("</svg>");
        return svg.ToString();
    }
}
