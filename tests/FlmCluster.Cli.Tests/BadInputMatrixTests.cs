using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using FlmCluster.Tests.Fixtures;
using FlmCluster.Tests.Process;
using FlmCluster.Training.Checkpoint;

namespace FlmCluster.Cli.Tests;

/// <summary>
/// The bad-input contract of every command, as one table: each case runs the real `flm` and must get exit
/// code 2 (69 when no cluster is reachable), exactly one stderr line "error: …" naming the problem, no exception
/// type name or stack trace, nothing on stdout, and an unchanged file system (working directory, outputs, the
/// child's HOME and TMPDIR). To add a case, add a row to <see cref="Cases"/>.
/// </summary>
public sealed partial class BadInputMatrixTests : IDisposable
{
    private readonly Fixture _fixture = new();

    public void Dispose() => _fixture.Dispose();

    /// <summary>One bad input: the arguments (paths relative to the working directory), the fragment its error line must contain, and what it needs prepared.</summary>
    public sealed record Case(string Name, string[] Args, string Expected)
    {
        public int ExitCode { get; init; } = CliRunner.BadInput;

        /// <summary>Files the case needs (a corrupt manifest, an existing destination), made before the snapshot.</summary>
        public Action<Fixture>? Prepare { get; init; }

        /// <summary>Extra environment for the child (e.g. a cluster address where nothing listens).</summary>
        public Func<Fixture, Dictionary<string, string>>? Environment { get; init; }

        /// <summary>Output paths the command names: they must not appear (and are inside the snapshot).</summary>
        public string[] Outputs { get; init; } = [];

        /// <summary>Why the case cannot run here (e.g. permissions do not apply to root), or null.</summary>
        public Func<Fixture, string?>? SkipReason { get; init; }

        public override string ToString() => Name;
    }

    private static readonly Case[] Cases =
    [
        // train: --set, --steps, --layout, --config (the first rows are the earlier CliTests theory)
        Train("unknown preset", ["--config", "nosuch"], "unknown preset 'nosuch'"),
        Train("heads not dividing hidden", ["--set", "model.heads=3"], "heads (3) must divide model.hidden (128)"),
        Train("missing data path", ["--set", "data.paths=[\"/nonexistent/corpus.txt\"]"], "data path '/nonexistent/corpus.txt' does not exist"),
        Train("negative learning rate", ["--set", "optimizer.lr=-0.001"], "optimizer.lr must be positive"),
        Train("unknown key", ["--set", "optimizer.lrr=1"], "unknown config key 'optimizer.lrr'"),
        Train("steps not a number", ["--set", "train.steps=ten"], "'train.steps' has a value of the wrong type"),
        Train("negative --steps", ["--steps", "-5"], "train.steps must be positive"),
        Train("tp not dividing heads", ["--layout", "dp=2,tp=3"], "tp=3 does not divide model.heads=2"),
        Train("batch not divisible by dp", ["--layout", "dp=3"], "train.global_batch=8 is not divisible by dp×micro_batches=3×1"),
        Train("pp beyond layers", ["--layout", "pp=8"], "pp=8 exceeds model.layers=4"),
        Train("unknown layout axis", ["--layout", "dp=2,xx=2"], "unknown axis 'xx'"),
        Train("unknown tokenizer", ["--set", "tokenizer=words"], "unknown tokenizer 'words'"),
        Train("unknown option", ["--stepz", "3"], "Unrecognized command or argument '--stepz'"),
        Train("--set into a list entry's value", ["--set", "data.paths.0.x=1"], "'data.paths.0' is a value, not a section"),
        Train("model section null", ["--set", "model=null"], "key 'model' is null"),
        Train("train section null", ["--set", "train=null"], "key 'train' is null"),
        Train("optimizer section null", ["--set", "optimizer=null"], "key 'optimizer' is null"),
        Train("stages null", ["--set", "stages=null"], "key 'stages' is null"),
        Train("data.paths null", ["--set", "data.paths=null"], "key 'data.paths' is null"),
        Train("data.paths entry null", ["--set", "data.paths=[null]"], "key 'data.paths.0' is null"),
        Train("layout product overflows", ["--layout", "dp=65536,tp=65536"], "= 4294967296 ranks is more than"),
        Train("dp × micro-batches overflows", ["--layout", "dp=65536,micro=65536"], "dp×micro_batches=65536×65536=4294967296"),
        Train("learning rate 1e999", ["--set", "optimizer.lr=1e999"], "optimizer.lr must be positive and finite (got Infinity)"),
        Train("learning rate NaN", ["--set", "optimizer.lr=NaN"], "'optimizer.lr' has a value of the wrong type"),
        Train("eps infinite", ["--set", "optimizer.eps=1e999"], "optimizer.eps must be positive and finite"),
        Train("clip_grad infinite", ["--set", "optimizer.clip_grad=1e999"], "optimizer.clip_grad must be finite"),
        Train("weight decay negative", ["--set", "optimizer.weight_decay=-0.1"], "optimizer.weight_decay must be finite and not negative"),
        Train("beta2 of 1", ["--set", "optimizer.beta2=1"], "optimizer.beta2 must be in [0, 1)"),
        Train("dropout out of range", ["--set", "model.dropout=1.5"], "model.dropout must be in [0, 1)"),
        Train("ln_eps infinite", ["--set", "model.ln_eps=1e999"], "model.ln_eps must be positive and finite"),
        Train("xpos theta infinite", ["--set", "model.xpos.theta=1e999"], "model.xpos.theta must be finite"),
        Train("mup output_mult negative", ["--set", "model.mup.output_mult=-2"], "model.mup.output_mult must be positive"),
        Train("absurd layer count", ["--set", "model.layers=1000000"], "model.layers=1000000 is more than"),
        Train("absurd hidden", ["--set", "model.hidden=1000000000"], "model.hidden=1000000000 is too large"),
        Train("absurd thread count", ["--set", "train.threads=100000"], "train.threads=100000 is more than"),
        Train("steps 1e30", ["--set", "train.steps=1e30"], "'train.steps' has a value of the wrong type"),
        Train("steps × batch × seq_len overflow", ["--steps", "9223372036854775807"], "overflows a 64-bit count"),
        Train("global batch int.MaxValue", ["--set", "train.global_batch=2147483647"], "sequences of 128 tokens is too large"),
        Train("keep_every × interval overflow", ["--set", "checkpoint.interval=9223372036854775807", "--set", "checkpoint.keep_every=2"], "checkpoint.keep_every × checkpoint.interval"),
        Train("stage tokens 1e300", ["--config", "tiny-growth", "--set", "stages.1.tokens=1e300"], "stages[1] ('b').tokens must be a finite number"),
        Train("stage mask ramp negative", ["--config", "tiny-growth", "--set", "stages.1.mask_ramp_steps=-1"], "mask_ramp_steps must not be negative"),
        Train("stage lr infinite", ["--config", "tiny-growth", "--set", "stages.0.lr=1e999"], "stages[0] ('a').lr must be positive and finite"),
        Train("cuda on a CPU build", ["--set", "train.device=cuda"], "train.device 'cuda' needs a CUDA build and a GPU"),
        Train("cuda:N on a CPU build", ["--set", "train.device=cuda:1"], "train.device 'cuda:1' needs a CUDA build"),
        Train("device not a device", ["--set", "train.device=tpu"], "train.device 'tpu' is not cpu, cuda, cuda:N or sim"),
        // --out is part of the job before validation: the README's line passes it, so the next problem is reported.
        new("train --out counts as checkpoint.dir", ["train", "--config", "tiny", "--out", "runs/tiny", "--set", "checkpoint.interval=50", "--set", "train.device=cuda"], "train.device 'cuda' needs a CUDA build")
        {
            Outputs = ["runs"],
        },
        new("train --out is a file", ["train", "--out", "file"], "--out 'file' is a file") { Prepare = f => f.WriteFile("file", "x") },
        new("train --out under a file", ["train", "--out", "file/sub"], "is a file; give a path under a folder") { Prepare = f => f.WriteFile("file", "x") },
        new("train --out in a read-only folder", ["train", "--out", "ro/run"], "no write permission in")
        {
            Prepare = f => f.ReadOnlyFolder("ro"),
            SkipReason = f => f.CanWrite("ro") ? "this user can write into a read-only folder (root)" : null,
            Outputs = ["ro/run"],
        },
        new("checkpoint.dir under a file", ["train", "--set", "checkpoint.dir=file/ckpt"], "checkpoint.dir 'file/ckpt' cannot be created") { Prepare = f => f.WriteFile("file", "x") },
        new("train --resume of a corrupt checkpoint", ["train", "--resume", "ckpt"], "--resume: 'ckpt' holds no valid checkpoint (step-00000001: ")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["tensors"]![0]!["d_type"] = "F7"),
        },
        new("train --resume of a folder without a checkpoint", ["train", "--resume", "."], "--resume: '.' has no manifest.json"),

        // generate
        Generate("temperature NaN", ["--temperature", "NaN"], "--temperature must be a finite number"),
        Generate("temperature negative", ["--temperature", "-1"], "--temperature must be a finite number, 0 or more (got -1)"),
        Generate("top-p above 1", ["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        Generate("top-p NaN", ["--top-p", "NaN"], "--top-p must be in (0, 1] (got NaN)"),
        Generate("repetition penalty NaN", ["--repetition-penalty", "NaN"], "--repetition-penalty must be a finite positive number"),
        Generate("repetition penalty negative", ["--repetition-penalty", "-1"], "--repetition-penalty must be a finite positive number (got -1)"),
        Generate("max-new-tokens 0", ["--max-new-tokens", "0"], "--max-new-tokens must be positive"),
        new("generate --max-new-tokens beyond the context", ["generate", "--model", "hf", "--prompt", "hi", "--max-new-tokens", "17"], "beyond the model's context of 16 tokens")
        {
            Prepare = f => f.HfExport("hf"),
        },
        new("generate from a missing model", ["generate", "--model", "/nonexistent/model", "--prompt", "hi"], "does not exist"),
        new("generate from a folder that is no model", ["generate", "--model", ".", "--prompt", "hi"], "is not a model"),
        new("generate without --model", ["generate", "--prompt", "hi"], "Option '--model' is required"),
        new("generate from a checkpoint with a negative shard size", ["generate", "--model", "ckpt", "--prompt", "hi"], "has a negative size")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["shards"]![0]!["bytes"] = -5),
        },
        new("generate from an export whose header claims 1 TB", ["generate", "--model", "hf", "--prompt", "hi"], "ends at byte 1099511627776 of the data")
        {
            Prepare = f => f.HfExport("hf", weights: _ => CheckpointFiles.SafeTensorsFile(
                new JsonObject { ["transformer.wte.weight"] = CheckpointFiles.Entry([262144, 1048576], 0, 1L << 40) }, dataBytes: 64)),
        },
        new("generate from an export with malformed config.json", ["generate", "--model", "hf", "--prompt", "hi"], "config.json' is malformed JSON")
        {
            Prepare = f => f.HfExport("hf", rawConfig: "{ \"model_type\": \"flm\", "),
        },

        // checkpoint list / verify / inspect / save
        new("checkpoint verify of a folder without manifest", ["checkpoint", "verify", "."], "no manifest.json"),
        new("checkpoint inspect of a missing folder", ["checkpoint", "inspect", "/nonexistent/ckpt"], "does not exist"),
        new("checkpoint list of a folder without checkpoints", ["checkpoint", "list", "."], "holds no checkpoints"),
        new("checkpoint list of a missing path", ["checkpoint", "list", "./nope"], "'./nope' is not a folder of checkpoints"),
        new("checkpoint verify: malformed sha256", ["checkpoint", "verify", "ckpt/step-00000001"], "has checksum 'xyz', not 64 lowercase hex digits")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["shards"]![0]!["sha256"] = "xyz"),
        },
        new("checkpoint inspect: shards null", ["checkpoint", "inspect", "ckpt/step-00000001"], "key 'shards' is null")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["shards"] = null),
        },
        new("checkpoint list: tensors null", ["checkpoint", "list", "ckpt"], "holds no valid checkpoint (step-00000001: ")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["tensors"] = null),
        },
        new("checkpoint verify: shard name with ..", ["checkpoint", "verify", "ckpt/step-00000001"], "shard file name '../shard' is not a plain file name")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["shards"]![0]!["file"] = "../shard"),
        },
        new("checkpoint inspect: shard name with /", ["checkpoint", "inspect", "ckpt/step-00000001"], "shard file name 'sub/shard' is not a plain file name")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["shards"]![0]!["file"] = "sub/shard"),
        },
        new("checkpoint verify: unknown dtype", ["checkpoint", "verify", "ckpt/step-00000001"], "has unknown dtype 'F7'")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["tensors"]![0]!["d_type"] = "F7"),
        },
        new("checkpoint inspect: negative offset", ["checkpoint", "inspect", "ckpt/step-00000001"], "has a piece at -1 of 4 elements")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["tensors"]![0]!["pieces"]![0]!["flat_start"] = -1),
        },
        new("checkpoint verify: negative shape", ["checkpoint", "verify", "ckpt/step-00000001"], "has shape [-4]")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["tensors"]![0]!["shape"] = new JsonArray(-4)),
        },
        new("checkpoint verify: a piece claiming 1 TB", ["checkpoint", "verify", "ckpt/step-00000001"], "claim more than its")
        {
            Prepare = f => f.Checkpoint("ckpt", m =>
            {
                m["tensors"]![0]!["shape"] = new JsonArray(1L << 38);
                m["tensors"]![0]!["pieces"]![0]!["flat_length"] = 1L << 38;
            }),
        },
        new("checkpoint save without a cluster", ["checkpoint", "save", "job-1"], "no cluster is configured") { ExitCode = CliRunner.Unavailable },

        // sim: everything checked before a silo starts
        new("sim of an unknown preset", ["sim", "--config", "nosuch"], "unknown preset 'nosuch'"),
        new("sim on too few servers", ["sim", "--servers", "4"], "needs 192 GPUs, 4 servers × 8 have 32; give --servers 24 or more"),
        new("sim with a NaN rate", ["sim", "--interruption-rate", "NaN"], "--interruption-rate NaN is not a rate"),
        new("sim with an infinite MTBF", ["sim", "--mtbf", "Infinity"], "--mtbf Infinity is not a time between failures"),
        new("sim with a negative rate", ["sim", "--interruption-rate", "-2e-5"], "--interruption-rate -2E-05 is not a rate"),
        new("sim with a rate that overflows", ["sim", "--mtbf", "1e999"], "--mtbf Infinity is not a time between failures"),
        new("sim with a zero scale", ["sim", "--scale", "0"], "--scale 0 is not a fraction of the schedule"),
        new("sim with a missing failures file", ["sim", "--failures", "losses.json"], "--failures file 'losses.json' does not exist"),
        new("sim with a malformed failures file", ["sim", "--failures", "losses.json"], "is not a valid failures file")
        {
            Prepare = f => f.WriteFile("losses.json", "{ \"losses\": [ { \"at_step\": 10, "),
        },
        new("sim with a loss of two moments", ["sim", "--failures", "losses.json"], "loss 0 has 2 of at_step, at_hours and at_growth; give exactly one")
        {
            Prepare = f => f.WriteFile("losses.json", "{ \"losses\": [ { \"at_step\": 10, \"at_hours\": 1 } ] }"),
        },
        new("sim with a loss past the schedule", ["sim", "--failures", "losses.json"], "a server loss at step 99999 is past the schedule's last step 66399")
        {
            Prepare = f => f.WriteFile("losses.json", "{ \"losses\": [ { \"at_step\": 99999 } ] }"),
        },
        new("sim with a loss of an unknown server", ["sim", "--failures", "losses.json"], "server 'node99' is not one of the twin's")
        {
            Prepare = f => f.WriteFile("losses.json", "{ \"losses\": [ { \"at_step\": 10, \"server\": \"node99\" } ] }"),
        },
        new("sim with both a file and a rate", ["sim", "--failures", "losses.json", "--interruption-rate", "2e-5"], "--failures and --interruption-rate both set the server losses")
        {
            Prepare = f => f.WriteFile("losses.json", "{ \"losses\": [] }"),
        },
        new("sim --timeline under a file", ["sim", "--timeline", "file/t.svg"], "is a file; give a path under a folder") { Prepare = f => f.WriteFile("file", "x") },
        new("sim --redis without processes", ["sim", "--redis", "localhost:6379"], "--redis is for silo processes; add --processes, or leave it out"),
        new("sim --processes on a privileged port", ["sim", "--processes", "--base-port", "80"], "--base-port 80 must leave room for silo, gateway and web ports"),
        new("sim --processes with an empty Redis", ["sim", "--processes", "--redis", " "], "--redis is empty"),
        new("sim --processes with no Redis there", ["sim", "--processes", "--servers", "24", "--redis", "127.0.0.1:1"], "--redis 127.0.0.1:1: no Redis answers there"),

        // export
        new("export from a folder without checkpoint", ["export", "--hf", ".", "out"], "no manifest.json") { Outputs = ["out"] },
        new("export into an existing file", ["export", "--hf", "ckpt", "file"], "export folder 'file' is a file")
        {
            Prepare = f =>
            {
                f.Checkpoint("ckpt");
                f.WriteFile("file", "x");
            },
        },
        new("export into a non-empty folder", ["export", "--hf", "ckpt", "dest"], "export folder 'dest' exists and is not empty")
        {
            Prepare = f =>
            {
                f.Checkpoint("ckpt");
                f.WriteFile("dest/keep.txt", "x");
            },
        },
        new("export under a file", ["export", "--hf", "ckpt", "file/hf"], "is a file; give a path under a folder")
        {
            Prepare = f =>
            {
                f.Checkpoint("ckpt");
                f.WriteFile("file", "x");
            },
        },
        new("export of a corrupt checkpoint", ["export", "--hf", "ckpt", "out"], "key 'tensors' is null")
        {
            Prepare = f => f.Checkpoint("ckpt", m => m["tensors"] = null),
            Outputs = ["out"],
        },

        // import
        new("import of a folder that is no export", ["import", "--hf", ".", "--out", "x"], "is not a Hugging Face export") { Outputs = ["x"] },
        new("import of a truncated safetensors file", ["import", "--hf", "hf", "--out", "imported"], "(truncated or corrupt)")
        {
            Prepare = f => f.HfExport("hf", weights: w => w[..(w.Length / 2)]),
            Outputs = ["imported"],
        },
        new("import of a config without n_layer", ["import", "--hf", "hf", "--out", "imported"], "has no n_layer")
        {
            Prepare = f => f.HfExport("hf", config: c => c.Remove("n_layer")),
            Outputs = ["imported"],
        },
        new("import of a config with an absurd n_embd", ["import", "--hf", "hf", "--out", "imported"], $"{HfFormat.ConfigFile} implies [320,1073741824]")
        {
            Prepare = f => f.HfExport("hf", config: c => c["n_embd"] = 1 << 30),
            Outputs = ["imported"],
        },
        new("import of a config with an absurd n_layer", ["import", "--hf", "hf", "--out", "imported"], "model.layers=1000000000 is more than")
        {
            Prepare = f => f.HfExport("hf", config: c => c["n_layer"] = 1_000_000_000),
            Outputs = ["imported"],
        },
        new("import of a config with a negative n_head", ["import", "--hf", "hf", "--out", "imported"], "model.heads must be positive (got -2)")
        {
            Prepare = f => f.HfExport("hf", config: c => c["n_head"] = -2),
            Outputs = ["imported"],
        },
        new("import of a config with a string shape", ["import", "--hf", "hf", "--out", "imported"], "n_layer is not an integer")
        {
            Prepare = f => f.HfExport("hf", config: c => c["n_layer"] = "one"),
            Outputs = ["imported"],
        },
        new("import --out is a file", ["import", "--hf", "hf", "--out", "file"], "--out 'file' is a file")
        {
            Prepare = f =>
            {
                f.HfExport("hf");
                f.WriteFile("file", "x");
            },
        },

        // params, data prepare, mup sweep, predict-loss
        new("params with a layout tp not dividing heads", ["params", "--preset", "101b", "--layout", "tp=3"], "tp=3 does not divide model.heads=80"),
        new("params with an unknown preset", ["params", "--preset", "7b"], "unknown preset '7b'"),
        new("params with an overflowing layout", ["params", "--layout", "dp=65536,tp=65536"], "ranks is more than"),
        new("params with an unknown precision", ["params", "--precision", "fp8"], "--precision 'fp8' is not one of"),
        new("data prepare of a missing input", ["data", "prepare", "--input", "/nonexistent/a.txt", "--out", "corpus"], "does not exist"),
        new("data prepare with an unknown tokenizer", ["data", "prepare", "--input", "bundled", "--out", "corpus", "--tokenizer", "gpt5"], "unknown tokenizer 'gpt5'"),
        new("data prepare --out under a file", ["data", "prepare", "--input", "bundled", "--out", "file/corpus"], "is a file; give a path under a folder")
        {
            Prepare = f => f.WriteFile("file", "x"),
        },
        new("predict-loss with two widths", ["predict-loss", "--widths", "32,48", "--holdout", "64"], "at least three widths"),
        new("predict-loss with a small holdout", ["predict-loss", "--widths", "16,32,48", "--holdout", "40"], "must be larger than the ladder's largest"),
        new("predict-loss with a width not of whole heads", ["predict-loss", "--widths", "16,24,48", "--holdout", "64"], "width 24 is not a multiple of the head size 16"),
        new("predict-loss with zero eval batches", ["predict-loss", "--eval-batches", "0"], "--eval-every and --eval-batches must be positive"),
        new("mup sweep with a negative learning rate", ["mup", "sweep", "--lrs", "1e-3,-1", "--widths", "32"], "learning rates must be positive"),
        new("mup sweep with a learning rate NaN", ["mup", "sweep", "--lrs", "NaN", "--widths", "32"], "learning rates must be positive and finite"),
        new("mup sweep with words for learning rates", ["mup", "sweep", "--lrs", "fast"], "is not a comma-separated list of numbers"),
        new("mup sweep with an overflowing width", ["mup", "sweep", "--widths", "99999999999"], "is not a comma-separated list of numbers"),
        new("mup sweep --out under a file", ["mup", "sweep", "--widths", "32", "--out", "file/sweep"], "is a file; give a path under a folder")
        {
            Prepare = f => f.WriteFile("file", "x"),
        },

        // cluster up / down; submit's job checks come before the cluster
        new("cluster up with no nodes", ["cluster", "up", "--nodes", "0"], "--nodes and --gpus-per-node must be at least 1"),
        new("cluster up with more silos than ports", ["cluster", "up", "--nodes", "2000"], "more silo processes than a local cluster's ports allow"),
        new("cluster up with a zero timeout", ["cluster", "up", "--timeout", "0"], "--timeout must be positive"),
        new("cluster up --dir under a file", ["cluster", "up", "--dir", "file/cluster"], "--dir 'file/cluster' cannot be created") { Prepare = f => f.WriteFile("file", "x") },
        new("cluster down with nothing up", ["cluster", "down"], "no local cluster is up"),
        new("cluster credentials for zero days", ["cluster", "credentials", "--dir", "creds", "--days", "0"], "--days 0 must be 1 … 3650") { Outputs = ["creds"] },
        new("cluster credentials into a folder that holds them", ["cluster", "credentials", "--dir", "creds"], "holds a cluster's credentials already")
        {
            Prepare = f => f.WriteFile("creds/ca.pem", "x"),
        },
        new("cluster credentials without a folder", ["cluster", "credentials"], "Option '--dir' is required"),
        new("submit of a growth job without checkpoint.dir", ["submit", "--config", "tiny-growth"], "set checkpoint.dir to a folder every server reaches"),

        // no cluster: exit 69
        Unreachable("jobs without a profile", ["jobs"], "no cluster is configured"),
        Unreachable("status without a profile", ["status", "job-1"], "no cluster is configured"),
        Unreachable("submit without a profile", ["submit"], "no cluster is configured"),
        Unreachable("nodes without a profile", ["nodes"], "no cluster is configured"),
        Unreachable("cancel without a profile", ["cancel", "job-1"], "no cluster is configured"),
        Unreachable("logs without a profile", ["logs", "job-1"], "no cluster is configured"),
        Unreachable("pause without a profile", ["pause", "job-1"], "no cluster is configured"),
        Unreachable("resume without a profile", ["resume", "job-1"], "no cluster is configured"),
        Unreachable("jobs --json without a profile", ["jobs", "--json"], "no cluster is configured"),
        new("logs from a negative step", ["logs", "job-1", "--since", "-3"], "--since -3: a step number is 0 or more"),
        new("logs --since not a number", ["logs", "job-1", "--since", "ten"], "Cannot parse argument 'ten'"),
        new("logs without a job", ["logs"], "Required argument missing for command: 'logs'"),
        Unreachable("jobs at a gateway where nothing listens", ["jobs"], "nothing listens there") with
        {
            Environment = f => new() { ["FLM_CLUSTER_GATEWAYS"] = $"{f.DeadPort}" },
        },
        Unreachable("status with a profile of dead gateways", ["status", "job-1"], "nothing listens there") with
        {
            Prepare = f => f.WriteFile("profile.json", $$"""{ "clustering": "localhost", "gateway_ports": [{{f.DeadPort}}], "cluster_id": "flm" }"""),
            Environment = f => new() { ["FLM_PROFILE"] = f.PathOf("profile.json") },
        },
        Unreachable("nodes at a Redis where nothing listens", ["nodes"], "nothing listens there") with
        {
            Environment = f => new() { ["FLM_CLUSTER_REDIS"] = $"127.0.0.1:{f.DeadPort}" },
        },
        new("jobs with a malformed FLM_CLUSTER_GATEWAYS", ["jobs"], "FLM_CLUSTER_GATEWAYS: 'abc' is not a port")
        {
            Environment = _ => new() { ["FLM_CLUSTER_GATEWAYS"] = "abc" },
        },
        new("jobs with a token file that is not there", ["jobs"], "the token file /nonexistent/operator.token cannot be read")
        {
            Environment = f => new() { ["FLM_CLUSTER_GATEWAYS"] = $"{f.DeadPort}", ["FLM_TOKEN_FILE"] = "/nonexistent/operator.token" },
        },
        new("jobs with an authority that is not there", ["jobs"], "the certificate authority /nonexistent/ca.pem cannot be loaded")
        {
            Environment = f => new() { ["FLM_CLUSTER_GATEWAYS"] = $"{f.DeadPort}", ["FLM_TLS_CA"] = "/nonexistent/ca.pem" },
        },
        new("jobs with a client certificate that does not load", ["jobs"], "cannot be loaded")
        {
            Prepare = f => f.WriteFile("client.pem", "not a certificate"),
            Environment = f => new() { ["FLM_CLUSTER_GATEWAYS"] = $"{f.DeadPort}", ["FLM_CLIENT_CERT"] = f.PathOf("client.pem") },
        },
        new("jobs with a malformed profile", ["jobs"], "is not readable")
        {
            Prepare = f => f.WriteFile("profile.json", "{ not json"),
            Environment = f => new() { ["FLM_PROFILE"] = f.PathOf("profile.json") },
        },
    ];

    private static Case Train(string name, string[] args, string expected) =>
        new($"train: {name}", ["train", "--out", "out", .. args], expected) { Outputs = ["out"] };

    private static Case Generate(string name, string[] args, string expected) =>
        new($"generate: {name}", ["generate", "--model", "model", "--prompt", "hi", .. args], expected);

    private static Case Unreachable(string name, string[] args, string expected) =>
        new(name, args, expected) { ExitCode = CliRunner.Unavailable };

    public static TheoryData<string> CaseNames => new(Cases.Select(c => c.Name));

    [Fact]
    public void Case_names_are_unique() =>
        Assert.Empty(Cases.GroupBy(c => c.Name).Where(g => g.Count() > 1).Select(g => g.Key));

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void Bad_input_is_one_error_line_with_its_exit_code_and_nothing_written(string name)
    {
        var c = Cases.Single(x => x.Name == name);
        c.Prepare?.Invoke(_fixture);
        if (c.SkipReason?.Invoke(_fixture) is { } skip)
            Assert.Skip(skip);
        var outputs = c.Outputs.Select(_fixture.PathOf).ToList();
        var existedBefore = outputs.Where(Path.Exists).ToList();
        var before = _fixture.Snapshot();

        var r = _fixture.Run(c.Args, c.Environment?.Invoke(_fixture));

        Assert.True(c.ExitCode == r.ExitCode, $"exit code {r.ExitCode}, expected {c.ExitCode}; stderr: {r.Error}");
        var lines = r.Error.Split('\n').Where(l => l.Trim().Length > 0).ToList();
        var line = Assert.Single(lines);
        Assert.StartsWith("error: ", line);
        Assert.Contains(c.Expected, line);
        Assert.DoesNotMatch(ExceptionName(), r.Error);
        Assert.DoesNotMatch(StackTraceLine(), r.Error);
        Assert.Equal("", r.Output);
        Assert.All(outputs.Except(existedBefore), o => Assert.False(Path.Exists(o), $"{o} was created"));
        Assert.Equal(before, _fixture.Snapshot());
    }

    /// <summary>The fixtures themselves are good: the corrupt cases fail for the one thing each changes.</summary>
    [Fact]
    public void Uncorrupted_fixtures_are_accepted()
    {
        _fixture.Checkpoint("ckpt");
        _fixture.HfExport("hf");
        var verify = _fixture.Run(["checkpoint", "verify", "ckpt/step-00000001"]);
        Assert.True(verify.ExitCode == 0, verify.Error);
        var generate = _fixture.Run(["generate", "--model", "hf", "--prompt", "hi", "--max-new-tokens", "16"]);
        Assert.True(generate.ExitCode == 0, generate.Error);
        Assert.StartsWith("hi", generate.Output);
    }

    [GeneratedRegex(@"\b\w+Exception\b")]
    private static partial Regex ExceptionName();

    [GeneratedRegex(@"(?m)^\s*(at \S+|--- End of)")]
    private static partial Regex StackTraceLine();

    /// <summary>
    /// A private test folder: the child's working directory, HOME and TMPDIR (so that a temporary file or an
    /// embedded cluster's folder would show in the snapshot), and builders for the files cases need.
    /// </summary>
    public sealed class Fixture : IDisposable
    {
        private readonly string _root = Directory.CreateTempSubdirectory("flm-bad-input-").FullName;
        private readonly Lazy<int> _deadPort = new(FreePort);

        public Fixture()
        {
            foreach (var dir in new[] { Work, Temp, Home })
                Directory.CreateDirectory(dir);
        }

        public string Work => Path.Combine(_root, "work");
        private string Temp => Path.Combine(_root, "tmp");
        private string Home => Path.Combine(_root, "home");

        /// <summary>A loopback port where nothing listens (taken and released).</summary>
        public int DeadPort => _deadPort.Value;

        public string PathOf(string relative) => Path.GetFullPath(Path.Combine(Work, relative));

        public void Dispose()
        {
            if (!OperatingSystem.IsWindows()) // read-only folders of a case become deletable again
                foreach (var dir in Directory.EnumerateDirectories(_root, "*", SearchOption.AllDirectories))
                    File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            Directory.Delete(_root, recursive: true);
        }

        public FlmResult Run(string[] args, Dictionary<string, string>? extra = null)
        {
            var environment = new Dictionary<string, string>
            {
                ["TMPDIR"] = Temp,
                ["HOME"] = Home,
                ["FLM_PROFILE"] = Path.Combine(Home, ".flm", "cluster.json"),
                ["FLM_CLUSTER_GATEWAYS"] = "",
                ["FLM_CLUSTER_REDIS"] = "",
                // The runtime's diagnostics socket would come and go in TMPDIR: not the program's doing.
                ["DOTNET_EnableDiagnostics"] = "0",
            };
            foreach (var (key, value) in extra ?? [])
                environment[key] = value;
            return FlmProcess.Run(Work, environment, TimeSpan.FromMinutes(1), args);
        }

        /// <summary>Every file and folder under the test folder: relative path, size, content hash, last write time.</summary>
        public List<string> Snapshot() =>
            Directory.EnumerateFileSystemEntries(_root, "*", SearchOption.AllDirectories).Append(_root).Order(StringComparer.Ordinal)
                .Select(p => Directory.Exists(p)
                    ? $"{Path.GetRelativePath(_root, p)}/ {Directory.GetLastWriteTimeUtc(p):O}"
                    : $"{Path.GetRelativePath(_root, p)} {new FileInfo(p).Length} {Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(p)))} {File.GetLastWriteTimeUtc(p):O}")
                .ToList();

        public void WriteFile(string relative, string content)
        {
            var path = PathOf(relative);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllText(path, content);
        }

        public void ReadOnlyFolder(string relative)
        {
            var path = PathOf(relative);
            Directory.CreateDirectory(path);
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        }

        /// <summary>Whether this process can create a file in the folder (root can, whatever its mode).</summary>
        public bool CanWrite(string relative)
        {
            var probe = Path.Combine(PathOf(relative), ".probe");
            try
            {
                File.WriteAllText(probe, "");
                File.Delete(probe);
                return true;
            }
            catch (UnauthorizedAccessException)
            {
                return false;
            }
        }

        public void Checkpoint(string relative, Action<JsonObject>? corrupt = null) => CheckpointFiles.Checkpoint(PathOf(relative), corrupt);

        public void HfExport(string relative, Action<JsonObject>? config = null, string? rawConfig = null, Func<byte[], byte[]>? weights = null) =>
            CheckpointFiles.HfExport(PathOf(relative), config, rawConfig, weights);

        private static int FreePort()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            listener.Stop();
            return port;
        }
    }
}
