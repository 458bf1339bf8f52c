using System.Text;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.History;

namespace FlmCluster.Grains.Tests;

/// <summary>Job histories in files: appends that land on disk, the latest record of a redone step, pages, and two silos' processes sharing the folder.</summary>
public sealed class JobHistoryTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-history-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static StepRecord Step(long step, double loss) =>
        new(new StepPoint(step, loss, 1000, 12.5, 0.5, 0.1, 1e-3, 256, false), 1.5e9, 0.25, "dp=2,tp=1,pp=1",
            [new RankTime(0, "node0/gpu0", 12, 9, 2, 1), new RankTime(1, "node1/gpu0", 12.5, 9.5, 2, 1)], new DateTime(2026, 1, 1, 0, 0, (int)step % 60, DateTimeKind.Utc));

    private static JobEvent Event(string kind) => new(new DateTime(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc), kind, $"{kind} happened");

    [Fact]
    public async Task Steps_and_events_come_back_as_appended_and_a_redone_step_replaces_its_record()
    {
        var history = new FileJobHistory(_dir);
        await history.Append("job-a", [Step(0, 5.0), Step(1, 4.5), Step(2, 4.25)], [Event("submitted"), Event("started")]);
        await history.Append("job-a", [Step(3, 4.0)], [Event("workers-lost"), Event("restoring")]);
        await history.Append("job-a", [Step(2, 4.125), Step(3, 3.875), Step(4, 3.5)], []); // redone after a restore

        var all = await history.Read("job-a", 0, 0, JobHistory.MaxPage);
        Assert.Equal([0L, 1L, 2L, 3L, 4L], all.Steps.Select(s => s.Point.Step));
        Assert.Equal([5.0, 4.5, 4.125, 3.875, 3.5], all.Steps.Select(s => s.Point.Loss));
        Assert.Equal(Step(0, 5.0) with { Ranks = all.Steps[0].Ranks }, all.Steps[0]);
        Assert.Equal(Step(0, 5.0).Ranks, all.Steps[0].Ranks);
        Assert.Equal(["submitted", "started", "workers-lost", "restoring"], all.Events.Select(e => e.Kind));
        Assert.Equal((5L, 4), (all.NextStep, all.NextEvent));

        var page = await history.Read("job-a", 1, 1, 2);
        Assert.Equal([1L, 2L], page.Steps.Select(s => s.Point.Step));
        Assert.Equal(["started", "workers-lost"], page.Events.Select(e => e.Kind));
        Assert.Equal((3L, 3), (page.NextStep, page.NextEvent));
        var past = await history.Read("job-a", 9, 9, 10);
        Assert.Empty(past.Steps);
        Assert.Empty(past.Events);
        Assert.Equal((9L, 9), (past.NextStep, past.NextEvent));
        Assert.Empty((await history.Read("job-b", 0, 0, 10)).Steps);
    }

    [Fact]
    public async Task A_silo_reads_what_another_appended_and_a_line_still_being_written_waits()
    {
        var writer = new FileJobHistory(_dir);
        var reader = new FileJobHistory(_dir); // another process on the same folder: its own index
        await writer.Append("job/1", [Step(0, 2.0), Step(1, 1.5)], [Event("submitted")]);
        Assert.Equal([0L, 1L], (await reader.Read("job/1", 0, 0, 10)).Steps.Select(s => s.Point.Step));

        await writer.Append("job/1", [Step(2, 1.25)], [Event("completed")]);
        var file = Directory.GetFiles(Path.Combine(_dir, "history"), "*.steps.jsonl").Single();
        var partial = Encoding.UTF8.GetBytes(HistoryJson.Write(Step(3, 1.0)));
        await using (var stream = new FileStream(file, FileMode.Append))
            stream.Write(partial, 0, partial.Length / 2);
        var seen = await reader.Read("job/1", 1, 1, 10);
        Assert.Equal([1L, 2L], seen.Steps.Select(s => s.Point.Step));
        Assert.Equal(["completed"], seen.Events.Select(e => e.Kind));

        await using (var stream = new FileStream(file, FileMode.Append))
        {
            stream.Write(partial, partial.Length / 2, partial.Length - partial.Length / 2);
            stream.WriteByte((byte)'\n');
        }
        Assert.Equal([2L, 3L], (await reader.Read("job/1", 2, 0, 10)).Steps.Select(s => s.Point.Step));
    }
}
