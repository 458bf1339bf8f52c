using System.IO.MemoryMappedFiles;
using System.Runtime.CompilerServices;

namespace FlmCluster.Training.Sim;

/// <summary>Where a virtual clock keeps the time it has modelled: a count of 100 ns ticks that only rises.</summary>
public interface IModelledTime
{
    long Ticks { get; }

    /// <summary>Raises the count to at least <paramref name="ticks"/>; true when it rose.</summary>
    bool RaiseTo(long ticks);
}

/// <summary>Modelled time of this process.</summary>
public sealed class ProcessModelledTime : IModelledTime
{
    private long _ticks;

    public long Ticks => Volatile.Read(ref _ticks);

    public bool RaiseTo(long ticks) => Raise(ref _ticks, ticks);

    /// <summary>Raises <paramref name="cell"/> to at least <paramref name="ticks"/> atomically; true when it rose.</summary>
    internal static bool Raise(ref long cell, long ticks)
    {
        var current = Volatile.Read(ref cell);
        while (ticks > current)
        {
            var seen = Interlocked.CompareExchange(ref cell, ticks, current);
            if (seen == current)
                return true;
            current = seen;
        }
        return false;
    }
}

/// <summary>
/// Modelled time shared by every process of a simulated cluster on one machine: eight bytes of a file that each
/// process maps into memory and raises with an atomic compare-and-swap.
/// </summary>
public sealed unsafe class SharedModelledTime : IModelledTime, IDisposable
{
    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly long* _cell;

    public SharedModelledTime(string path)
    {
        using (var stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite))
            if (stream.Length < sizeof(long))
                stream.SetLength(sizeof(long));
        _file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite);
        _view = _file.CreateViewAccessor(0, sizeof(long), MemoryMappedFileAccess.ReadWrite);
        byte* pointer = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        _cell = (long*)(pointer + _view.PointerOffset);
    }

    public long Ticks => Volatile.Read(ref Unsafe.AsRef<long>(_cell));

    public bool RaiseTo(long ticks) => ProcessModelledTime.Raise(ref Unsafe.AsRef<long>(_cell), ticks);

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _file.Dispose();
    }
}

/// <summary>
/// A clock that runs at the speed of real time plus every second of modelled work: now = real now + modelled
/// time. Simulated devices raise the modelled time by what their work would take (an operation that began when
/// the job had modelled T ends at T + its duration, however many ranks report it), so a schedule of days runs in
/// minutes while everything real — grain calls, failure detection, the coordinator's own work — still counts, and
/// <see cref="Modelled"/> keeps the two apart. Timers fire at their due time on this clock (real time passing, or
/// modelled time raised past it).
/// </summary>
public sealed class VirtualClock : TimeProvider, IDisposable
{
    /// <summary>How often pending timers are checked against modelled time raised by another process.</summary>
    private static readonly TimeSpan SweepEvery = TimeSpan.FromMilliseconds(10);

    private readonly TimeProvider _real;
    private readonly IModelledTime _modelled;
    private readonly PriorityQueue<VirtualTimer, long> _timers = new();
    private readonly Lock _lock = new();
    private readonly ITimer _sweeper;
    private bool _disposed;

    public VirtualClock(IModelledTime? modelled = null, TimeProvider? real = null)
    {
        _real = real ?? System;
        _modelled = modelled ?? new ProcessModelledTime();
        _sweeper = _real.CreateTimer(_ => Sweep(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>The work modelled so far (what this clock is ahead of real time).</summary>
    public TimeSpan Modelled => TimeSpan.FromTicks(_modelled.Ticks);

    public override DateTimeOffset GetUtcNow() => _real.GetUtcNow() + Modelled;

    public override long TimestampFrequency => _real.TimestampFrequency;

    public override long GetTimestamp() => _real.GetTimestamp() + (long)((double)_modelled.Ticks * _real.TimestampFrequency / TimeSpan.TicksPerSecond);

    /// <summary>Modelled work runs at least until <paramref name="modelled"/> has been modelled in all.</summary>
    public void ModelUntil(TimeSpan modelled)
    {
        if (_modelled.RaiseTo(modelled.Ticks) && Volatile.Read(ref _pending) > 0)
            Sweep();
    }

    /// <summary>Timers queued (some may have been changed since): modelling need not look at them when there are none.</summary>
    private int _pending;

    /// <summary>When the earliest pending timer is due, or null when none is.</summary>
    public DateTimeOffset? NextDue
    {
        get
        {
            lock (_lock)
                return _timers.TryPeek(out _, out var due) ? new DateTimeOffset(due, TimeSpan.Zero) : null;
        }
    }

    /// <summary>
    /// Nothing but modelled work is pending: model up to the earliest timer's due time (an idle wait for a modelled
    /// write, say, takes no real time). False when no timer is pending.
    /// </summary>
    public bool SkipToNextDue()
    {
        if (NextDue is not { } due)
            return false;
        ModelUntil(Modelled + (due - GetUtcNow()));
        return true;
    }

    /// <summary>A task that completes when this clock reaches <paramref name="due"/>.</summary>
    public Task WhenReached(DateTimeOffset due, CancellationToken cancellation = default)
    {
        var wait = due - GetUtcNow();
        return wait <= TimeSpan.Zero ? Task.CompletedTask : Task.Delay(wait, this, cancellation);
    }

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new VirtualTimer(this, callback, state);
        timer.Change(dueTime, period);
        return timer;
    }

    private void Schedule(VirtualTimer timer, long due)
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            timer.Due = due;
            _timers.Enqueue(timer, due);
            _pending = _timers.Count;
        }
        Sweep();
    }

    /// <summary>Fires every timer that is due, then waits (in real time) for the next one, or checks again soon.</summary>
    private void Sweep()
    {
        var now = GetUtcNow().UtcTicks;
        var fire = new List<VirtualTimer>();
        TimeSpan? next = null;
        lock (_lock)
        {
            if (_disposed)
                return;
            while (_timers.TryPeek(out var timer, out var due))
            {
                if (timer.Due != due)
                {
                    _timers.Dequeue(); // changed or disposed since it was queued
                    continue;
                }
                if (due > now)
                {
                    var wait = TimeSpan.FromTicks(due - now);
                    next = wait < SweepEvery ? wait : SweepEvery;
                    break;
                }
                _timers.Dequeue();
                timer.Due = long.MinValue;
                fire.Add(timer);
            }
            _pending = _timers.Count;
            _sweeper.Change(next ?? Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }
        foreach (var timer in fire)
            ThreadPool.UnsafeQueueUserWorkItem(t => t.Fire(), timer, preferLocal: false);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            _timers.Clear();
        }
        _sweeper.Dispose();
    }

    /// <summary>A timer on the virtual clock; <see cref="Due"/> is long.MinValue while it is not queued.</summary>
    private sealed class VirtualTimer(VirtualClock clock, TimerCallback callback, object? state) : ITimer
    {
        private TimeSpan _period = Timeout.InfiniteTimeSpan;

        public long Due { get; set; } = long.MinValue;

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            lock (clock._lock)
                Due = long.MinValue;
            _period = period;
            if (dueTime == Timeout.InfiniteTimeSpan)
                return true;
            clock.Schedule(this, clock.GetUtcNow().UtcTicks + Math.Max(0, dueTime.Ticks));
            return true;
        }

        public void Fire()
        {
            callback(state);
            if (_period != Timeout.InfiniteTimeSpan && _period > TimeSpan.Zero)
                clock.Schedule(this, clock.GetUtcNow().UtcTicks + _period.Ticks);
        }

        public void Dispose()
        {
            lock (clock._lock)
                Due = long.MinValue;
            _period = Timeout.InfiniteTimeSpan;
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
