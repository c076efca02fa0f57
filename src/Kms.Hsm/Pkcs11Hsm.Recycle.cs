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
/// The current generation is retired: new callers wait for the recycle (as for a recovery, up to
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
        try
        {
            await _recovery.WaitAsync().ConfigureAwait(false);
            try
            {
                if (Volatile.Read(ref _disposed) == 1 || _state is not { Faulted: false } current || current.ModuleGeneration != _module.Generation)
                {
                    return; // shutting down, or a recovery (which re-initialises if it must) is under way
                }

                var destroyed = _module.DestroyedObjects;
                current.Retired = true;
                current.Faulted = true;
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

    /// <summary>
    /// Thrown under the module gate before an operation's first native call, when the generation
    /// it was given has been retired or the module re-initialised by another of its users: the
    /// operation has not begun and is started again on the current generation.
    /// </summary>
    private sealed class StaleGenerationException : Exception
    {
    }
}
