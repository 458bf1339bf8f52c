using System.Globalization;
using Orleans.Runtime;

namespace FlmCluster.Silo;

/// <summary>
/// The membership table of a cluster whose silos all live in this process (<see cref="LocalCluster"/>): Orleans'
/// membership protocol (probes, suspicion votes, I-am-alive) runs as usual over a table kept here, with the
/// versioned-row semantics every table has (a write with a stale row or table version is refused). Unlike
/// development clustering it has no primary silo, so any silo may die, as servers do.
/// </summary>
public sealed class InProcessMembershipTable : IMembershipTable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<SiloAddress, (MembershipEntry Entry, string ETag)> _rows = [];
    private TableVersion _version;
    private long _etags;

    public InProcessMembershipTable() => _version = new TableVersion(0, NextETag());

    public Task InitializeMembershipTable(bool tryInitTableVersion) => Task.CompletedTask;

    public Task DeleteMembershipTableEntries(string clusterId)
    {
        lock (_lock)
            _rows.Clear();
        return Task.CompletedTask;
    }

    public Task CleanupDefunctSiloEntries(DateTimeOffset beforeDate)
    {
        lock (_lock)
            foreach (var silo in _rows.Where(r => r.Value.Entry.Status != SiloStatus.Active && r.Value.Entry.EffectiveUpdateTime() < beforeDate).Select(r => r.Key).ToList())
                _rows.Remove(silo);
        return Task.CompletedTask;
    }

    public Task<MembershipTableData> ReadRow(SiloAddress key)
    {
        lock (_lock)
            return Task.FromResult(_rows.TryGetValue(key, out var row)
                ? new MembershipTableData(Tuple.Create(Copy(row.Entry), row.ETag), _version)
                : new MembershipTableData(_version));
    }

    public Task<MembershipTableData> ReadAll()
    {
        lock (_lock)
            return Task.FromResult(new MembershipTableData(_rows.Values.Select(r => Tuple.Create(Copy(r.Entry), r.ETag)).ToList(), _version));
    }

    public Task<bool> InsertRow(MembershipEntry entry, TableVersion tableVersion)
    {
        lock (_lock)
        {
            if (_rows.ContainsKey(entry.SiloAddress) || tableVersion.VersionEtag != _version.VersionEtag)
                return Task.FromResult(false);
            _rows[entry.SiloAddress] = (Copy(entry), NextETag());
            _version = new TableVersion(tableVersion.Version, NextETag());
            return Task.FromResult(true);
        }
    }

    public Task<bool> UpdateRow(MembershipEntry entry, string etag, TableVersion tableVersion)
    {
        lock (_lock)
        {
            if (!_rows.TryGetValue(entry.SiloAddress, out var row) || row.ETag != etag || tableVersion.VersionEtag != _version.VersionEtag)
                return Task.FromResult(false);
            _rows[entry.SiloAddress] = (Copy(entry), NextETag());
            _version = new TableVersion(tableVersion.Version, NextETag());
            return Task.FromResult(true);
        }
    }

    public Task UpdateIAmAlive(MembershipEntry entry)
    {
        lock (_lock)
            if (_rows.TryGetValue(entry.SiloAddress, out var row))
            {
                var updated = Copy(row.Entry);
                updated.IAmAliveTime = entry.IAmAliveTime;
                _rows[entry.SiloAddress] = (updated, NextETag());
            }
        return Task.CompletedTask;
    }

    private string NextETag() => (_etags++).ToString(CultureInfo.InvariantCulture);

    /// <summary>Silos change the entries they read: each gets its own.</summary>
    private static MembershipEntry Copy(MembershipEntry e) => new()
    {
        SiloAddress = e.SiloAddress,
        Status = e.Status,
        SuspectTimes = e.SuspectTimes?.Select(t => Tuple.Create(t.Item1, t.Item2)).ToList(),
        ProxyPort = e.ProxyPort,
        HostName = e.HostName,
        SiloName = e.SiloName,
        RoleName = e.RoleName,
        UpdateZone = e.UpdateZone,
        FaultZone = e.FaultZone,
        StartTime = e.StartTime,
        IAmAliveTime = e.IAmAliveTime,
    };
}

internal static class MembershipEntryTimes
{
    /// <summary>The entry's last sign of life: its start or its latest I-am-alive.</summary>
    public static DateTime EffectiveUpdateTime(this MembershipEntry e) => e.IAmAliveTime > e.StartTime ? e.IAmAliveTime : e.StartTime;
}
