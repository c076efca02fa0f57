using System.Collections.Concurrent;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// A fixed set of sessions on one slot, opened together and kept open for the life of the
/// pool (SoftHSM drops every object handle when the last session closes). A PKCS#11
/// session is not thread-safe: a lease gives one caller exclusive use of one session.
/// </summary>
internal sealed class SessionPool : IDisposable
{
    private readonly ISession[] _sessions;
    private readonly ConcurrentStack<ISession> _free;
    private readonly SemaphoreSlim _available;
    private readonly TimeProvider _time;
    private int _inUse;
    private int _disposed;

    /// <param name="sessions">The pool's sessions, opened and logged in.</param>
    /// <param name="time">The clock of the waits' deadlines (default: the system's).</param>
    public SessionPool(ISession[] sessions, TimeProvider? time = null)
    {
        _sessions = sessions;
        _time = time ?? TimeProvider.System;
        _free = new ConcurrentStack<ISession>(sessions);
        _available = new SemaphoreSlim(sessions.Length, sessions.Length);
        HsmMetrics.Track(this);
    }

    public int Size => _sessions.Length;

    /// <summary>Sessions leased right now (a drain holds permits, not leases: it is not counted).</summary>
    public int InUse => Volatile.Read(ref _inUse);

    /// <summary>The sessions are closed: a lease taken after a drain holds a dead session.</summary>
    public bool Disposed => Volatile.Read(ref _disposed) == 1;

    /// <summary>Any session; used only while no lease can run concurrently (start-up).</summary>
    public ISession First => _sessions[0];

    public ValueTask<SessionLease> AcquireAsync(CancellationToken cancellationToken) =>
        AcquireAsync(Timeout.InfiniteTimeSpan, cancellationToken);

    /// <summary>Leases a session, waiting at most <paramref name="timeout"/> (infinite: as long as it takes) for one to be free.</summary>
    /// <exception cref="Kms.Core.Errors.KmsException">UNAVAILABLE: every session stayed busy (a hung HSM holds them).</exception>
    public async ValueTask<SessionLease> AcquireAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var start = _time.GetTimestamp();
        if (!await TimedWait.WaitAsync(_available, timeout, _time, cancellationToken).ConfigureAwait(false))
        {
            throw Kms.Core.Errors.KmsErrors.Unavailable("no HSM session became free in time; retry shortly");
        }

        HsmMetrics.SessionWait.Record(_time.GetElapsedTime(start).TotalSeconds);
        if (!_free.TryPop(out var session))
        {
            _available.Release();
            throw new InvalidOperationException("session pool accounting is broken");
        }

        Interlocked.Increment(ref _inUse);
        return new SessionLease(this, session);
    }

    /// <summary>
    /// Waits until every lease is returned and keeps them all, so sessions can be closed safely: at
    /// most <paramref name="timeout"/>, and no longer than <paramref name="cancellationToken"/> lets
    /// it (a stop's). With no time left, sessions already returned are still taken: a pool with no
    /// call in flight drains at once.
    /// </summary>
    /// <returns>False when a lease was still out at the end (the sessions taken are given back).</returns>
    public async Task<bool> DrainAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var start = _time.GetTimestamp();
        for (var taken = 0; taken < _sessions.Length; taken++)
        {
            var left = timeout - _time.GetElapsedTime(start);
            if (!await TakeAsync(left > TimeSpan.Zero ? left : TimeSpan.Zero, cancellationToken).ConfigureAwait(false))
            {
                if (taken > 0)
                {
                    _available.Release(taken);
                }

                return false;
            }
        }

        return true;
    }

    // One permit, waiting at most `timeout`; once that or the token has run out, only a free one.
    private async Task<bool> TakeAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (timeout == TimeSpan.Zero || cancellationToken.IsCancellationRequested)
        {
            return _available.Wait(0, CancellationToken.None);
        }

        try
        {
            return await TimedWait.WaitAsync(_available, timeout, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return _available.Wait(0, CancellationToken.None);
        }
    }

    /// <summary>
    /// After a successful drain and dispose: gives the permits back so that callers still
    /// waiting on this pool wake up (they find it closed and start again on the next generation,
    /// within what is left of their wait).
    /// </summary>
    public void ReleaseDrained() => _available.Release(_sessions.Length);

    /// <summary>Closes every session. Errors are ignored: the sessions may already be dead.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        HsmMetrics.Untrack(this);
        foreach (var session in _sessions)
        {
            try
            {
                session.Dispose();
            }
            catch (Net.Pkcs11Interop.Common.Pkcs11Exception)
            {
                // Closing a session of a lost device fails; there is nothing left to release.
            }
            catch (ObjectDisposedException)
            {
                // The library was finalised (re-initialised by another user of the module): its sessions died with it.
            }
        }
    }

    private void Return(ISession session)
    {
        Interlocked.Decrement(ref _inUse);
        _free.Push(session);
        _available.Release();
    }

    internal readonly struct SessionLease(SessionPool pool, ISession session) : IDisposable
    {
        public ISession Session { get; } = session;

        public void Dispose() => pool.Return(Session);
    }
}
