namespace FlmCluster.Training.Parallel;

/// <summary>An ordered set of global ranks that take part in one collective; the name keys the rendezvous.</summary>
public sealed class ProcessGroup
{
    public string Name { get; }
    public IReadOnlyList<int> Ranks { get; }
    public int Size => Ranks.Count;

    public ProcessGroup(string name, IReadOnlyList<int> ranks)
    {
        if (ranks.Count == 0)
            throw new ArgumentException("a process group needs at least one rank", nameof(ranks));
        if (ranks.Distinct().Count() != ranks.Count)
            throw new ArgumentException($"group {name} lists a rank twice", nameof(ranks));
        Name = name;
        Ranks = ranks;
    }

    public int IndexOf(int globalRank)
    {
        for (var i = 0; i < Ranks.Count; i++)
            if (Ranks[i] == globalRank)
                return i;
        throw new ArgumentException($"rank {globalRank} is not in group {Name}");
    }

    public bool Contains(int globalRank) => Ranks.Contains(globalRank);

    public override string ToString() => $"{Name}[{string.Join(",", Ranks)}]";
}

/// <summary>The process groups one rank belongs to, derived from the layout.</summary>
public sealed class RankGroups
{
    public ParallelLayout Layout { get; }
    public int Rank { get; }
    public RankCoords Coords { get; }

    /// <summary>Every rank of the job.</summary>
    public ProcessGroup World { get; }

    /// <summary>Ranks sharing this rank's (dp, pp): the tensor-parallel shards of one layer.</summary>
    public ProcessGroup Tensor { get; }

    /// <summary>Ranks sharing this rank's (tp, pp): replicas over which gradients are reduced.</summary>
    public ProcessGroup Data { get; }

    /// <summary>Ranks sharing this rank's (tp, dp): the stages of one pipeline, in stage order.</summary>
    public ProcessGroup Pipeline { get; }

    /// <summary>First and last stage of this pipeline, which both hold the tied embedding (null when pp = 1).</summary>
    public ProcessGroup? Embedding { get; }

    public bool IsFirstStage => Coords.Pp == 0;
    public bool IsLastStage => Coords.Pp == Layout.Pp - 1;
    public int? PreviousStageRank => IsFirstStage ? null : Layout.RankOf(Coords with { Pp = Coords.Pp - 1 });
    public int? NextStageRank => IsLastStage ? null : Layout.RankOf(Coords with { Pp = Coords.Pp + 1 });

    public RankGroups(ParallelLayout layout, int rank)
    {
        Layout = layout;
        Rank = rank;
        Coords = layout.CoordsOf(rank);
        var c = Coords;
        World = new ProcessGroup("world", Enumerable.Range(0, layout.WorldSize).ToArray());
        Tensor = new ProcessGroup($"tp/dp{c.Dp}/pp{c.Pp}", Enumerable.Range(0, layout.Tp).Select(t => layout.RankOf(c with { Tp = t })).ToArray());
        Data = new ProcessGroup($"dp/tp{c.Tp}/pp{c.Pp}", Enumerable.Range(0, layout.Dp).Select(d => layout.RankOf(c with { Dp = d })).ToArray());
        Pipeline = new ProcessGroup($"pp/tp{c.Tp}/dp{c.Dp}", Enumerable.Range(0, layout.Pp).Select(p => layout.RankOf(c with { Pp = p })).ToArray());
        if (layout.Pp > 1 && (IsFirstStage || IsLastStage))
            Embedding = new ProcessGroup($"emb/tp{c.Tp}/dp{c.Dp}", [Pipeline.Ranks[0], Pipeline.Ranks[^1]]);
    }
}
