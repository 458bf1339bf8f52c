using System.Security.Cryptography;

namespace FlmCluster.Training.Data;

/// <summary>
/// One token stream made of every input in order: text files are tokenized in memory when the job starts,
/// prepared token files are memory-mapped. Documents end with end-of-text.
/// </summary>
public sealed class TokenDataset : IDisposable
{
    private readonly List<Segment> _segments = [];
    private readonly List<TokenFile> _files = [];

    public long TokenCount { get; private set; }
    public long DocumentCount { get; private set; }
    public string TokenizerName { get; }

    /// <summary>Hex SHA-256 over the inputs' tokens: two workers with the same fingerprint see the same stream.</summary>
    public string Fingerprint { get; }

    private TokenDataset(string tokenizerName, string fingerprint)
    {
        TokenizerName = tokenizerName;
        Fingerprint = fingerprint;
    }

    public static TokenDataset Load(IEnumerable<string> paths, ITextTokenizer tokenizer, int paddedVocab)
    {
        var files = Corpus.ExpandPaths(paths);
        using var fingerprint = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var segments = new List<Segment>();
        var opened = new List<TokenFile>();
        long docs = 0;
        try
        {
            foreach (var file in files)
            {
                if (Corpus.IsTokenFile(file))
                {
                    var tf = TokenFile.Open(file);
                    opened.Add(tf);
                    if (tf.TokenizerName != tokenizer.Name)
                        throw new FlmUserException($"token file '{file}' was made with tokenizer '{tf.TokenizerName}' but the job uses '{tokenizer.Name}'; set tokenizer accordingly or re-prepare the data");
                    if (tf.VocabSize > paddedVocab)
                        throw new FlmUserException($"token file '{file}' has vocabulary {tf.VocabSize}, more than the model's {paddedVocab} embedding rows");
                    segments.Add(new Segment(null, tf, tf.TokenCount));
                    fingerprint.AppendData(tf.Sha256);
                    docs += tf.DocumentCount;
                }
                else
                {
                    var documents = Corpus.ReadDocuments(file).ToList();
                    var encoded = new int[documents.Count][];
                    System.Threading.Tasks.Parallel.For(0, documents.Count, i => encoded[i] = tokenizer.Encode(documents[i]));
                    var total = encoded.Sum(e => (long)e.Length + 1);
                    var tokens = new int[total];
                    var pos = 0;
                    foreach (var doc in encoded)
                    {
                        doc.CopyTo(tokens, pos);
                        pos += doc.Length;
                        tokens[pos++] = tokenizer.EndOfText;
                    }
                    segments.Add(new Segment(tokens, null, tokens.Length));
                    fingerprint.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens.AsSpan()));
                    docs += documents.Count;
                }
            }
        }
        catch
        {
            opened.ForEach(f => f.Dispose());
            throw;
        }
        var dataset = new TokenDataset(tokenizer.Name, Convert.ToHexStringLower(fingerprint.GetHashAndReset()));
        dataset._segments.AddRange(segments);
        dataset._files.AddRange(opened);
        dataset.TokenCount = segments.Sum(s => s.Length);
        dataset.DocumentCount = docs;
        return dataset;
    }

    /// <summary>A dataset over tokens already in memory (tests, benchmarks).</summary>
    public static TokenDataset FromTokens(int[] tokens, string tokenizerName)
    {
        var hash = Convert.ToHexStringLower(SHA256.HashData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens.AsSpan())));
        var dataset = new TokenDataset(tokenizerName, hash);
        dataset._segments.Add(new Segment(tokens, null, tokens.Length));
        dataset.TokenCount = tokens.Length;
        dataset.DocumentCount = 1;
        return dataset;
    }

    /// <summary>Copies tokens [start, start + destination.Length) of the concatenated stream.</summary>
    public void CopyTokens(long start, Span<long> destination)
    {
        var remaining = destination;
        var offset = start;
        foreach (var segment in _segments)
        {
            if (remaining.IsEmpty)
                return;
            if (offset >= segment.Length)
            {
                offset -= segment.Length;
                continue;
            }
            var n = (int)Math.Min(remaining.Length, segment.Length - offset);
            if (segment.Memory is { } memory)
            {
                for (var i = 0; i < n; i++)
                    remaining[i] = memory[offset + i];
            }
            else
                segment.File!.CopyTokens(offset, remaining[..n]);
            remaining = remaining[n..];
            offset = 0;
        }
        if (!remaining.IsEmpty)
            throw new ArgumentOutOfRangeException(nameof(start), "read past the end of the dataset");
    }

    public void Dispose() => _files.ForEach(f => f.Dispose());

    private sealed record Segment(int[]? Memory, TokenFile? File, long Length);
}
