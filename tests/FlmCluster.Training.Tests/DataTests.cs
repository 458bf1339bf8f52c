using FlmCluster.Training.Data;

namespace FlmCluster.Training.Tests;

public class TokenizerTests
{
    public static TheoryData<string> Texts => new()
    {
        "The Fulton County Grand Jury said Friday an investigation of recent primary elections produced no evidence.",
        "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
        "Mixed 混合 text with émojis 🙂 and numbers 12345.",
    };

    [Theory]
    [MemberData(nameof(Texts))]
    public void Cl100k_round_trips_english_and_chinese(string text)
    {
        var tokenizer = TokenizerFactory.Create(TokenizerFactory.Cl100k);
        var ids = tokenizer.Encode(text);
        Assert.All(ids, id => Assert.InRange(id, 0, 100255));
        Assert.Equal(text, tokenizer.Decode(ids));
    }

    [Theory]
    [MemberData(nameof(Texts))]
    public void Bytes_round_trip(string text)
    {
        var tokenizer = new ByteTokenizer();
        var ids = tokenizer.Encode(text);
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(text), ids.Length);
        Assert.Equal(text, tokenizer.Decode(ids));
    }

    [Fact]
    public void End_of_text_uses_flm_id_100256()
    {
        var tokenizer = TokenizerFactory.Create(TokenizerFactory.Cl100k);
        Assert.Equal(100256, tokenizer.EndOfText);
        Assert.Equal(100257, tokenizer.VocabSize);
        // cl100k's own end-of-text (100257) is mapped to FLM's id.
        Assert.Contains(100256, tokenizer.Encode("a<|endoftext|>b"));
        Assert.Equal("ab", tokenizer.Decode([.. tokenizer.Encode("a"), 100256, .. tokenizer.Encode("b")]));
        Assert.Equal("hello", tokenizer.Decode([.. tokenizer.Encode("hello"), 100300]));
    }

    [Fact]
    public void Hello_world_has_cl100k_ids()
    {
        // Known cl100k_base ids (tiktoken): "hello" 15339, " world" 1917.
        Assert.Equal([15339, 1917], TokenizerFactory.Create(TokenizerFactory.Cl100k).Encode("hello world"));
    }
}

public class SampleOrderTests
{
    [Theory]
    [InlineData(1L)]
    [InlineData(2L)]
    [InlineData(3L)]
    [InlineData(7L)]
    [InlineData(100L)]
    [InlineData(1000L)]
    [InlineData(4097L)]
    public void Feistel_is_a_bijection(long n)
    {
        foreach (var key in new ulong[] { 0, 1, 0xDEADBEEF, ulong.MaxValue })
        {
            var permutation = new FeistelPermutation(n, key);
            var seen = new bool[n];
            for (long i = 0; i < n; i++)
            {
                var j = permutation.Map(i);
                Assert.InRange(j, 0, n - 1);
                Assert.False(seen[j], $"n={n} key={key}: {j} hit twice");
                seen[j] = true;
            }
        }
    }

    [Fact]
    public void Same_seed_same_samples_and_each_epoch_covers_every_window_once()
    {
        var order = new SampleOrder(tokenCount: 10_001, seqLen: 32, seed: 99);
        Assert.Equal(312, order.Count);
        var again = new SampleOrder(10_001, 32, 99);
        var other = new SampleOrder(10_001, 32, 100);
        var differs = 0;
        for (var epoch = 0; epoch < 3; epoch++)
        {
            var windows = new HashSet<long>();
            for (long i = epoch * order.Count; i < (epoch + 1) * order.Count; i++)
            {
                var w = order.WindowOf(i);
                Assert.Equal(w, again.WindowOf(i));
                if (other.WindowOf(i) != w) differs++;
                Assert.True(order.StartToken(i) + 33 <= 10_001, "a window reads past the data");
                Assert.True(windows.Add(w));
            }
            Assert.Equal(order.Count, windows.Count);
        }
        Assert.True(differs > 900, "another seed gives another order");
        // Epochs are shuffled differently.
        Assert.NotEqual(Enumerable.Range(0, 20).Select(i => order.WindowOf(i)), Enumerable.Range(0, 20).Select(i => order.WindowOf(order.Count + i)));
    }

    [Fact]
    public void Too_little_data_is_a_clear_error()
    {
        var ex = Assert.Throws<FlmUserException>(() => new SampleOrder(10, 32, 1));
        Assert.Contains("fewer than one sequence", ex.Message);
    }
}

public class TokenFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-tokens-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData(TokenizerFactory.Bytes, 2)]
    [InlineData(TokenizerFactory.Cl100k, 4)]
    public void Written_documents_read_back_with_offsets_and_checksum(string tokenizerName, int bytesPerToken)
    {
        var tokenizer = TokenizerFactory.Create(tokenizerName);
        var prefix = Path.Combine(_dir, "corpus");
        string[] docs = ["First document.", "第二篇文章。", "third"];
        using (var writer = new TokenFile.Writer(prefix, tokenizer))
        {
            foreach (var d in docs)
                writer.AddDocument(tokenizer.Encode(d));
            writer.Complete();
        }
        using var file = TokenFile.Open(prefix + ".bin");
        Assert.Equal(bytesPerToken, file.BytesPerToken);
        Assert.Equal(3, file.DocumentCount);
        Assert.Equal(tokenizerName, file.TokenizerName);
        Assert.True(file.VerifyChecksum());
        for (var i = 0; i < docs.Length; i++)
        {
            var start = file.DocumentOffsets[i];
            var length = (int)(file.DocumentOffsets[i + 1] - start);
            var tokens = new long[length];
            file.CopyTokens(start, tokens);
            Assert.Equal(tokenizer.EndOfText, tokens[^1]);
            Assert.Equal(docs[i], tokenizer.Decode(tokens[..^1].Select(t => (int)t)));
        }
    }

    [Fact]
    public void Corrupt_or_truncated_files_are_detected()
    {
        var tokenizer = new ByteTokenizer();
        var prefix = Path.Combine(_dir, "c");
        using (var writer = new TokenFile.Writer(prefix, tokenizer))
        {
            writer.AddDocument(tokenizer.Encode("some text to flip"));
            writer.Complete();
        }
        var bin = File.ReadAllBytes(prefix + ".bin");
        bin[3] ^= 0x40;
        File.WriteAllBytes(prefix + ".bin", bin);
        using (var flipped = TokenFile.Open(prefix))
            Assert.False(flipped.VerifyChecksum());
        File.WriteAllBytes(prefix + ".bin", bin[..^2]);
        var ex = Assert.Throws<FlmUserException>(() => TokenFile.Open(prefix));
        Assert.Contains("incomplete", ex.Message);
    }

    [Fact]
    public void Dataset_reads_text_jsonl_and_token_files_as_one_stream()
    {
        var tokenizer = new ByteTokenizer();
        File.WriteAllText(Path.Combine(_dir, "a.txt"), "abc");
        File.WriteAllText(Path.Combine(_dir, "b.jsonl"), "{\"text\":\"de\"}\n\n{\"text\":\"f\"}\n");
        using (var writer = new TokenFile.Writer(Path.Combine(_dir, "c"), tokenizer))
        {
            writer.AddDocument(tokenizer.Encode("gh"));
            writer.Complete();
        }
        using var data = TokenDataset.Load([_dir], tokenizer, 320);
        Assert.Equal(4, data.DocumentCount);
        var tokens = new long[data.TokenCount];
        data.CopyTokens(0, tokens);
        Assert.Equal("abc|de|f|gh|", string.Concat(tokens.Select(t => t == 256 ? "|" : ((char)t).ToString())));
    }

    [Fact]
    public void Bad_jsonl_line_names_file_and_line()
    {
        var path = Path.Combine(_dir, "bad.jsonl");
        File.WriteAllText(path, "{\"text\":\"ok\"}\n{\"txt\":1}\n");
        var ex = Assert.Throws<FlmUserException>(() => TokenDataset.Load([path], new ByteTokenizer(), 320));
        Assert.Contains("bad.jsonl:2", ex.Message);
    }

    [Fact]
    public void The_bundled_corpus_is_bilingual()
    {
        var files = Corpus.ExpandPaths([Corpus.Bundled]);
        Assert.Equal(["en.jsonl", "zh.jsonl"], files.Select(Path.GetFileName));
        var en = Corpus.ReadDocuments(files[0]).Sum(d => d.Length);
        var zh = Corpus.ReadDocuments(files[1]).ToList();
        Assert.True(en > 2_000_000, $"English text: {en} characters");
        Assert.True(zh.Count > 5_000 && zh.Sum(d => d.Count(c => c >= 0x4E00 && c <= 0x9FFF)) > 700_000, "Chinese text");
    }
}
