using Kms.Core.Errors;
using Net.Pkcs11Interop.Common;

namespace Kms.Hsm;

/// <summary>
/// Planned re-initialisation. SoftHSM keeps about 250 bytes of every destroyed session object
/// until <c>C_Finalize</c> (HSM-NOTES; <c>bench hsm-churn</c>), and a handle cache under skewed
/// traffic destroys an evicted copy for every miss: left alone, native memory grows without end.
/// After <see cref="HsmProfile.RecycleAfterDestroyedObjects"/> destroyed objects the adapter
/// re-initialises the module the way it recovers from a lost device, but without failing anyone.
/// </summary>
/// <remarks>
/// Being planned, it first waits while long operations (RSA generations, bounded by
/// <see cref="HsmOptions.KeyGenerationTimeout"/>) run on the current generation: every other call is
/// served on it meanwhile, and a new long operation waits for the recycle (within its waits'
/// <see cref="HsmOptions.CallTimeout"/>) and runs on the next generation, so none can hold the recycle
/// off for good. A fault meanwhile is not deferred: the recovery takes over and the recycle is dropped.
/// Then the current generation is retired: new callers wait for the recycle (as for a recovery, up to
/// <see cref="HsmOptions.CallTimeout"/>); calls that hold one of its sessions finish on it, whether
/// their native call has begun or not (the drain waits for their leases); a caller that was still
/// queued for a session when the drain finished finds the generation retired and closed under the
/// module gate and starts again on the next generation, its operation not having begun, within
/// what is left of its own <see cref="HsmOptions.CallTimeout"/> (as after a recovery; with none
/// left — held at the module gate behind a re-initialisation — it is answered UNAVAILABLE). Then <c>C_Finalize</c>, <c>C_Initialize</c>, a fresh session pool, the domain key
/// found and its check value compared, an empty handle cache. Other adapters on the module (the
/// regions) see a new module generation and reopen on their next call, also without failing it.
/// </remarks>
public sealed partial class Pkcs11Hsm
{
    private int _recycling;

    /// <summary>Re-initialisations done to give back destroyed objects (tests, benchmarks).</summary>
    internal int Recycles => Volatile.Read(ref _recycles);

    private int _recycles;

    /// <summary>C heap trims after a recycle (tests).</summary>
    internal int HeapTrims => Volatile.Read(ref _heapTrims);

    private int _heapTrims;

    /// <summary>A recycle is under way (tests).</summary>
    internal bool Recycling => Volatile.Read(ref _recycling) == 1;

    private int _deferredRecycles;

    /// <summary>Recycles that waited for long operations before retiring the generation (tests).</summary>
    internal int DeferredRecycles => Volatile.Read(ref _deferredRecycles);

    private int _longOperationsWaiting;

    /// <summary>Long operations (RSA generations) waiting for a pending recycle before they start (tests).</summary>
    internal int LongOperationsWaitingForRecycle => Volatile.Read(ref _longOperationsWaiting);

    private long RecycleThreshold => _options.RecycleAfterDestroyedObjects ?? _profile.RecycleAfterDestroyedObjects;

    /// <summary>Calls that found their generation retired and closed (or the module re-initialised) before their first native call, and started again (tests).</summary>
    internal int StaleRestarts => Volatile.Read(ref _staleRestarts);

    private int _staleRestarts;

    /// <summary>The current generation is retired and its recycle is draining it (tests).</summary>
    internal bool Retiring => _state is { Retired: true };

    // Called after each successful C_DestroyObject of a session object (under the module gate:
    // the recycle itself runs elsewhere, after the gate is released).
    private void CountDestroyed()
    {
        var destroyed = _module.CountDestroyed();
        var threshold = RecycleThreshold;
        if (threshold > 0 && destroyed >= threshold)
        {
            _ = TryStartRecycle();
        }
    }

    /// <summary>Starts a recycle unless one is under way (the threshold's path; tests call it directly).</summary>
    internal bool TryStartRecycle()
    {
        if (Interlocked.CompareExchange(ref _recycling, 1, 0) != 0)
        {
            return false;
        }

        _ = Task.Run(RecycleAsync);
        return true;
    }

    private async Task RecycleAsync()
    {
        var recycled = false;
        SlotState? pending = null;
        try
        {
            // Planned, so it may wait: while a long operation (an RSA generation, seconds, up to
            // Hsm:KeyGenerationTimeout) holds one of the generation's sessions, retiring it would have
            // every new caller wait for the drain, which waits for that operation — up to
            // Hsm:CallTimeout, then UNAVAILABLE. Instead the generation keeps serving, and no new long
            // operation starts on it (each waits for the recycle); once none is left, or the
            // generation faults (the recovery is never deferred), the recycle goes on.
            if (Volatile.Read(ref _disposed) == 1 || _state is not { Faulted: false } observed || observed.ModuleGeneration != _module.Generation)
            {
                return; // shutting down, or a recovery (which re-initialises if it must) is under way
            }

            pending = observed;
            var (inFlight, drained) = observed.BeginRecycle();
            if (inFlight > 0)
            {
                Interlocked.Increment(ref _deferredRecycles);
                Log.RecycleDeferred(_logger, inFlight, observed.Cache.Generation);
                await drained.ConfigureAwait(false);
            }

            await _recovery.WaitAsync().ConfigureAwait(false);
            try
            {
                if (Volatile.Read(ref _disposed) == 1 || !ReferenceEquals(_state, observed) || observed.Faulted || observed.ModuleGeneration != _module.Generation)
                {
                    // A fault while it waited: the recovery replaced (or will replace) the generation.
                    // The destroyed objects are still counted: the next one starts a recycle again.
                    if (inFlight > 0)
                    {
                        Log.RecycleDropped(_logger, observed.Cache.Generation);
                    }

                    return;
                }

                var current = observed;
                var destroyed = _module.DestroyedObjects;
                current.Retired = true;
                current.Faulted = true;

                // Long operations that waited for the recycle now wait for it as every caller does.
                current.EndRecycle();
                if (!await CloseAsync(current).ConfigureAwait(false))
                {
                    // A call did not come back in the drain time: a hung HSM, whose recovery is the
                    // fault path's business. The generation stays faulted, so the next caller recovers.
                    return;
                }

                _state = null;
                _module.Reinitialize(current.ModuleGeneration);
                var fresh = SameDomainKey(OpenSlot(), "re-initialising");

                _state = fresh;
                recycled = true;
                Interlocked.Increment(ref _recycles);
                Log.Recycled(_logger, destroyed, _profile.Name, fresh.Cache.Generation, fresh.ModuleGeneration);
            }
            finally
            {
                _recovery.Release();
            }
        }
        catch (Exception e) when (e is Pkcs11Exception or HsmConfigurationException)
        {
            // Nothing is current: the next caller recovers as from a lost device, with its backoff.
            Log.RecoveryFailed(_logger, _options.RecoveryBackoff, e);
        }
        finally
        {
            pending?.EndRecycle();

            // What C_Finalize freed stays resident in the C heap's free lists until trimmed: trimmed
            // here, once per recycle, after callers are served again (the trim takes milliseconds).
            if (recycled && _options.TrimNativeHeapAfterRecycle)
            {
                NativeHeap.Trim();
                Interlocked.Increment(ref _heapTrims);
            }

            Volatile.Write(ref _recycling, 0);
        }
    }

    // A long operation about to start on `state`: counted there (the returned registration ends the
    // count), unless a recycle of that generation is pending. Then it waits for the recycle — within
    // `wait`, what is left of its waits' Hsm:CallTimeout, so its bound stays CallTimeout +
    // KeyGenerationTimeout — and starts again on the next generation (StaleGenerationException), its
    // operation not having begun: started on the old one, it would hold the recycle off again.
    private async ValueTask<LongOperation> BeginLongAsync(SlotState state, TimeSpan wait, CancellationToken cancellationToken)
    {
        if (state.TryBeginLong() is not { } pending)
        {
            return new LongOperation(state);
        }

        Interlocked.Increment(ref _longOperationsWaiting);
        try
        {
            await pending.WaitAsync(wait, _time, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        finally
        {
            Interlocked.Decrement(ref _longOperationsWaiting);
        }

        cancellationToken.ThrowIfCancellationRequested();
        return pending.IsCompleted
            ? throw new StaleGenerationException()
            : throw KmsErrors.Unavailable("the HSM is being re-initialised; retry shortly");
    }

    /// <summary>A long operation counted on its generation until disposed (default: none counted).</summary>
    private readonly struct LongOperation(SlotState? state) : IDisposable
    {
        public void Dispose() => state?.EndLong();
    }

    /// <summary>
    /// Thrown under the module gate before an operation's first native call, when the generation
    /// it was given has been retired or the module re-initialised by another of its users: the
    /// operation has not begun and is started again on the current generation.
    /// </summary>
    private sealed class StaleGenerationException : Exception
    {
    }
}
