using System.Collections.Concurrent;

namespace FlmCluster.Training.Engine;

/// <summary>Where one rank's work runs, one item at a time.</summary>
public interface IRankThread : IDisposable
{
    Task<T> Run<T>(Func<T> work);

    Task Run(Action work) => Run(() =>
    {
        work();
        return true;
    });
}

/// <summary>Runs a rank's work on the caller's thread: for ranks whose work is only modelled (simulated devices), never blocking.</summary>
public sealed class InlineThread : IRankThread
{
    public Task<T> Run<T>(Func<T> work)
    {
        try
        {
            return Task.FromResult(work());
        }
        catch (Exception ex)
        {
            return Task.FromException<T>(ex);
        }
    }

    public void Dispose()
    {
    }
}

/// <summary>
/// A dedicated thread that runs one rank's compute, one work item at a time. Compute never runs on a
/// caller's (or Orleans') scheduler; collectives may block this thread while peers catch up.
/// </summary>
public sealed class DeviceThread : IRankThread
{
    private readonly BlockingCollection<Action> _work = new();
    private readonly Thread _thread;

    public string Name { get; }

    public DeviceThread(string name)
    {
        Name = name;
        _thread = new Thread(Loop) { IsBackground = true, Name = name };
        _thread.Start();
    }

    public Task<T> Run<T>(Func<T> work)
    {
        var completion = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                completion.SetResult(work());
            }
            catch (Exception ex)
            {
                completion.SetException(ex);
            }
        });
        return completion.Task;
    }

    public Task Run(Action work) => Run(() =>
    {
        work();
        return true;
    });

    private void Loop()
    {
        foreach (var item in _work.GetConsumingEnumerable())
            item();
    }

    public void Dispose()
    {
        _work.CompleteAdding();
        if (Thread.CurrentThread != _thread)
            _thread.Join(TimeSpan.FromSeconds(30));
        _work.Dispose();
    }
}
