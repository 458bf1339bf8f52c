using System.CommandLine;
using FlmCluster.Training;
using FlmCluster.Training.Generation;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm generate</c>: KV-cache decoding from a trained model directory.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "A checkpoint, a folder of checkpoints (the newest valid one) or a Hugging Face export", Required = true };
        var prompt = new Option<string>("--prompt", "-p") { Description = "Text to continue", Required = true };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 64 };
        var penalty = new Option<double>("--repetition-penalty") { Description = "Penalty on repeated tokens (1 = off)", DefaultValueFactory = _ => 1.0 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature (0 = greedy)", DefaultValueFactory = _ => 0.0 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong>("--seed") { Description = "Sampling seed", DefaultValueFactory = _ => 1UL };
        var noCache = new Option<bool>("--no-cache") { Description = "Recompute every position instead of using the KV cache" };
        var command = new Command("generate", "Continue a prompt with a trained model") { model, prompt, maxNew, penalty, temperature, topP, seed, noCache };
        command.SetAction(parse =>
        {
            var options = new GenerationOptions
            {
                MaxNewTokens = parse.GetValue(maxNew),
                RepetitionPenalty = parse.GetValue(penalty),
                Temperature = parse.GetValue(temperature),
                TopP = parse.GetValue(topP),
                Seed = parse.GetValue(seed),
                UseCache = !parse.GetValue(noCache),
            };
            options.Validate();
            var directory = parse.GetValue(model)!;
            if (!Directory.Exists(directory))
                throw new FlmUserException($"--model '{directory}' does not exist; train one with 'flm train --out {directory}'");
            var (job, flm, tokenizer) = TextGenerator.LoadModel(directory);
            using (flm)
            {
                options.Validate(job.Model);
                var text = parse.GetValue(prompt)!;
                var ids = tokenizer.Encode(text);
                var produced = TextGenerator.Generate(flm, ids, options, job.Model.VocabSize, tokenizer.EndOfText);
                Console.WriteLine(text + tokenizer.Decode(produced));
            }
            return CliRunner.Ok;
        });
        return command;
    }
}
