using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Grains.History;

/// <summary>
/// Job histories in files beside the file grain storage (localhost clustering: every silo of the machine shares
/// the folder): per job a file of steps and a file of events, one JSON record per line, appended and fsynced.
/// Each silo indexes the files as they grow (where each step's latest line and each event's line start), reading
/// only what was appended since it last looked, so a read costs its page, not the whole history, and a
/// coordinator that moved here from another silo's process picks up that process's lines.
/// </summary>
public sealed class FileJobHistory(string directory) : IJobHistoryStore
{
    private readonly ConcurrentDictionary<string, JobFiles> _jobs = new();

    public async Task Append(string jobId, IReadOnlyList<StepRecord> steps, IReadOnlyList<JobEvent> events)
    {
        var files = FilesOf(jobId);
        await files.Lock.WaitAsync();
        try
        {
            if (steps.Count > 0)
                AppendLines(files.Steps.Path, steps.Select(HistoryJson.Write));
            if (events.Count > 0)
                AppendLines(files.Events.Path, events.Select(HistoryJson.Write));
        }
        finally
        {
            files.Lock.Release();
        }
    }

    public async Task<JobHistory> Read(string jobId, long sinceStep, int sinceEvent, int max)
    {
        var files = FilesOf(jobId);
        await files.Lock.WaitAsync();
        try
        {
            files.Steps.CatchUp(line => HistoryJson.Read<StepRecord>(line).Point.Step);
            files.Events.CatchUp(keyOf: null);
            var steps = files.Steps.ReadFrom(files.Steps.FirstAtOrAfter(sinceStep), max).Select(HistoryJson.Read<StepRecord>);
            var events = files.Events.ReadFrom(Math.Min(sinceEvent, files.Events.Count), max).Select(HistoryJson.Read<JobEvent>).ToList();
            return HistoryJson.Page(steps, sinceStep, events, sinceEvent, max);
        }
        finally
        {
            files.Lock.Release();
        }
    }

    private JobFiles FilesOf(string jobId) => _jobs.GetOrAdd(jobId, id =>
    {
        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(id)))[..16];
        var readable = new string(id.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' ? c : '_').Take(60).ToArray());
        var stem = Path.Combine(directory, "history", $"{readable}-{hash}");
        return new JobFiles(new LineIndex($"{stem}.steps.jsonl"), new LineIndex($"{stem}.events.jsonl"));
    });

    private static void AppendLines(string path, IEnumerable<string> lines)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var text = Encoding.UTF8.GetBytes(string.Concat(lines.Select(l => l + "\n")));
        using var stream = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite);
        stream.Write(text);
        stream.Flush(flushToDisk: true);
    }

    private sealed record JobFiles(LineIndex Steps, LineIndex Events)
    {
        public SemaphoreSlim Lock { get; } = new(1, 1);
    }

    /// <summary>
    /// Where the lines of an append-only file start, by key, kept sorted by key; a later line of the same key
    /// replaces the earlier one (events use their position as key, so none repeats).
    /// </summary>
    private sealed class LineIndex(string path)
    {
        private const int BlockBytes = 1 << 20;
        private readonly List<(long Key, long Offset, int Length)> _lines = [];
        private long _indexed;

        public string Path { get; } = path;
        public int Count => _lines.Count;

        /// <summary>
        /// Indexes the complete lines appended since the last call (a line still being written waits); a line's key
        /// is <paramref name="keyOf"/> it, or its position when null. Reads in blocks, so a long history costs no
        /// more memory than a block and its index.
        /// </summary>
        public void CatchUp(Func<string, long>? keyOf)
        {
            if (!File.Exists(Path))
                return;
            using var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            var end = stream.Length;
            var block = new byte[BlockBytes];
            var carried = new MemoryStream(); // the start of a line that continues in the next block
            var lineStart = _indexed;
            stream.Position = _indexed;
            while (stream.Position < end)
            {
                var read = stream.Read(block, 0, (int)Math.Min(block.Length, end - stream.Position));
                if (read == 0)
                    break;
                var from = 0;
                for (var i = 0; i < read; i++)
                {
                    if (block[i] != (byte)'\n')
                        continue;
                    carried.Write(block, from, i - from);
                    var length = (int)carried.Length;
                    var key = keyOf is null ? _lines.Count : keyOf(Encoding.UTF8.GetString(carried.GetBuffer(), 0, length));
                    Put(key, lineStart, length);
                    lineStart += length + 1;
                    carried.SetLength(0);
                    from = i + 1;
                }
                carried.Write(block, from, read - from);
            }
            _indexed = lineStart;
        }

        private void Put(long key, long offset, int length)
        {
            if (_lines.Count == 0 || key > _lines[^1].Key)
            {
                _lines.Add((key, offset, length));
                return;
            }
            var at = LowerBound(key);
            if (at < _lines.Count && _lines[at].Key == key)
                _lines[at] = (key, offset, length);
            else
                _lines.Insert(at, (key, offset, length));
        }

        /// <summary>Position of the first line whose key is at least <paramref name="key"/>.</summary>
        public int FirstAtOrAfter(long key) => LowerBound(key);

        private int LowerBound(long key)
        {
            int lo = 0, hi = _lines.Count;
            while (lo < hi)
            {
                var mid = (lo + hi) / 2;
                if (_lines[mid].Key < key)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            return lo;
        }

        public List<string> ReadFrom(int position, int max)
        {
            var result = new List<string>();
            if (position >= _lines.Count)
                return result;
            using var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            foreach (var (_, offset, length) in _lines.Skip(position).Take(max))
            {
                var buffer = new byte[length];
                stream.Position = offset;
                stream.ReadExactly(buffer);
                result.Add(Encoding.UTF8.GetString(buffer));
            }
            return result;
        }
    }
}
