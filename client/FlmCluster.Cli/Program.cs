using System.CommandLine;
using FlmCluster.Cli;
using FlmCluster.Cli.Commands;
using Spectre.Console;

// Tables keep their shape when the output goes to a file or a pipe.
if (Console.IsOutputRedirected)
    AnsiConsole.Profile.Width = 180;

var root = new RootCommand("flm: train FLM-style language models, locally or on an Orleans GPU cluster.")
{
    TrainCommand.Create(),
    GenerateCommand.Create(),
    ParamsCommand.Create(),
    SimCommand.Create(),
    DataCommand.Create(),
    ScalingCommands.Mup(),
    ScalingCommands.PredictLoss(),
    CheckpointCommands.Checkpoint(),
    CheckpointCommands.Export(),
    CheckpointCommands.Import(),
    ClusterCommands.Cluster(),
    ClusterCommands.Nodes(),
    JobCommands.Submit(),
    JobCommands.Jobs(),
    JobCommands.Status(),
    JobCommands.Logs(),
    JobCommands.Pause(),
    JobCommands.Resume(),
    JobCommands.Cancel(),
};
return CliRunner.Run(root, args);
