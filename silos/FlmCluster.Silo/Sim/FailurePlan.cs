using System.Text.Json;
using System.Text.Json.Serialization;
using FlmCluster.Training;

namespace FlmCluster.Silo.Sim;

/// <summary>
/// One server loss the twin injects: at a committed step, at a simulated hour since submission, or during the
/// growth transition into a stage; of a named server, the job coordinator's server, or a random one of the job's.
/// The server comes back repaired <see cref="RepairHours"/> simulated hours later.
/// </summary>
public sealed record PlannedLoss(long? AtStep, double? AtHours, string? AtGrowth, string Server, double RepairHours)
{
    public const string Random = "random";
    public const string Coordinator = "coordinator";

    /// <summary>Repair time when a schedule entry or a rate model does not give one (an assumption: a server swapped or rebooted).</summary>
    public const double DefaultRepairHours = 2;

    public string When => AtStep is { } step ? $"step {step}" : AtHours is { } hours ? $"{hours:0.###} h" : $"growth into {AtGrowth}";
}

/// <summary>
/// The server losses of a twin run, in the order they are due: a fixed schedule (a failures file) or a Poisson
/// process in simulated time with a seeded generator, drawn one arrival ahead.
/// </summary>
public sealed class FailurePlan
{
    private readonly Queue<PlannedLoss> _scheduled;
    private readonly double _perHour;
    private readonly double _repairHours;
    private readonly Random? _arrivals;
    private double _lastHours;

    private FailurePlan(IEnumerable<PlannedLoss> scheduled, double perHour, double repairHours, int seed, string description)
    {
        _scheduled = new Queue<PlannedLoss>(scheduled);
        _perHour = perHour;
        _repairHours = repairHours;
        _arrivals = perHour > 0 ? new Random(seed) : null;
        Description = description;
        if (_arrivals is not null)
            DrawNext();
    }

    public string Description { get; }

    /// <summary>Arrivals per simulated hour of the Poisson process (0 for a schedule).</summary>
    public double RatePerHour => _perHour;

    /// <summary>The schedule's entries still to come (a rate model's next arrival).</summary>
    public IReadOnlyCollection<PlannedLoss> Pending => _scheduled;

    public static FailurePlan None { get; } = new([], 0, 0, 0, "no server losses");

    public static FailurePlan Scheduled(IReadOnlyList<PlannedLoss> losses, string description) => new(losses, 0, 0, 0, description);

    /// <summary>Losses of random servers of the job as a Poisson process of <paramref name="perHour"/> arrivals per simulated hour.</summary>
    public static FailurePlan Poisson(double perHour, int seed, string description, double repairHours = PlannedLoss.DefaultRepairHours)
    {
        if (!double.IsFinite(perHour) || perHour <= 0)
            throw new ArgumentOutOfRangeException(nameof(perHour), perHour, "a rate is positive and finite");
        return new([], perHour, repairHours, seed, description);
    }

    /// <summary>The next loss due, or null when none is left.</summary>
    public PlannedLoss? Next => _scheduled.TryPeek(out var next) ? next : null;

    /// <summary>The next loss has been handled (injected or passed over).</summary>
    public void Advance()
    {
        _scheduled.Dequeue();
        if (_arrivals is not null)
            DrawNext();
    }

    private void DrawNext()
    {
        // Exponential gaps between arrivals: inverse transform of a uniform in (0, 1].
        _lastHours += -Math.Log(1 - _arrivals!.NextDouble()) / _perHour;
        _scheduled.Enqueue(new PlannedLoss(null, _lastHours, null, PlannedLoss.Random, _repairHours));
    }

    /// <summary>
    /// Reads a failures file: <c>{"losses": [{"at_step": N | "at_hours": H | "at_growth": "STAGE", "server": "random" |
    /// "coordinator" | "nodeK", "repair_hours": R}, …]}</c> (docs/simulation.md). Problems are <see cref="FlmUserException"/>s.
    /// </summary>
    public static IReadOnlyList<PlannedLoss> ReadFile(string path)
    {
        if (!File.Exists(path))
            throw new FlmUserException($"--failures file '{path}' does not exist; give a JSON file of server losses (docs/simulation.md)");
        FailuresFile? file;
        try
        {
            file = JsonSerializer.Deserialize<FailuresFile>(File.ReadAllText(path), FileOptions);
        }
        catch (JsonException ex)
        {
            throw new FlmUserException($"--failures file '{path}' is not a valid failures file: {ex.Message} (docs/simulation.md has the format)");
        }
        if (file?.Losses is not { } entries)
            throw new FlmUserException($"--failures file '{path}' has no \"losses\" list; give {{\"losses\": [{{\"at_step\": 100, \"server\": \"random\"}}]}}");
        return [.. entries.Select((e, i) => Check(e, i, path))];
    }

    private static PlannedLoss Check(LossEntry? e, int index, string path)
    {
        var where = $"--failures file '{path}', loss {index}";
        if (e is null)
            throw new FlmUserException($"{where} is null; give an object with at_step, at_hours or at_growth");
        var moments = (e.AtStep is null ? 0 : 1) + (e.AtHours is null ? 0 : 1) + (e.AtGrowth is null ? 0 : 1);
        if (moments != 1)
            throw new FlmUserException($"{where} has {moments} of at_step, at_hours and at_growth; give exactly one");
        if (e.AtStep is < 1)
            throw new FlmUserException($"{where}: at_step {e.AtStep} is not a step; give a step of 1 or more");
        if (e.AtHours is { } hours && !(double.IsFinite(hours) && hours >= 0))
            throw new FlmUserException($"{where}: at_hours {hours} is not a time; give simulated hours, 0 or more");
        if (e.AtGrowth is { Length: 0 })
            throw new FlmUserException($"{where}: at_growth is empty; give the name of the stage grown into");
        var server = e.Server ?? PlannedLoss.Random;
        if (server.Length == 0)
            throw new FlmUserException($"{where}: server is empty; give a node name (node0 …), \"coordinator\" or \"random\"");
        var repair = e.RepairHours ?? PlannedLoss.DefaultRepairHours;
        if (!(double.IsFinite(repair) && repair > 0))
            throw new FlmUserException($"{where}: repair_hours {repair} is not a duration; give simulated hours above 0");
        return new PlannedLoss(e.AtStep, e.AtHours, e.AtGrowth, server, repair);
    }

    private static readonly JsonSerializerOptions FileOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    private sealed record FailuresFile(IReadOnlyList<LossEntry?>? Losses);

    private sealed record LossEntry(long? AtStep, double? AtHours, string? AtGrowth, string? Server, double? RepairHours);
}
