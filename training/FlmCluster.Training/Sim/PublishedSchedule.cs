namespace FlmCluster.Training.Sim;

/// <summary>One stage of FLM-101B's training as published: the yardstick the simulator is measured against.</summary>
/// <param name="TflopsPerGpu">Throughput per GPU (FLM-101B repository README, github.com/cofe-ai/FLM-101B).</param>
/// <param name="Days">Wall time of the stage (model card, huggingface.co/CofeAI/FLM-101B).</param>
/// <param name="Tokens">Tokens trained in the stage (model card).</param>
public sealed record PublishedStage(string Name, double TflopsPerGpu, double Days, double Tokens);

/// <summary>FLM-101B's published schedule on 24 DGX-A800 servers (192 GPUs); see docs/model.md.</summary>
public static class PublishedSchedule
{
    public static IReadOnlyList<PublishedStage> Flm101b { get; } =
    [
        new("16b", 162, 9.63, 245.37e9),
        new("51b", 160, 5.37, 39.64e9),
        new("101b", 165, 6.54, 26.54e9),
    ];

    /// <summary>The stages' days added up (model card: 21.54).</summary>
    public static double StageDays => Flm101b.Sum(s => s.Days);

    /// <summary>The whole run end to end, as the English model card bounds it ("less than 26 days").</summary>
    public const double TotalDaysBound = 26;

    public const int Gpus = 192;
}
