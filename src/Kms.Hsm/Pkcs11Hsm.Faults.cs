using System.Security.Cryptography;
using Kms.Core.Errors;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// A hung HSM answers nobody: with <see cref="HsmOptions.CallTimeout"/> set, no caller waits
/// for the HSM longer than that, and a call that does not return is abandoned, its session
/// with it, and the adapter recovers as from a lost device.
/// </summary>
/// <remarks>
/// A native call cannot be cancelled. An abandoned call keeps its thread and its session until
/// it returns; its session goes back to its own pool, whose generation is faulted, so it is
/// never used again, and nobody reads its result. At most <see cref="MaxAbandonedCalls"/> calls
/// are abandoned at once: past that, calls answer UNAVAILABLE without going near the HSM, so a
/// hung device cannot take every thread of the process.
/// </remarks>
public sealed partial class Pkcs11Hsm
{
    private int _abandonedCalls;

    /// <summary>Test hook: faults injected at this adapter's PKCS#11 boundary.</summary>
    internal HsmFaultInjector Faults { get; } = new();

    private int _zeroedLateResults;

    /// <summary>Calls abandoned past <see cref="HsmOptions.CallTimeout"/> that have not returned yet.</summary>
    internal int AbandonedCalls => Volatile.Read(ref _abandonedCalls);

    /// <summary>Test hook: a recovery (or recycle) holds the recovery lock right now.</summary>
    internal bool Recovering => _recovery.CurrentCount == 0;

    /// <summary>Results of abandoned calls that came back as bytes (plaintexts, random data) and were zeroed.</summary>
    internal int ZeroedLateResults => Volatile.Read(ref _zeroedLateResults);

    // One pool's worth: a generation's sessions are all the HSM can be stuck on at once.
    private int MaxAbandonedCalls => Math.Max(1, _options.SessionPoolSize);

    // RSA key generation takes seconds on a good day (about 6 s at 4096 bits on SoftHSM, 2 cores):
    // it gets its own, longer bound rather than being taken for a hung HSM.
    private ValueTask<T> RunSlowAsync<T>(string operation, Func<ISession, SlotState, T> body, CancellationToken cancellationToken) =>
        RunAsync(operation, body, _options.CallTimeout > TimeSpan.Zero ? _options.KeyGenerationTimeout : _options.CallTimeout, longOperation: true, cancellationToken);

    // The waits (a recovery in progress, then a free session) share one Hsm:CallTimeout from the
    // caller's `start` — kept when it starts again on a new generation (RunAsync), neither renewed
    // nor cut short, and a start again past it refused — and the native call has its own `timeout`,
    // so a caller answers within twice Hsm:CallTimeout at worst, whatever re-initialisations it
    // meets (RSA generation: CallTimeout + KeyGenerationTimeout). Only the
    // native call running past its bound counts as a hung HSM: waiting for a session is load, not
    // a fault. Every deadline here is kept by the adapter's TimeProvider (HsmCallBoundTests move a
    // fake one to the bound's edge).
    private async ValueTask<T> RunBoundedAsync<T>(string operation, Func<ISession, SlotState, T> body, TimeSpan timeout, bool longOperation, long start, CancellationToken cancellationToken)
    {
        if (AbandonedCalls >= MaxAbandonedCalls)
        {
            throw KmsErrors.Unavailable("the HSM is not answering; retry shortly");
        }

        // Never negative: -1 ms would read as "infinite".
        var wait = Left(_options.CallTimeout, start);
        var state = await HealthyStateAsync(wait, cancellationToken).ConfigureAwait(false);

        // Counted until it is answered, abandoned or not: an abandoned one faulted its generation,
        // and a pending recycle of that gives way to the recovery anyway.
        using var counted = longOperation ? await BeginLongAsync(state, Left(_options.CallTimeout, start), cancellationToken).ConfigureAwait(false) : default;
        var lease = await state.Pool.AcquireAsync(Left(_options.CallTimeout, start), cancellationToken).ConfigureAwait(false);
        var call = Task.Run(() => Invoke(operation, state, lease.Session, body), CancellationToken.None);
        await ((Task)call).WaitAsync(timeout, _time, CancellationToken.None).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (call.IsCompleted)
        {
            lease.Dispose();
            return await call.ConfigureAwait(false);
        }

        Abandon(operation, timeout, state, lease, call);
        throw KmsErrors.Unavailable("the HSM did not answer in time; retry shortly");
    }

    // What is left of `bound` since `start`, at least zero.
    private TimeSpan Left(TimeSpan bound, long start)
    {
        var left = bound - _time.GetElapsedTime(start);
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    private void Abandon<T>(string operation, TimeSpan timeout, SlotState state, SessionPool.SessionLease lease, Task<T> call)
    {
        state.Faulted = true;
        var abandoned = Interlocked.Increment(ref _abandonedCalls);
        Log.CallTimedOut(_logger, operation, timeout, abandoned);
        var since = _time.GetTimestamp();
        _ = call.ContinueWith(
            finished =>
            {
                _ = finished.Exception; // observed: nobody waits for this call any more

                // Nobody will read what it returns either: plaintexts and random bytes (a batch's
                // up to 100 of them) are zeroed now rather than left to the collector.
                if (finished.IsCompletedSuccessfully && ZeroLateResult(finished.Result))
                {
                    Interlocked.Increment(ref _zeroedLateResults);
                }

                // Counted back before the session is: its return is what the recovery's drain
                // waits for, and a caller served once that recovery is done must not find this
                // call still counted as abandoned.
                Interlocked.Decrement(ref _abandonedCalls);
                lease.Dispose();
                Log.AbandonedCallReturned(_logger, operation, _time.GetElapsedTime(since));
            },
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
    }

    // Every call of this adapter returns arrays of its own, fresh from the module (none is cached
    // or the caller's), so zeroing one that nobody waits for any more cannot touch shared state.
    private static bool ZeroLateResult(object? result)
    {
        switch (result)
        {
            case byte[] bytes:
                CryptographicOperations.ZeroMemory(bytes);
                return true;
            case Kms.Core.Ports.SealedDataKey dataKey:
                CryptographicOperations.ZeroMemory(dataKey.DataKey);
                return true;
            case byte[]?[] many:
                Kms.Core.Ports.IHsm.ZeroAll(many);
                return true;
            default:
                return false;
        }
    }

    // A recovery makes native calls (closing, opening, logging in) that a hung HSM never returns
    // from: it runs off the caller's thread, and the caller stops waiting after `wait` (the
    // recovery carries on, holding the recovery lock, and the next caller finds its result).
    private async ValueTask<SlotState> RecoverWithinAsync(SlotState? observed, TimeSpan wait, CancellationToken cancellationToken)
    {
        if (wait == Timeout.InfiniteTimeSpan)
        {
            return await RecoverAsync(observed, wait, cancellationToken).ConfigureAwait(false);
        }

        var recovery = Task.Run(() => RecoverAsync(observed, wait, CancellationToken.None).AsTask(), CancellationToken.None);
        await ((Task)recovery).WaitAsync(wait, _time, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        cancellationToken.ThrowIfCancellationRequested();
        if (recovery.IsCompleted)
        {
            return await recovery.ConfigureAwait(false);
        }

        _ = recovery.ContinueWith(static finished => _ = finished.Exception, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        throw KmsErrors.Unavailable("the HSM is recovering; retry shortly");
    }
}
