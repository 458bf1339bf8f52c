using System.Collections.Concurrent;
using FlmCluster.Grains.Abstractions;
using CollectiveAbortedException = FlmCluster.Training.Parallel.CollectiveAbortedException;
using CollectiveTimeoutException = FlmCluster.Training.Parallel.CollectiveTimeoutException;

namespace FlmCluster.Grains.DataPlane;

/// <summary>
/// Where a worker's incoming tensor messages land, whole (from a worker on the same silo) or in chunks (from
/// another silo), keyed by job, incarnation and message key. The device thread blocks in <see cref="Take"/>
/// until its message is complete. A peer may send before this worker has taken up the job, so messages are
/// kept until taken; those of a job this worker has left are dropped, and its waiting collectives fail as
/// aborted (<see cref="CollectiveAbortedException"/>), a peer that never sends as timed out.
/// </summary>
public sealed class WorkerMailbox
{
    private readonly ConcurrentDictionary<string, Message> _messages = new();
    private readonly ConcurrentDictionary<string, bool> _closed = new();
    private readonly ConcurrentDictionary<string, CancellationTokenSource> _closing = new();
    private readonly ConcurrentDictionary<(string JobId, int Incarnation), bool> _open = new();

    private const string LeftJob = "the worker left the job";

    /// <summary>Starts taking messages of a job (a new incarnation of a left job is a new job).</summary>
    public void Accept(string jobId, int incarnation)
    {
        var prefix = Prefix(jobId, incarnation);
        _closed.TryRemove(prefix, out _);
        if (_closing.TryGetValue(prefix, out var closing) && closing.IsCancellationRequested)
            _closing.TryRemove(prefix, out _);
        _open[(jobId, incarnation)] = true;
    }

    /// <summary>Leaves every job (the silo is stopping): collectives waiting here fail at once instead of holding up the shutdown.</summary>
    public void CloseAll()
    {
        foreach (var (jobId, incarnation) in _open.Keys.ToList())
            Close(jobId, incarnation);
    }

    public bool IsClosed(string jobId, int incarnation) => _closed.ContainsKey(Prefix(jobId, incarnation));

    /// <summary>Cancelled when the worker leaves the job (at once when it already has): other transports end their sessions on it.</summary>
    public CancellationToken Closing(string jobId, int incarnation)
    {
        var prefix = Prefix(jobId, incarnation);
        var source = _closing.GetOrAdd(prefix, _ => new CancellationTokenSource());
        if (_closed.ContainsKey(prefix))
            source.Cancel();
        return source.Token;
    }

    /// <summary>Leaves a job: its pending messages are dropped and waiting takers fail, as do later ones.</summary>
    public void Close(string jobId, int incarnation)
    {
        var prefix = Prefix(jobId, incarnation);
        _closed[prefix] = true;
        if (_closing.TryRemove(prefix, out var closing))
            closing.Cancel();
        _open.TryRemove((jobId, incarnation), out _);
        foreach (var key in _messages.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList())
            if (_messages.TryRemove(key, out var message))
                message.Completion.TrySetException(new CollectiveAbortedException(LeftJob));
    }

    public void Put(TensorChunk chunk)
    {
        Check(chunk.JobId, chunk.Incarnation);
        if (chunk.Count <= 0 || chunk.Index < 0 || chunk.Index >= chunk.Count || chunk.TotalBytes < 0
            || chunk.Data.Length > TensorChunk.MaxBytes || chunk.Data.Length > chunk.TotalBytes)
            throw new ArgumentException($"malformed tensor chunk {chunk.Index}/{chunk.Count} of '{chunk.Key}' ({chunk.Data.Length} of {chunk.TotalBytes} bytes)");
        var message = _messages.GetOrAdd(Prefix(chunk.JobId, chunk.Incarnation) + chunk.Key, _ => new Message());
        message.Add(chunk);
    }

    public void PutWhole(string jobId, int incarnation, string key, byte[] data)
    {
        Check(jobId, incarnation);
        _messages.GetOrAdd(Prefix(jobId, incarnation) + key, _ => new Message()).Completion.TrySetResult(data);
    }

    /// <summary>Blocks until the message is complete (on the device thread, never on a grain's scheduler).</summary>
    public byte[] Take(string jobId, int incarnation, string key, TimeSpan timeout, string what)
    {
        var full = Prefix(jobId, incarnation) + key;
        var message = _messages.GetOrAdd(full, _ => new Message());
        // Checked after the message is in place: a Close before this line is seen here, one after it fails the message.
        Check(jobId, incarnation);
        bool arrived;
        try
        {
            arrived = message.Completion.Task.Wait(timeout);
        }
        catch (AggregateException ex) when (ex.InnerException is CollectiveAbortedException aborted)
        {
            throw aborted;
        }
        if (!arrived)
            throw new CollectiveTimeoutException($"{what} waited more than {timeout.TotalSeconds:0}s for its peer's tensor '{key}'");
        _messages.TryRemove(full, out _);
        return message.Completion.Task.Result;
    }

    private void Check(string jobId, int incarnation)
    {
        if (_closed.ContainsKey(Prefix(jobId, incarnation)))
            throw new CollectiveAbortedException($"{LeftJob} {jobId} (incarnation {incarnation})");
    }

    private static string Prefix(string jobId, int incarnation) => $"{jobId}#{incarnation}|";

    private sealed class Message
    {
        private byte[]? _buffer;
        private int _received;
        public TaskCompletionSource<byte[]> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Add(TensorChunk chunk)
        {
            lock (this)
            {
                _buffer ??= new byte[chunk.TotalBytes];
                if (_buffer.Length != chunk.TotalBytes)
                    throw new ArgumentException($"chunks of '{chunk.Key}' disagree on its size");
                var offset = (long)chunk.Index * TensorChunk.MaxBytes;
                if (offset + chunk.Data.Length > _buffer.Length)
                    throw new ArgumentException($"chunk {chunk.Index} of '{chunk.Key}' runs past the message");
                chunk.Data.CopyTo(_buffer, (int)offset);
                if (++_received == chunk.Count)
                    Completion.TrySetResult(_buffer);
            }
        }
    }
}

/// <summary>The mailboxes of the workers active on this silo, for in-process delivery between them.</summary>
public sealed class LocalWorkers
{
    private readonly ConcurrentDictionary<string, WorkerMailbox> _mailboxes = new();

    /// <summary>Every local worker leaves its jobs: the silo is stopping, and their peers must not wait for them.</summary>
    public void LeaveAll()
    {
        foreach (var mailbox in _mailboxes.Values)
            mailbox.CloseAll();
    }

    public void Register(string worker, WorkerMailbox mailbox) => _mailboxes[worker] = mailbox;
    public void Unregister(string worker) => _mailboxes.TryRemove(worker, out _);
    public bool TryGet(string worker, out WorkerMailbox mailbox) => _mailboxes.TryGetValue(worker, out mailbox!);
    public int Count => _mailboxes.Count;
}
