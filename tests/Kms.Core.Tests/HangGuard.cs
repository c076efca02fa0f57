namespace Kms.Core.Tests;

/// <summary>
/// How long a test waits for what another task does before calling it a hang: a guard against a
/// test that never ends, not a bound on how fast anything is (no timing thresholds in tests).
/// </summary>
internal static class HangGuard
{
    public static readonly TimeSpan Time = TimeSpan.FromSeconds(60);

    /// <summary>The wall-clock time a wait loop started now gives up at.</summary>
    public static DateTime Deadline() => DateTime.UtcNow + Time;

    /// <summary>Awaits <paramref name="task"/>; one not done within <see cref="Time"/> fails the test as a hang.</summary>
    public static async Task GuardAsync(this Task task, string what)
    {
        try
        {
            await task.WaitAsync(Time);
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"hang guard: {what}, not done within {Time.TotalSeconds} s", e);
        }
    }

    /// <summary>Awaits <paramref name="task"/>; one not done within <see cref="Time"/> fails the test as a hang.</summary>
    public static async Task<T> GuardAsync<T>(this Task<T> task, string what)
    {
        try
        {
            return await task.WaitAsync(Time);
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"hang guard: {what}, not done within {Time.TotalSeconds} s", e);
        }
    }
}
