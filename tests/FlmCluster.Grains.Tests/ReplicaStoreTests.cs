using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Checkpoint;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// What a peer sends to be held as a replica is checked before it is kept: the chunks' sizes and count, the
/// silo's replica budget, and the replica's checksum. Refusals are typed and leave nothing held or counted.
/// </summary>
public sealed class ReplicaStoreTests
{
    private const int Chunk = 4096;

    private static ChunkedBytes Bytes(int length, int chunk, byte seed)
    {
        var data = Enumerable.Range(0, length).Select(i => (byte)(i * 31 + seed)).ToArray();
        return new ChunkedBytes(data.Chunk(chunk).ToArray());
    }

    private static IEnumerable<ReplicaChunk> Chunks(ChunkedBytes bytes, long step, int rank = 1, string? checksum = null) =>
        bytes.Chunks.Select((c, i) => new ReplicaChunk("job", rank, step, i, bytes.Chunks.Count, c, checksum ?? bytes.Checksum()));

    [Fact]
    public void A_replica_assembled_from_its_chunks_is_kept_with_its_checksum_and_counted_once()
    {
        var budget = new ReplicaBudget(1 << 20);
        var store = new ReplicaStore(budget, Chunk);
        var bytes = Bytes(10_000, Chunk, 3);
        var chunks = Chunks(bytes, 5).ToList();
        store.Receive(chunks[0]);
        store.Receive(chunks[0]); // repeated pieces are not counted twice
        Assert.Null(store.Get("job", 1, 5));
        foreach (var c in chunks.Skip(1))
            store.Receive(c);

        var held = store.Get("job", 1, 5)!;
        Assert.Equal(bytes.Checksum(), held.Checksum);
        Assert.Equal(bytes.Chunks.SelectMany(c => c), held.Bytes.Chunks.SelectMany(c => c));
        Assert.Equal(10_000, budget.Used);
        Assert.Equal(bytes.Chunks[2], store.Chunk("job", 1, 5, 2)!.Data);
        Assert.Equal(held.Checksum, store.Chunk("job", 1, 5, 2)!.Checksum);
    }

    [Fact]
    public void A_replica_whose_bytes_do_not_match_its_checksum_is_refused_and_not_kept()
    {
        var budget = new ReplicaBudget(1 << 20);
        var store = new ReplicaStore(budget, Chunk);
        var bytes = Bytes(9_000, Chunk, 1);
        var chunks = Chunks(bytes, 7, checksum: Bytes(9_000, Chunk, 2).Checksum()).ToList();
        store.Receive(chunks[0]);
        store.Receive(chunks[1]);
        var ex = Assert.Throws<ClusterRequestException>(() => store.Receive(chunks[2]));
        Assert.Contains("does not match its checksum", ex.Message);
        Assert.Null(store.Get("job", 1, 7));
        Assert.Equal(0, budget.Used);
    }

    [Fact]
    public void Malformed_chunks_are_refused_before_anything_is_allocated()
    {
        var budget = new ReplicaBudget(64L << 20);
        var store = new ReplicaStore(budget, Chunk);
        var sum = Bytes(10, 10, 0).Checksum();
        ReplicaChunk[] malformed =
        [
            new("job", 0, 1, 0, 1, new byte[Chunk + 1], sum),     // larger than a chunk
            new("job", 0, 1, 0, 2, new byte[10], sum),            // a short chunk that is not the last
            new("job", 0, 1, 0, int.MaxValue, new byte[Chunk], sum), // a count no budget could hold
            new("job", 0, 1, 3, 2, new byte[10], sum),            // index past the count
            new("job", 0, 1, -1, 2, new byte[Chunk], sum),
            new("job", 0, 1, 0, 1, [], sum),
            new("job", 0, 1, 0, 1, new byte[10], ""),             // no checksum
        ];
        foreach (var chunk in malformed)
            Assert.Throws<ClusterRequestException>(() => store.Receive(chunk));
        Assert.Equal(0, budget.Used);

        // A chunk that disagrees with the replica's first about its count or checksum is refused too.
        store.Receive(new ReplicaChunk("job", 0, 1, 0, 3, new byte[Chunk], sum));
        Assert.Throws<ClusterRequestException>(() => store.Receive(new ReplicaChunk("job", 0, 1, 1, 4, new byte[Chunk], sum)));
        Assert.Throws<ClusterRequestException>(() => store.Receive(new ReplicaChunk("job", 0, 1, 1, 3, new byte[Chunk], "other")));
        Assert.Equal(Chunk, budget.Used);
    }

    [Fact]
    public void Nothing_past_the_silo_budget_is_held_and_what_is_dropped_returns_to_it()
    {
        var budget = new ReplicaBudget(22_000);
        var a = new ReplicaStore(budget, Chunk);
        var b = new ReplicaStore(budget, Chunk); // two workers of one silo share its budget
        foreach (var c in Chunks(Bytes(12_000, Chunk, 1), 1))
            a.Receive(c);
        var second = Chunks(Bytes(12_000, Chunk, 2), 1, rank: 2).ToList();
        b.Receive(second[0]);
        b.Receive(second[1]);
        var ex = Assert.Throws<ClusterRequestException>(() => b.Receive(second[2]));
        Assert.Contains("Flm:ReplicaBudgetBytes", ex.Message);
        Assert.Equal(12_000 + 8192, budget.Used);

        // Own replicas count as well; of each rank the two newest steps stay and the rest is given back.
        Assert.Throws<ClusterRequestException>(() => a.Put("job", 0, 1, Bytes(5_000, Chunk, 3), "x"));
        b.DropJob("job");
        Assert.Equal(12_000, budget.Used);
        a.Put("job", 0, 1, Bytes(2_000, Chunk, 3), "x");
        a.Put("job", 0, 2, Bytes(2_000, Chunk, 4), "y");
        a.Put("job", 0, 3, Bytes(2_000, Chunk, 5), "z");
        Assert.Equal(12_000 + 4_000, budget.Used);
        a.DropOlder("job", 3);
        Assert.Equal(2_000, budget.Used);
        a.DropJob("job");
        Assert.Equal(0, budget.Used);
    }
}
