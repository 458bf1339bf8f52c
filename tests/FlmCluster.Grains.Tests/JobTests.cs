using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Grains.Tests;

/// <summary>Jobs on a cluster of two GPU servers (2 CPU devices each) and one control-plane silo.</summary>
[Collection("Cluster jobs")]
public sealed class JobTests() : ClusterTestClass(2, 2, 0)
{
    [Theory]
    [InlineData(2, 2, 1, 1)]
    [InlineData(2, 1, 2, 2)]
    public async Task A_job_on_the_cluster_gives_the_in_process_engines_losses(int dp, int tp, int pp, int micro)
    {
        var job = TestClusters.MicroJob(dp, tp, pp, micro, steps: 5);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Completed, status.State);
        Assert.Equal(5, status.Step);
        // Ranks are spread over both servers, TP groups inside one.
        Assert.Equal(2, status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        var expected = TestClusters.LocalLosses(job);
        // The Orleans data plane reduces in the same member order as the in-process one: identical numbers.
        Assert.Equal(expected, (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Loss));
    }

    [Fact]
    public async Task Jobs_share_the_cluster_queue_for_gpus_and_cancel_frees_them()
    {
        var first = await Scheduler.Submit(TestClusters.Submission(TestClusters.MicroJob(2, 1, 1, 1, steps: 400) with { Name = "first" }));
        var second = await Scheduler.Submit(TestClusters.Submission(TestClusters.MicroJob(1, 2, 1, 1, steps: 5) with { Name = "second" }));
        // Two GPUs each: both run at once on the four GPUs.
        await TestClusters.WaitFor(Cluster.Client, first, s => s.State == JobPhase.Running && s.Step > 0);
        var secondStatus = await TestClusters.WaitFor(Cluster.Client, second, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Completed, secondStatus.State);

        // The scheduler frees a job's GPUs right after its coordinator commits the end.
        await Until(async () => (await Scheduler.GetInventory()).FreeGpus == 2);

        // Four GPUs: waits for the first job.
        var big = await Scheduler.Submit(TestClusters.Submission(TestClusters.MicroJob(4, 1, 1, 1, steps: 3) with { Name = "big" }));
        var inventory = await Scheduler.GetInventory();
        Assert.Equal([big], inventory.Queue);
        Assert.Equal(2, inventory.FreeGpus);
        Assert.Equal(JobPhase.Queued, (await Cluster.Client.GetGrain<IJobCoordinatorGrain>(big).GetStatus()).State);

        Assert.True(await Scheduler.Cancel(first));
        var cancelled = await TestClusters.WaitFor(Cluster.Client, first, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Cancelled, cancelled.State);
        var bigStatus = await TestClusters.WaitFor(Cluster.Client, big, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Completed, bigStatus.State);
        Assert.Equal(4, bigStatus.Workers.Distinct().Count());
        await Until(async () => (await Scheduler.GetInventory()).FreeGpus == 4);
        Assert.False(await Scheduler.Cancel("no-such-job"));
        Assert.Equal(3, (await Scheduler.ListJobs()).Count(j => j.State == JobPhase.Completed || j.State == JobPhase.Cancelled));
    }

    private static async Task Until(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached within 30 s");
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task A_layout_the_cluster_cannot_host_is_rejected()
    {
        // tp = 4 needs four GPUs on one server; these servers have two.
        var job = TestClusters.MicroJob(1, 4, 1, 1, steps: 2);
        var ex = await Assert.ThrowsAsync<ClusterRequestException>(() => Scheduler.Submit(TestClusters.Submission(job)));
        Assert.Contains("needs 1 groups of 4 GPUs on one server", ex.Message);
        Assert.Empty(await Scheduler.ListJobs());
    }

    [Fact]
    public async Task The_job_resumes_at_the_committed_step_after_the_coordinators_silo_dies()
    {
        var job = TestClusters.MicroJob(2, 1, 1, 1, steps: 60);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        await TestClusters.WaitFor(Cluster.Client, id, s => s.Step >= 10);
        // Coordinators prefer the control-plane silo (no GPUs): kill it, the workers on the GPU servers survive.
        var control = Cluster.Silos.Single(s => s.Name == "Silo_2");
        await Cluster.KillSiloAsync(control, TestContext.Current.CancellationToken);
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error} | {string.Join(" | ", (await TestClusters.Events(Cluster.Client, status.JobId)).TakeLast(6).Select(e => $"{e.Kind}: {e.Message}"))}");
        Assert.Contains((await TestClusters.Events(Cluster.Client, status.JobId)), e => e.Kind == "resumed");
        // Every step exactly once, with the numbers of an uninterrupted run, in the job's durable history, which the
        // coordinator on the other silo continued.
        Assert.Equal(Enumerable.Range(0, 60).Select(i => (long)i), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Step));
        Assert.Equal(TestClusters.LocalLosses(job), (await TestClusters.Steps(Cluster.Client, status.JobId)).Select(p => p.Loss));
    }

    [Fact]
    public async Task The_history_is_read_in_pages_and_refuses_what_is_not_a_page()
    {
        var id = await Scheduler.Submit(TestClusters.Submission(TestClusters.MicroJob(1, 1, 1, 1, steps: 7)));
        await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        var coordinator = Cluster.Client.GetGrain<IJobCoordinatorGrain>(id);
        var first = await coordinator.GetHistory(0, 0, 3);
        Assert.Equal([0L, 1L, 2L], first.Steps.Select(s => s.Point.Step));
        Assert.Equal(3, first.NextStep);
        Assert.Equal(["submitted", "allocated", "started"], first.Events.Select(e => e.Kind));
        var rest = await coordinator.GetHistory(first.NextStep, first.NextEvent, JobHistory.MaxPage);
        Assert.Equal([3L, 4L, 5L, 6L], rest.Steps.Select(s => s.Point.Step));
        Assert.Equal(["completed"], rest.Events.Select(e => e.Kind));
        Assert.Equal(7, rest.NextStep);
        var end = await coordinator.GetHistory(rest.NextStep, rest.NextEvent, 10);
        Assert.Empty(end.Steps);
        Assert.Empty(end.Events);
        Assert.All(first.Steps.Concat(rest.Steps), s => Assert.Equal("dp=1,tp=1,pp=1", s.Layout));
        Assert.All(first.Steps.Concat(rest.Steps), s => Assert.Equal(8 * 32, s.Point.Tokens));

        await Assert.ThrowsAsync<ClusterRequestException>(() => coordinator.GetHistory(-1, 0, 10));
        await Assert.ThrowsAsync<ClusterRequestException>(() => coordinator.GetHistory(0, -1, 10));
        await Assert.ThrowsAsync<ClusterRequestException>(() => coordinator.GetHistory(0, 0, 0));
        await Assert.ThrowsAsync<ClusterRequestException>(() => coordinator.GetHistory(0, 0, JobHistory.MaxPage + 1));
        await Assert.ThrowsAsync<ClusterRequestException>(() => Cluster.Client.GetGrain<IJobCoordinatorGrain>("no-such-job").GetHistory(0, 0, 10));
    }
}
