using FlmCluster.Grains.Sim;

namespace FlmCluster.Grains.Tests;

/// <summary>The sample ledger's journals: what silo processes write, merged into the ledger one process would have kept.</summary>
public sealed class SampleLedgerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-ledger-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Journals_of_several_processes_replay_to_the_ledger_of_one_whatever_their_order()
    {
        var one = new SampleLedger();
        var files = new[] { Path.Combine(_dir, "node0-11.ledger"), Path.Combine(_dir, "node1-12.ledger") };
        using (var a = new SampleLedger(files[0]))
        using (var b = new SampleLedger(files[1]))
        {
            // Two replicas per step; step 1 is redone by incarnation 2 after node1's first report of it was lost with its run.
            (SampleLedger Silo, int Incarnation, long Step, long First)[] reports =
                [(a, 1, 0, 0), (b, 1, 0, 8), (a, 1, 1, 16), (b, 1, 1, 24), (b, 2, 1, 16), (a, 2, 1, 24), (a, 2, 2, 32), (b, 2, 2, 40), (b, 1, 2, 99)];
            foreach (var (silo, incarnation, step, first) in reports)
            {
                silo.Record("job", incarnation, step, 2, first, 8);
                one.Record("job", incarnation, step, 2, first, 8);
            }
            a.Record("other", 1, 0, 1, 0, 4);
        }
        // A kill in the middle of a report leaves a line without its end: it is not a report.
        File.AppendAllText(files[1], "job\t2\t3\t2\t4");

        var replayed = SampleLedger.Replay(files);
        Assert.Equal(one.Of("job").OrderBy(kv => kv.Key), replayed.Of("job").OrderBy(kv => kv.Key));
        Assert.Equal(SampleLedger.Replay(files.Reverse()).Of("job").OrderBy(kv => kv.Key), replayed.Of("job").OrderBy(kv => kv.Key));
        Assert.Equal(new StepSamples(2, 2, 2, 16, 32, 16), replayed.Of("job")[1]);
        Assert.Equal(new StepSamples(2, 2, 2, 32, 48, 16), replayed.Of("job")[2]); // the stale incarnation-1 report is ignored
        Assert.Equal(3, replayed.Of("job").Count);
        Assert.Equal(new StepSamples(1, 1, 1, 0, 4, 4), Assert.Single(replayed.Of("other")).Value);
    }

    [Fact]
    public void A_line_that_is_not_a_report_before_the_last_is_invalid_data()
    {
        var file = Path.Combine(_dir, "node0-1.ledger");
        File.WriteAllText(file, "job\t1\t0\t1\t0\t8\njob\t1\tone\t1\t8\t8\njob\t1\t2\t1\t16\t8\n");
        var ex = Assert.Throws<InvalidDataException>(() => SampleLedger.Replay([file]));
        Assert.Contains("line 2", ex.Message);
    }
}
