using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Scheduling;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Jobs;
using FlmCluster.Tests.Fixtures;

namespace FlmCluster.Grains.Tests;

/// <summary>
/// The scheduler trusts no client: raw submissions (not through the CLI) are validated on the server, refused
/// with the message the CLI gives for the same job, and an invalid one is never recorded, so listing never breaks.
/// </summary>
[Collection("Cluster jobs")]
public sealed class SubmissionTests() : ClusterTestClass(2, 2, 0)
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-submit-").FullName;

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        Directory.Delete(_dir, recursive: true);
    }

    private static JobConfig Micro(long steps = 3) => TestClusters.MicroJob(2, 1, 1, 1, steps);

    /// <summary>What the CLI says about a job: the validator's one line.</summary>
    private static string CliMessage(JobConfig job) => Assert.Throws<FlmUserException>(() => ResolvedJob.Resolve(job)).Message;

    private async Task<string> Refused(JobSubmission submission)
    {
        var ex = await Assert.ThrowsAsync<ClusterRequestException>(() => Scheduler.Submit(submission));
        return ex.Message;
    }

    private static string Json(JobConfig job) => JobConfigLoader.ToJson(job);

    [Fact]
    public async Task Invalid_submissions_are_refused_on_the_server_and_nothing_is_recorded()
    {
        var badLr = Micro() with { Optimizer = Micro().Optimizer with { Lr = -1e-3 } };
        Assert.Equal(CliMessage(badLr), await Refused(new JobSubmission(Json(badLr))));
        var badLayout = Micro() with { Layout = new LayoutConfig { Dp = 3 } };
        Assert.Equal(CliMessage(badLayout), await Refused(new JobSubmission(Json(badLayout))));

        Assert.Contains("malformed JSON", await Refused(new JobSubmission("{ \"name\": ")));
        Assert.Contains("unknown config key 'optimizer.lrr'", await Refused(new JobSubmission(Json(Micro()).Replace("\"lr\":", "\"lrr\":"))));
        Assert.Contains("must be a JSON object of at most", await Refused(new JobSubmission(new string(' ', SubmissionValidator.MaxJobJsonChars + 1))));
        Assert.Contains("priority 5000 is outside", await Refused(new JobSubmission(Json(Micro()), Priority: 5000)));
        Assert.Contains("checkpoint.dir 'runs/x' is relative", await Refused(new JobSubmission(Json(Micro() with { Checkpoint = new CheckpointConfig { Dir = "runs/x" } }))));
        Assert.Contains("data path 'corpus.txt' is relative", await Refused(new JobSubmission(Json(Micro() with { Data = Micro().Data with { Paths = ["corpus.txt"] } }))));
        Assert.Contains("the cluster has no cuda servers", await Refused(new JobSubmission(Json(Micro() with { Train = Micro().Train with { Device = "cuda" } }))));
        Assert.Contains("needs 1 groups of 4 GPUs on one server", await Refused(new JobSubmission(Json(TestClusters.MicroJob(1, 4, 1, 1, 2)))));
        var growth = Micro(6) with { Stages = [new StageConfig { Name = "a", Steps = 3 }, new StageConfig { Name = "b", Steps = 3, Layers = 4, MaskRampSteps = 2 }] };
        Assert.Contains("set checkpoint.dir to a folder every server reaches", await Refused(new JobSubmission(Json(growth))));
        Assert.Contains("does not exist", await Refused(new JobSubmission(Json(Micro()), ResumeFrom: Path.Combine(_dir, "nothing"))));
        Assert.Contains("is relative", await Refused(new JobSubmission(Json(Micro()), ResumeFrom: "runs/x")));

        // Nothing was recorded: the queue is empty and listing works.
        Assert.Empty(await Scheduler.ListJobs());
        Assert.Empty((await Scheduler.GetInventory()).Queue);
    }

    [Fact]
    public async Task A_resume_is_checked_against_the_job_before_it_is_queued()
    {
        var dir = Path.Combine(_dir, "resume");
        var job = Micro(4) with { Checkpoint = new CheckpointConfig { Dir = dir } };
        var first = await Scheduler.Submit(new JobSubmission(Json(job)));
        Assert.Equal(JobPhase.Completed, (await TestClusters.WaitFor(Cluster.Client, first, s => s.State.IsFinal())).State);
        var step4 = CheckpointStore.DirectoryFor(dir, 4);

        var other = job with { Model = job.Model with { Hidden = 128 } };
        Assert.Contains("holds another model (hidden 64 in the checkpoint vs 128 in the job)", await Refused(new JobSubmission(Json(other), ResumeFrom: step4)));
        Assert.Contains("the checkpoint is at step 4 and the job has 4 steps", await Refused(new JobSubmission(Json(job), ResumeFrom: step4)));
        Assert.Single(await Scheduler.ListJobs());
    }

    [Fact]
    public async Task A_checkpoint_folder_belongs_to_one_run()
    {
        var dir = Path.Combine(_dir, "shared");
        var job = Micro(4) with { Checkpoint = new CheckpointConfig { Dir = dir, Interval = 2, KeepLast = 1 } };
        var first = await Scheduler.Submit(new JobSubmission(Json(job)));
        Assert.Equal(JobPhase.Completed, (await TestClusters.WaitFor(Cluster.Client, first, s => s.State.IsFinal())).State);
        var before = CheckpointStore.List(dir);
        Assert.Equal([4L], before.Select(e => e.Step)); // retention kept the last one of the run
        Assert.Equal(first, CheckpointOwnership.Read(dir)!.RunId);

        // Another run into the same folder: refused before anything starts.
        var message = await Refused(new JobSubmission(Json(job with { Name = "second" })));
        Assert.Contains($"checkpoint folder '{dir}' belongs to run {first} (job 'micro'), newest step 4", message);
        Assert.Contains($"--resume {dir}", message);
        Assert.Equal(before, CheckpointStore.List(dir));

        // Resuming the run continues it in its folder.
        var resumed = await Scheduler.Submit(new JobSubmission(Json(Micro(6) with { Checkpoint = job.Checkpoint }), ResumeFrom: dir));
        var status = await TestClusters.WaitFor(Cluster.Client, resumed, s => s.State.IsFinal());
        Assert.Equal(JobPhase.Completed, status.State);
        Assert.Equal(first, CheckpointReader.Open(CheckpointStore.DirectoryFor(dir, 6)).Manifest.RunId);

        // Asked to overwrite, a new run takes the folder: the other run's checkpoints go.
        var third = await Scheduler.Submit(new JobSubmission(Json(job with { Name = "third" }), OverwriteCheckpoints: true));
        Assert.Equal(JobPhase.Completed, (await TestClusters.WaitFor(Cluster.Client, third, s => s.State.IsFinal())).State);
        Assert.Equal(third, CheckpointOwnership.Read(dir)!.RunId);
        Assert.All(CheckpointStore.List(dir), e => Assert.Equal(third, e.Run));
    }

    [Fact]
    public async Task Paths_outside_the_servers_roots_and_crafted_checkpoints_are_refused()
    {
        // The test silos allow their working folder and the temporary folder; /etc is neither.
        Assert.Contains("checkpoint.dir '/etc/flm' is outside the folders this cluster allows", await Refused(new JobSubmission(Json(Micro() with { Checkpoint = new CheckpointConfig { Dir = "/etc/flm" } }))));
        Assert.Contains("data path '/etc/passwd' is outside the folders this cluster allows", await Refused(new JobSubmission(Json(Micro() with { Data = Micro().Data with { Paths = ["/etc/passwd"] } }))));
        Assert.Contains("Flm:CheckpointRoots", await Refused(new JobSubmission(Json(Micro()), ResumeFrom: "/etc")));

        // Neither '..' nor a link inside an allowed folder leads out of it.
        Assert.Contains("is outside", await Refused(new JobSubmission(Json(Micro() with { Checkpoint = new CheckpointConfig { Dir = Path.Combine(_dir, "..", "..", "etc", "flm") } }))));
        var link = Path.Combine(_dir, "link");
        Directory.CreateSymbolicLink(link, "/etc");
        Assert.Contains("is outside", await Refused(new JobSubmission(Json(Micro() with { Checkpoint = new CheckpointConfig { Dir = Path.Combine(link, "flm") } }))));
        Assert.Contains("is outside", await Refused(new JobSubmission(Json(Micro() with { Data = Micro().Data with { Paths = [Path.Combine(link, "passwd")] } }))));
        Assert.False(Directory.Exists("/etc/flm"));

        // A checkpoint to resume from whose manifest names files outside its folder, or claims a terabyte, is refused.
        Assert.Contains("shard file name '../x' is not a plain file name", await Refused(new JobSubmission(Json(Micro()), ResumeFrom: CheckpointFiles.Checkpoint(Path.Combine(_dir, "a"), m => m["shards"]![0]!["file"] = "../x"))));
        Assert.Contains("shard file name '/etc/passwd' is not a plain file name", await Refused(new JobSubmission(Json(Micro()), ResumeFrom: CheckpointFiles.Checkpoint(Path.Combine(_dir, "b"), m => m["shards"]![0]!["file"] = "/etc/passwd"))));
        Assert.Contains("is corrupt", await Refused(new JobSubmission(Json(Micro()), ResumeFrom: CheckpointFiles.Checkpoint(Path.Combine(_dir, "c"), m =>
        {
            m["tensors"]![0]!["shape"] = new System.Text.Json.Nodes.JsonArray(1L << 38);
            m["tensors"]![0]!["pieces"]![0]!["flat_length"] = 1L << 38;
        }))));
        Assert.Empty(await Scheduler.ListJobs());
    }

    [Fact]
    public async Task A_worker_checks_an_assignments_paths_against_its_own_servers_roots()
    {
        var job = Micro() with { Checkpoint = new CheckpointConfig { Dir = "/etc/flm" } };
        var worker = Cluster.Client.GetGrain<IGpuWorkerGrain>("Silo_0/gpu0");
        var assignment = new WorkerAssignment("raw", 1, Json(job), 0, ["Silo_0/gpu0", "Silo_0/gpu1"], 0, 0, 0, Rebuild.Fresh);
        var ex = await Assert.ThrowsAsync<ClusterRequestException>(() => worker.Assign(assignment));
        Assert.Contains("checkpoint.dir '/etc/flm' is outside", ex.Message);
        var fromOutside = assignment with { JobJson = Json(Micro()), Rebuild = Rebuild.FromCheckpoint("/etc/flm/step-00000001") };
        Assert.Contains("the checkpoint to rebuild from '/etc/flm/step-00000001' is outside", (await Assert.ThrowsAsync<ClusterRequestException>(() => worker.Assign(fromOutside))).Message);
    }
}
