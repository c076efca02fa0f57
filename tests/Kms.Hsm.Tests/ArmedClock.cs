using System.Diagnostics;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Hsm.Tests;

/// <summary>
/// A <see cref="FakeTimeProvider"/> that counts the timers armed on it, so a test knows a caller
/// has set its deadline before it moves the clock (moved earlier, the clock would pass a deadline
/// that does not exist yet, and the caller's would start later).
/// </summary>
internal sealed class ArmedClock : FakeTimeProvider
{
    private int _armed;
    private Hold? _hold;

    /// <summary>Timers armed so far, for <see cref="WaitForTimerAsync"/>'s <c>after</c>.</summary>
    public int Armed => Volatile.Read(ref _armed);

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = base.CreateTimer(callback, state, dueTime, period);
        Interlocked.Increment(ref _armed);
        Interlocked.Exchange(ref _hold, null)?.Keep();
        return timer;
    }

    /// <summary>
    /// The next timer armed keeps the thread that arms it, once the timer is set, until
    /// <see cref="Hold.Release"/>: a caller whose deadline is set but who has not begun to wait yet
    /// (a semaphore's timed wait arms its timer first, then queues), for as long as the test needs.
    /// </summary>
    public Hold HoldNextTimer()
    {
        var hold = new Hold();
        Assert.Null(Interlocked.CompareExchange(ref _hold, hold, null));
        return hold;
    }

    internal sealed class Hold
    {
        private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _kept = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>Waits until a thread is kept here (60-s real-time hang guard).</summary>
        public async Task KeptAsync(string what)
        {
            if (await Task.WhenAny(_kept.Task, Task.Delay(TimeSpan.FromSeconds(60))) != _kept.Task)
            {
                Assert.Fail($"hang guard: {what} armed no timer in 60 s");
            }
        }

        public void Release() => _released.TrySetResult();

        internal void Keep()
        {
            _kept.TrySetResult();
            _released.Task.Wait();
        }
    }

    /// <summary>
    /// Waits until a timer was armed after the first <paramref name="after"/> (whatever its due
    /// time: when it fires is what the test asserts); a 60-s real-time hang guard fails the test
    /// instead of waiting forever.
    /// </summary>
    public async Task WaitForTimerAsync(int after, string what)
    {
        var guard = Stopwatch.StartNew();
        while (Armed <= after)
        {
            Assert.True(guard.Elapsed < TimeSpan.FromSeconds(60), $"hang guard: {what} armed no timer in 60 s");
            await Task.Delay(10);
        }
    }
}
