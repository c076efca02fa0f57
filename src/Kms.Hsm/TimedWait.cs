namespace Kms.Hsm;

/// <summary>
/// <see cref="SemaphoreSlim.WaitAsync(TimeSpan, CancellationToken)"/> with its deadline kept by a
/// <see cref="TimeProvider"/> (the semaphore's own timer is the system clock's, which a test cannot move).
/// </summary>
internal static class TimedWait
{
    /// <summary>Takes a permit, waiting at most <paramref name="timeout"/> of <paramref name="time"/>'s clock (infinite: as long as it takes).</summary>
    /// <returns>False when the timeout passed first.</returns>
    /// <exception cref="OperationCanceledException">The caller's token was cancelled first.</exception>
    public static ValueTask<bool> WaitAsync(SemaphoreSlim semaphore, TimeSpan timeout, TimeProvider time, CancellationToken cancellationToken)
    {
        // No deadline (infinite, or none to wait), or a free permit: no timer, and no allocation,
        // exactly as the semaphore's own fast path.
        if (timeout == Timeout.InfiniteTimeSpan || timeout == TimeSpan.Zero || cancellationToken.IsCancellationRequested)
        {
            return new ValueTask<bool>(semaphore.WaitAsync(timeout, cancellationToken));
        }

        return semaphore.Wait(0, CancellationToken.None) ? new ValueTask<bool>(true) : WaitWithTimerAsync(semaphore, timeout, time, cancellationToken);
    }

    private static async ValueTask<bool> WaitWithTimerAsync(SemaphoreSlim semaphore, TimeSpan timeout, TimeProvider time, CancellationToken cancellationToken)
    {
        using var deadline = new CancellationTokenSource(timeout, time);
        using var caller = cancellationToken.UnsafeRegister(static state => ((CancellationTokenSource)state!).Cancel(), deadline);
        try
        {
            await semaphore.WaitAsync(deadline.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            // The caller's cancellation is the caller's (its token in the exception); the deadline's is a timeout.
            cancellationToken.ThrowIfCancellationRequested();
            return false;
        }
    }
}
