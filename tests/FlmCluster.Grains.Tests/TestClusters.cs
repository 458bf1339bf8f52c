using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Sim;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using Orleans.Hosting;
using Orleans.TestingHost;

namespace FlmCluster.Grains.Tests;

/// <summary>In-process Orleans clusters whose silos are FlmCluster nodes (real grains, file storage, placement).</summary>
public static class TestClusters
{
    /// <summary>Starts a cluster: silo i is node "Silo_i" with <paramref name="devices"/>[i] CPU devices (0 = control plane only).</summary>
    public static Task<(InProcessTestCluster Cluster, string StorageDir)> Start(params int[] devices) => Start(TimeSpan.FromMinutes(5), null, devices);

    /// <summary>
    /// As <see cref="Start(int[])"/>, with how long a job waits for lost servers before it shrinks, and what else
    /// every silo gets (e.g. a test's fault injection).
    /// </summary>
    public static Task<(InProcessTestCluster Cluster, string StorageDir)> Start(TimeSpan workerWait, Action<ISiloBuilder>? configure, params int[] devices) =>
        Start(workerWait, configure, "orleans", null, devices);

    /// <summary>As <see cref="Start(TimeSpan, Action{ISiloBuilder}?, int[])"/>, with the data plane every silo runs (Flm:DataPlane).</summary>
    public static Task<(InProcessTestCluster Cluster, string StorageDir)> Start(TimeSpan workerWait, Action<ISiloBuilder>? configure, string dataPlane, params int[] devices) =>
        Start(workerWait, configure, dataPlane, null, devices);

    /// <summary>
    /// As <see cref="Start(TimeSpan, Action{ISiloBuilder}?, int[])"/>, the devices simulated GPUs (<c>sim:N</c>) and
    /// every silo's jobs on the <paramref name="simulation"/>'s virtual clock.
    /// </summary>
    public static Task<(InProcessTestCluster Cluster, string StorageDir)> Start(TimeSpan workerWait, Action<ISiloBuilder>? configure, FlmSimulation simulation, params int[] devices) =>
        Start(workerWait, configure, "orleans", simulation, devices);

    private static async Task<(InProcessTestCluster Cluster, string StorageDir)> Start(TimeSpan workerWait, Action<ISiloBuilder>? configure, string dataPlane, FlmSimulation? simulation, int[] devices)
    {
        var storage = Directory.CreateTempSubdirectory("flm-grains-").FullName;
        var builder = new InProcessTestClusterBuilder((short)devices.Length);
        builder.ConfigureSilo((options, silo) =>
        {
            var index = int.Parse(options.SiloName[(options.SiloName.IndexOf('_') + 1)..]);
            silo.AddFlmNode(new FlmNodeOptions
            {
                Node = options.SiloName,
                Devices = new DeviceSpec(simulation is null || devices[index] == 0 ? "cpu" : "sim", devices[index]),
                Simulation = simulation,
                CollectiveTimeout = TimeSpan.FromSeconds(60),
                WorkerWait = workerWait,
                HangGrace = TimeSpan.FromSeconds(3),
                TorchThreads = 1,
                DataPlane = dataPlane,
                // The test host's client asks its silos' hooks whether the cluster has settled.
                ClientSystemTargets = ["manifest", "test.hooks"],
            });
            silo.AddFlmFileStorage(storage);
            silo.UseInMemoryReminderService();
            configure?.Invoke(silo);
        });
        // Tests kill silos, and with them the gateway a request may be waiting on: give up on it sooner.
        builder.ConfigureClient(client => client.Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(10)));
        var cluster = builder.Build();
        await cluster.DeployAsync();
        return (cluster, storage);
    }

    public static async Task Stop(InProcessTestCluster cluster, string storage)
    {
        await cluster.StopAllSilosAsync();
        await cluster.DisposeAsync();
        Directory.Delete(storage, recursive: true);
    }

    /// <summary>A small byte-level job (2 layers × 64, 4 heads, seq 32, batch 8).</summary>
    public static JobConfig MicroJob(int dp, int tp, int pp, int micro, long steps) => JobValidator.Validate(new JobConfig
    {
        Name = "micro",
        Tokenizer = TokenizerFactory.Bytes,
        Model = new ModelConfig
        {
            Layers = 2, Hidden = 64, Heads = 4, SeqLen = 32, VocabSize = ByteTokenizer.Vocab, VocabPadMultiple = 64,
            Mup = new MupConfig { BaseWidth = 32, OutputMult = 2.0, InitStd = 0.05 },
        },
        Data = new DataConfig { Paths = [Corpus.Bundled], Seed = 7 },
        Train = new TrainConfig { Steps = steps, GlobalBatch = 8, Seed = 11, Precision = "fp32", Threads = 1 },
        Optimizer = new OptimizerConfig { Lr = 3e-3, MinLr = 3e-4, WarmupSteps = 3, ClipGrad = 0.5 },
        Layout = new LayoutConfig { Dp = dp, Tp = tp, Pp = pp, MicroBatches = micro },
    });

    public static JobSubmission Submission(JobConfig job, int priority = 0) => new(JobConfigLoader.ToJson(job), priority);

    /// <summary>The losses of the job's steps on the in-process engine (ranks as threads of this process).</summary>
    public static List<double> LocalLosses(JobConfig job)
    {
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job, data);
        return Enumerable.Range(0, (int)job.Train.Steps).Select(_ => engine.RunStep().Loss).ToList();
    }

    /// <summary>Every committed step of a job, from its durable history (the status keeps only the latest few).</summary>
    public static async Task<IReadOnlyList<StepPoint>> Steps(IGrainFactory grains, string jobId)
    {
        var history = await grains.GetGrain<IJobCoordinatorGrain>(jobId).GetHistory(0, 0, JobHistory.MaxPage);
        return history.Steps.Select(s => s.Point).ToList();
    }

    /// <summary>Every event of a job, from its durable history (the status keeps only the latest few).</summary>
    public static async Task<IReadOnlyList<JobEvent>> Events(IGrainFactory grains, string jobId) =>
        (await grains.GetGrain<IJobCoordinatorGrain>(jobId).GetHistory(0, 0, JobHistory.MaxPage)).Events;

    /// <summary>Polls a job until <paramref name="done"/> holds (or the timeout passes).</summary>
    public static async Task<JobStatus> WaitFor(IGrainFactory grains, string jobId, Func<JobStatus, bool> done, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromMinutes(3));
        while (true)
        {
            JobStatus status;
            try
            {
                status = await grains.GetGrain<IJobCoordinatorGrain>(jobId).GetStatus();
            }
            catch (Exception ex) when (ex is OrleansException or TimeoutException && DateTime.UtcNow < deadline)
            {
                continue; // the gateway this client used died with its silo (tests kill silos): ask again through another
            }
            if (done(status))
                return status;
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"job {jobId} is {status.State} at step {status.Step}: {string.Join(" | ", status.Events.TakeLast(12).Select(e => $"{e.Kind}: {e.Message}"))}");
            await Task.Delay(50);
        }
    }
}
