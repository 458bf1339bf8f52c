using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Grains.DataPlane;

/// <summary>Runs the collectives of a <see cref="ProbeRequest"/> on one rank; inputs are a pure function of (seed, rank, op).</summary>
public static class ProbeRunner
{
    public static ScalarType DType(string name) => name switch
    {
        "f32" => ScalarType.Float32,
        "f64" => ScalarType.Float64,
        "bf16" => ScalarType.BFloat16,
        "i64" => ScalarType.Int64,
        _ => throw new ArgumentException($"probe dtype '{name}' is not f32, f64, bf16 or i64"),
    };

    /// <summary>The input of rank <paramref name="rank"/> for op <paramref name="op"/>: the same everywhere it is computed.</summary>
    public static Tensor Input(ulong seed, int rank, int op, long elements, string dtype)
    {
        using var generator = new Generator(seed * 7919 + (ulong)rank * 104729 + (ulong)op * 1299709 + 1);
        var values = randn(elements, dtype: ScalarType.Float64, generator: generator) * 10;
        return dtype == "i64" ? values.round().to(ScalarType.Int64) : values.to(DType(dtype));
    }

    public static ProbeResult Run(ProbeRequest request, ICollectives comm, string silo)
    {
        var world = request.RankWorkers.Count;
        var group = new ProcessGroup($"probe/{request.ProbeId}", Enumerable.Range(0, world).ToArray());
        var outputs = new List<byte[]>();
        var times = new List<double>();
        for (var i = 0; i < request.Ops.Count; i++)
        {
            var op = request.Ops[i];
            using var scope = NewDisposeScope();
            Tensor? output = null;
            var watch = new Stopwatch();
            for (var repeat = 0; repeat < Math.Max(1, op.Repeat); repeat++)
            {
                var input = Input(request.Seed, request.Rank, i, op.Kind == "reduce-scatter" ? op.Elements * world : op.Elements, op.DType);
                comm.Barrier(group); // the time is the collective's, not a peer still preparing its input
                watch.Start();
                output = op.Kind switch
                {
                    "all-reduce" => Do(() => comm.AllReduce(group, input), input),
                    "all-reduce-max" => Do(() => comm.AllReduce(group, input, ReduceOp.Max), input),
                    "reduce-scatter" => ReduceScatter(comm, group, input, op.Elements),
                    "all-gather" => AllGather(comm, group, input, world),
                    "broadcast" => Do(() => comm.Broadcast(group, input, op.Root), input),
                    "send-recv" => Ring(comm, request.Rank, world, input, i),
                    "ping-pong" => PingPong(comm, request.Rank, input, i),
                    "barrier" => Do(() => comm.Barrier(group), input),
                    _ => throw new ArgumentException($"probe op '{op.Kind}' is unknown"),
                };
                watch.Stop();
            }
            times.Add(watch.Elapsed.TotalMilliseconds);
            outputs.Add(request.ReturnOutputs ? output!.bytes.ToArray() : []);
        }
        return new ProbeResult(request.Rank, outputs, times, silo);
    }

    private static Tensor Do(Action action, Tensor t)
    {
        action();
        return t;
    }

    private static Tensor ReduceScatter(ICollectives comm, ProcessGroup group, Tensor input, long elements)
    {
        var output = zeros(elements, dtype: input.dtype);
        comm.ReduceScatter(group, input, output);
        return output;
    }

    private static Tensor AllGather(ICollectives comm, ProcessGroup group, Tensor input, int world)
    {
        var output = zeros(input.NumberOfElements * world, dtype: input.dtype);
        comm.AllGather(group, input, output);
        return output;
    }

    /// <summary>Rank 0 sends to rank 1, which sends it back (a pipeline's activation and gradient); other ranks idle.</summary>
    private static Tensor PingPong(ICollectives comm, int rank, Tensor input, int tag)
    {
        if (rank == 0)
        {
            comm.Send(input, 1, tag);
            comm.Recv(input, 1, tag);
        }
        else if (rank == 1)
        {
            comm.Recv(input, 0, tag);
            comm.Send(input, 0, tag);
        }
        return input;
    }

    private static Tensor Ring(ICollectives comm, int rank, int world, Tensor input, int tag)
    {
        var received = zeros_like(input);
        if (world > 1)
        {
            comm.Send(input, (rank + 1) % world, tag);
            comm.Recv(received, (rank + world - 1) % world, tag);
        }
        return received;
    }
}
