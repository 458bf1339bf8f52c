using System.CommandLine;
using System.Diagnostics;
using FlmCluster.Training;
using FlmCluster.Training.Data;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm data prepare</c>: text or JSON-lines files → a token file (.bin) with an index (.idx).</summary>
public static class DataCommand
{
    public static Command Create()
    {
        var inputs = new Option<string[]>("--input", "-i") { Description = "Text (.txt), JSON-lines (.jsonl) files or folders of them, or 'bundled'", Required = true, AllowMultipleArgumentsPerToken = true };
        var output = new Option<string>("--out", "-o") { Description = "Output prefix: writes PREFIX.bin and PREFIX.idx", Required = true };
        var tokenizerOption = new Option<string>("--tokenizer") { Description = "cl100k or bytes", DefaultValueFactory = _ => TokenizerFactory.Cl100k };
        var prepare = new Command("prepare", "Tokenize text into a token file with a document index (format: docs/data-format.md)") { inputs, output, tokenizerOption };
        prepare.SetAction(parse =>
        {
            var tokenizerName = parse.GetValue(tokenizerOption)!;
            TokenizerFactory.VocabSize(tokenizerName);
            var files = Corpus.ExpandPaths(parse.GetValue(inputs)!);
            if (files.Any(Corpus.IsTokenFile))
                throw new FlmUserException("--input must be text or JSON-lines; token files are already prepared");
            var prefix = TokenFile.PrefixOf(parse.GetValue(output)!);
            if (Directory.Exists(prefix))
                throw new FlmUserException($"--out '{prefix}' is a directory; give a file prefix such as {Path.Combine(prefix, "corpus")}");
            OutputLocation.RequireCreatableFile(TokenFile.BinPathOf(prefix), "--out");
            OutputLocation.RequireCreatableFile(TokenFile.IdxPath(prefix), "--out");
            // Validate every document before creating any output file.
            foreach (var file in files)
                foreach (var _ in Corpus.ReadDocuments(file)) { }
            var tokenizer = TokenizerFactory.Create(tokenizerName);
            var watch = Stopwatch.StartNew();
            long bytes = 0;
            using (var writer = new TokenFile.Writer(prefix, tokenizer))
            {
                foreach (var file in files)
                {
                    foreach (var document in Corpus.ReadDocuments(file))
                    {
                        bytes += System.Text.Encoding.UTF8.GetByteCount(document);
                        writer.AddDocument(tokenizer.Encode(document));
                    }
                }
                writer.Complete();
                Console.WriteLine($"{writer.Documents:N0} documents, {writer.Tokens:N0} tokens ({bytes / Math.Max(1, writer.Tokens):0.00} bytes/token) from {files.Count} file(s) in {watch.Elapsed.TotalSeconds:0.0} s");
            }
            Console.WriteLine($"wrote {TokenFile.BinPathOf(prefix)} and {TokenFile.IdxPath(prefix)}");
            return CliRunner.Ok;
        });
        return new Command("data", "Data preparation") { prepare };
    }
}
