using System.Text;
using Microsoft.ML.Tokenizers;

namespace FlmCluster.Training.Data;

/// <summary>Text ↔ token ids with an end-of-text id that separates documents.</summary>
public interface ITextTokenizer
{
    string Name { get; }

    /// <summary>Ids this tokenizer can produce: 0 … VocabSize−1 (end-of-text included).</summary>
    int VocabSize { get; }

    int EndOfText { get; }

    int[] Encode(string text);

    /// <summary>Decodes ids; end-of-text and ids outside the vocabulary (embedding padding) are dropped.</summary>
    string Decode(IEnumerable<int> ids);
}

public static class TokenizerFactory
{
    public const string Cl100k = "cl100k";
    public const string Bytes = "bytes";

    public static int VocabSize(string name) => name switch
    {
        Cl100k => Cl100kTokenizer.Vocab,
        Bytes => ByteTokenizer.Vocab,
        _ => throw Unknown(name),
    };

    public static ITextTokenizer Create(string name) => name switch
    {
        Cl100k => Cl100kTokenizer.Shared.Value,
        Bytes => new ByteTokenizer(),
        _ => throw Unknown(name),
    };

    private static FlmUserException Unknown(string name) =>
        new($"unknown tokenizer '{name}'; use '{Cl100k}' (FLM's vocabulary) or '{Bytes}' (UTF-8 bytes, for fast tests)");
}

/// <summary>
/// cl100k_base (offline data package) with FLM-101B's id convention: the 100,256 ordinary ids keep their
/// values and end-of-text is 100256 (cl100k's own end-of-text id is 100257).
/// </summary>
public sealed class Cl100kTokenizer : ITextTokenizer
{
    public const int Vocab = 100257;
    public const int FlmEndOfText = 100256;
    private const int TiktokenEndOfText = 100257;

    internal static readonly Lazy<Cl100kTokenizer> Shared = new(() => new Cl100kTokenizer(), LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly TiktokenTokenizer _inner = TiktokenTokenizer.CreateForEncoding("cl100k_base");

    public string Name => TokenizerFactory.Cl100k;
    public int VocabSize => Vocab;
    public int EndOfText => FlmEndOfText;

    public int[] Encode(string text)
    {
        var ids = _inner.EncodeToIds(text);
        var result = new int[ids.Count];
        for (var i = 0; i < result.Length; i++)
            result[i] = ids[i] == TiktokenEndOfText ? FlmEndOfText : ids[i];
        return result;
    }

    public string Decode(IEnumerable<int> ids) =>
        _inner.Decode(ids.Where(id => id is >= 0 and < FlmEndOfText)) ?? "";
}

/// <summary>UTF-8 bytes 0…255 plus end-of-text 256: a 257-id vocabulary for fast tests.</summary>
public sealed class ByteTokenizer : ITextTokenizer
{
    public const int Vocab = 257;

    public string Name => TokenizerFactory.Bytes;
    public int VocabSize => Vocab;
    public int EndOfText => 256;

    public int[] Encode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var ids = new int[bytes.Length];
        for (var i = 0; i < bytes.Length; i++)
            ids[i] = bytes[i];
        return ids;
    }

    public string Decode(IEnumerable<int> ids) =>
        Encoding.UTF8.GetString(ids.Where(id => id is >= 0 and < 256).Select(id => (byte)id).ToArray());
}
