using FlmCluster.Grains.Abstractions;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace FlmCluster.Grains.Scheduling;

/// <summary>
/// When membership declares a silo dead, has the scheduler wake every running job's coordinator at once. A
/// coordinator that lived on that silo is gone with it, and nothing else calls it: without this, the job would
/// stand still until a client asked for its status or its one-minute reminder fired. One silo acts for the
/// cluster — the active one with the lowest address in the snapshot that declares the death — so a death costs
/// one round of calls, not one per silo.
/// </summary>
internal sealed class DeadSiloWatch(IClusterMembershipService membership, ILocalSiloDetails local, IGrainFactory grains, ILogger<DeadSiloWatch> log)
    : ILifecycleParticipant<ISiloLifecycle>
{
    private readonly CancellationTokenSource _stop = new();
    private Task _watching = Task.CompletedTask;

    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(DeadSiloWatch), ServiceLifecycleStage.Active,
            _ =>
            {
                _watching = Task.Run(Watch);
                return Task.CompletedTask;
            },
            async _ =>
            {
                await _stop.CancelAsync();
                await _watching;
            });

    private async Task Watch()
    {
        var dead = membership.CurrentSnapshot.Members.Values.Where(m => m.Status == SiloStatus.Dead).Select(m => m.SiloAddress).ToHashSet();
        try
        {
            await foreach (var snapshot in membership.MembershipUpdates.WithCancellation(_stop.Token))
            {
                var declared = snapshot.Members.Values.Where(m => m.Status == SiloStatus.Dead && dead.Add(m.SiloAddress)).Select(m => m.SiloAddress).ToList();
                if (declared.Count == 0 || !ActsForCluster(snapshot))
                    continue;
                try
                {
                    await grains.GetGrain<IClusterSchedulerGrain>(Jobs.JobCoordinatorGrain.ClusterSchedulerKey).WakeJobs();
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    // The scheduler itself may be moving; the reminders still bring the jobs back.
                    log.LogWarning("Silo(s) {Dead} dead: could not wake the jobs' coordinators ({Message})", string.Join(", ", declared), ex.Message);
                }
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
    }

    private bool ActsForCluster(ClusterMembershipSnapshot snapshot) =>
        snapshot.Members.Values.Where(m => m.Status == SiloStatus.Active).Select(m => m.SiloAddress).Min() is { } first && first.Equals(local.SiloAddress);
}
