namespace Kms.Core;

/// <summary>
/// Counts something that can happen thousands of times a second (a shed call, on the server or
/// in the client SDK) and says when to log it: at most once a second, with the count since the
/// last time.
/// </summary>
/// <param name="time">The clock the second is measured on; the system's when null.</param>
public sealed class LogThrottle(TimeProvider? time = null)
{
    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private long _sinceLog;
    private long _lastLog;

    /// <summary>Counts one; the count to log when a second has passed since the last log, else 0.</summary>
    public long Count()
    {
        var count = Interlocked.Increment(ref _sinceLog);
        var now = _time.GetTimestamp() / (_time.TimestampFrequency / 1000); // in milliseconds
        var last = Interlocked.Read(ref _lastLog);
        if (now - last >= 1000 && Interlocked.CompareExchange(ref _lastLog, now, last) == last)
        {
            Interlocked.Add(ref _sinceLog, -count);
            return count;
        }

        return 0;
    }
}
