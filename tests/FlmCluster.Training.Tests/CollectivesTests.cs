using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

/// <summary>Each in-process collective against a plain reference computed from all ranks' inputs.</summary>
public class CollectivesTests
{
    /// <summary>Runs <paramref name="body"/> on one thread per rank over a fresh fabric.</summary>
    internal static void RunRanks(int world, Action<int, ICollectives> body, TimeSpan? timeout = null)
    {
        using var fabric = new InProcessFabric(world, timeout ?? TimeSpan.FromSeconds(30));
        var errors = new Exception?[world];
        var threads = Enumerable.Range(0, world).Select(r => new Thread(() =>
        {
            try
            {
                using var scope = NewDisposeScope();
                body(r, fabric.ForRank(r));
            }
            catch (Exception ex)
            {
                errors[r] = ex;
                fabric.Abort(ex);
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        var first = errors.FirstOrDefault(e => e is not null and not OperationCanceledException) ?? errors.FirstOrDefault(e => e is not null);
        if (first is not null)
            throw new AggregateException(first);
    }

    private static Tensor Input(int rank, long n, ScalarType dtype, int salt = 0) =>
        randn(n, dtype: ScalarType.Float64, generator: new Generator((ulong)(1000 * rank + salt + 1))).mul(10).to(dtype);

    public static TheoryData<int, long, ScalarType> Cases => new()
    {
        { 2, 1, ScalarType.Float32 }, { 3, 7, ScalarType.Float32 }, { 4, 1001, ScalarType.Float32 },
        { 3, 12_345, ScalarType.Float64 }, { 4, 100_003, ScalarType.Float32 }, { 2, 33, ScalarType.BFloat16 },
        { 3, 17, ScalarType.Int64 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void All_reduce_sum_and_max_equal_the_rank_order_reference(int world, long n, ScalarType dtype)
    {
        // Reference: sum in rank order in the tensor's own dtype, as every member must compute it.
        var sum = Input(0, n, dtype);
        var max = Input(0, n, dtype);
        for (var r = 1; r < world; r++)
        {
            sum = sum + Input(r, n, dtype);
            max = maximum(max, Input(r, n, dtype));
        }
        RunRanks(world, (rank, comm) =>
        {
            var group = new ProcessGroup("all", Enumerable.Range(0, world).ToArray());
            var a = Input(rank, n, dtype);
            comm.AllReduce(group, a);
            Assert.True(a.equal(sum).all().item<bool>(), $"rank {rank} sum");
            var b = Input(rank, n, dtype);
            comm.AllReduce(group, b, ReduceOp.Max);
            Assert.True(b.equal(max).all().item<bool>(), $"rank {rank} max");
        });
    }

    [Theory]
    [InlineData(2, 1L)]
    [InlineData(3, 5L)]
    [InlineData(4, 2_501L)]
    public void Reduce_scatter_and_all_gather_equal_the_reference_also_in_place(int world, long chunk)
    {
        var n = world * chunk;
        var total = Input(0, n, ScalarType.Float32);
        for (var r = 1; r < world; r++)
            total = total + Input(r, n, ScalarType.Float32);
        RunRanks(world, (rank, comm) =>
        {
            var group = new ProcessGroup("all", Enumerable.Range(0, world).ToArray());
            // Separate output.
            var output = zeros(chunk);
            comm.ReduceScatter(group, Input(rank, n, ScalarType.Float32), output);
            Assert.True(output.equal(total.narrow(0, rank * chunk, chunk)).all().item<bool>());
            // Output aliasing this member's chunk of the input (how the optimizer calls it).
            var buffer = Input(rank, n, ScalarType.Float32);
            comm.ReduceScatter(group, buffer, buffer.narrow(0, rank * chunk, chunk));
            Assert.True(buffer.narrow(0, rank * chunk, chunk).equal(total.narrow(0, rank * chunk, chunk)).all().item<bool>());

            // All-gather: separate input, then input aliasing this member's chunk of the output.
            var gathered = zeros(n);
            comm.AllGather(group, Input(rank, chunk, ScalarType.Float32, salt: 7), gathered);
            for (var r = 0; r < world; r++)
                Assert.True(gathered.narrow(0, r * chunk, chunk).equal(Input(r, chunk, ScalarType.Float32, salt: 7)).all().item<bool>());
            var inPlace = zeros(n);
            inPlace.narrow(0, rank * chunk, chunk).copy_(Input(rank, chunk, ScalarType.Float32, salt: 9));
            comm.AllGather(group, inPlace.narrow(0, rank * chunk, chunk), inPlace);
            for (var r = 0; r < world; r++)
                Assert.True(inPlace.narrow(0, r * chunk, chunk).equal(Input(r, chunk, ScalarType.Float32, salt: 9)).all().item<bool>());
        });
    }

    [Fact]
    public void Broadcast_send_receive_barrier_and_subgroups()
    {
        RunRanks(4, (rank, comm) =>
        {
            var all = new ProcessGroup("all", [0, 1, 2, 3]);
            for (var root = 0; root < 4; root++)
            {
                var t = Input(rank, 11, ScalarType.Float32, salt: root);
                comm.Broadcast(all, t, root);
                Assert.True(t.equal(Input(root, 11, ScalarType.Float32, salt: root)).all().item<bool>());
            }
            // A ring of point-to-point messages, two tags in flight.
            var next = (rank + 1) % 4;
            var prev = (rank + 3) % 4;
            comm.Send(Input(rank, 9, ScalarType.Float32, salt: 1), next, tag: 1);
            comm.Send(Input(rank, 3, ScalarType.Float64, salt: 2), next, tag: 2);
            var a = zeros(9);
            var b = zeros(3, dtype: ScalarType.Float64);
            comm.Recv(a, prev, tag: 1);
            comm.Recv(b, prev, tag: 2);
            Assert.True(a.equal(Input(prev, 9, ScalarType.Float32, salt: 1)).all().item<bool>());
            Assert.True(b.equal(Input(prev, 3, ScalarType.Float64, salt: 2)).all().item<bool>());
            comm.Barrier(all);
            // Disjoint subgroups reduce independently.
            var pair = new ProcessGroup(rank < 2 ? "low" : "high", rank < 2 ? [0, 1] : [2, 3]);
            var x = full(5, (float)rank);
            comm.AllReduce(pair, x);
            Assert.Equal(rank < 2 ? 1f : 5f, x[0].item<float>());
        });
    }

    [Fact]
    public void Strided_tensors_are_staged_through_contiguous_copies()
    {
        RunRanks(2, (rank, comm) =>
        {
            var group = new ProcessGroup("all", [0, 1]);
            var m = arange(12, dtype: ScalarType.Float32).reshape(3, 4).mul(rank + 1).t(); // non-contiguous
            comm.AllReduce(group, m);
            Assert.True(m.equal(arange(12, dtype: ScalarType.Float32).reshape(3, 4).t() * 3).all().item<bool>());
        });
    }

    [Fact]
    public void A_failing_rank_releases_its_waiting_peers_with_the_cause()
    {
        var ex = Assert.Throws<AggregateException>(() => RunRanks(3, (rank, comm) =>
        {
            if (rank == 2)
                throw new InvalidOperationException("rank 2 broke");
            comm.AllReduce(new ProcessGroup("all", [0, 1, 2]), zeros(4));
        }, TimeSpan.FromSeconds(20)));
        Assert.Contains("rank 2 broke", ex.InnerException!.Message);
    }

    [Fact]
    public void A_missing_rank_times_out_instead_of_hanging()
    {
        var ex = Assert.Throws<AggregateException>(() => RunRanks(2, (rank, comm) =>
        {
            if (rank == 0)
                comm.Barrier(new ProcessGroup("all", [0, 1]));
        }, TimeSpan.FromMilliseconds(300)));
        Assert.IsType<CollectiveTimeoutException>(ex.InnerException);
    }

    [Fact]
    public void Mismatched_sizes_are_rejected()
    {
        Assert.ThrowsAny<Exception>(() => RunRanks(2, (rank, comm) =>
            comm.ReduceScatter(new ProcessGroup("all", [0, 1]), zeros(7), zeros(3))));
    }
}
