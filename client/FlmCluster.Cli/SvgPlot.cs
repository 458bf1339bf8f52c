using System.Globalization;
using System.Text;

namespace FlmCluster.Cli;

/// <summary>A minimal line/scatter chart written as SVG (log-x axis optional).</summary>
public sealed class SvgPlot(string title, string xLabel, string yLabel, bool logX)
{
    private const int Width = 720, Height = 460, Left = 80, Right = 30, Top = 50, Bottom = 60;
    private readonly List<(string Name, string Color, IReadOnlyList<(double X, double Y)> Points, bool Line, bool Marker)> _series = [];

    public SvgPlot Add(string name, string color, IEnumerable<(double X, double Y)> points, bool line, bool marker)
    {
        _series.Add((name, color, points.ToList(), line, marker));
        return this;
    }

    public string Render()
    {
        var all = _series.SelectMany(s => s.Points).ToList();
        double Tx(double x) => logX ? Math.Log10(x) : x;
        var (x0, x1) = (all.Min(p => Tx(p.X)), all.Max(p => Tx(p.X)));
        var (y0, y1) = (all.Min(p => p.Y), all.Max(p => p.Y));
        var (padX, padY) = ((x1 - x0) * 0.05 + 1e-9, (y1 - y0) * 0.08 + 1e-9);
        (x0, x1, y0, y1) = (x0 - padX, x1 + padX, y0 - padY, y1 + padY);
        string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
        double Px(double x) => Left + (Tx(x) - x0) / (x1 - x0) * (Width - Left - Right);
        double Py(double y) => Height - Bottom - (y - y0) / (y1 - y0) * (Height - Top - Bottom);

        var svg = new StringBuilder();
        svg.AppendLine($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" font-family=\"sans-serif\" font-size=\"12\">");
        svg.AppendLine($"<rect width=\"{Width}\" height=\"{Height}\" fill=\"white\"/>");
        svg.AppendLine($"<text x=\"{Width / 2}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{Escape(title)}</text>");
        svg.AppendLine($"<line x1=\"{Left}\" y1=\"{Height - Bottom}\" x2=\"{Width - Right}\" y2=\"{Height - Bottom}\" stroke=\"black\"/>");
        svg.AppendLine($"<line x1=\"{Left}\" y1=\"{Top}\" x2=\"{Left}\" y2=\"{Height - Bottom}\" stroke=\"black\"/>");
        for (var i = 0; i <= 5; i++)
        {
            var tx = x0 + (x1 - x0) * i / 5;
            var label = logX ? Math.Pow(10, tx).ToString("0.###e0", CultureInfo.InvariantCulture) : F(tx);
            var px = Left + (Width - Left - Right) * i / 5.0;
            svg.AppendLine($"<text x=\"{F(px)}\" y=\"{Height - Bottom + 18}\" text-anchor=\"middle\">{label}</text>");
            var ty = y0 + (y1 - y0) * i / 5;
            svg.AppendLine($"<text x=\"{Left - 8}\" y=\"{F(Py(ty) + 4)}\" text-anchor=\"end\">{ty.ToString("0.000", CultureInfo.InvariantCulture)}</text>");
            svg.AppendLine($"<line x1=\"{Left}\" y1=\"{F(Py(ty))}\" x2=\"{Width - Right}\" y2=\"{F(Py(ty))}\" stroke=\"#eee\"/>");
        }
        svg.AppendLine($"<text x=\"{(Left + Width - Right) / 2}\" y=\"{Height - 18}\" text-anchor=\"middle\">{Escape(xLabel)}</text>");
        svg.AppendLine($"<text transform=\"translate(20,{(Top + Height - Bottom) / 2}) rotate(-90)\" text-anchor=\"middle\">{Escape(yLabel)}</text>");
        var legendY = Top + 8;
        foreach (var (name, color, points, line, marker) in _series)
        {
            if (line && points.Count > 1)
                svg.AppendLine($"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{string.Join(" ", points.Select(p => $"{F(Px(p.X))},{F(Py(p.Y))}"))}\"/>");
            if (marker)
                foreach (var p in points)
                    svg.AppendLine($"<circle cx=\"{F(Px(p.X))}\" cy=\"{F(Py(p.Y))}\" r=\"5\" fill=\"{color}\"/>");
            svg.AppendLine($"<rect x=\"{Width - Right - 190}\" y=\"{legendY - 9}\" width=\"12\" height=\"12\" fill=\"{color}\"/>");
            svg.AppendLine($"<text x=\"{Width - Right - 172}\" y=\"{legendY + 1}\">{Escape(name)}</text>");
            legendY += 18;
        }
        svg.AppendLine("</svg>");
        return svg.ToString();
    }

    internal static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");
}
