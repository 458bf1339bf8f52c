namespace FlmCluster.Grains.Jobs;

/// <summary>Unregistering a reminder that may never have been registered (a job that ended before it started).</summary>
internal static class ReminderExtensions
{
    public static async Task UnregisterReminderIfExists(this Grain grain, string name)
    {
        var reminder = await grain.GetReminder(name);
        if (reminder is not null)
            await grain.UnregisterReminder(reminder);
    }
}
