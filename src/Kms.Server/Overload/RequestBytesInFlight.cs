using Kms.Core.Services;

namespace Kms.Server.Overload;

/// <summary>
/// The request bytes the server holds for each tenant's calls whose message is still arriving
/// (a caller of no tenant counts alone, by principal), bounded by
/// <c>Kms:MaxRequestBytesInFlightPerTenant</c>: a message is counted by the length its header
/// declares from the moment it is seen not to have arrived whole, until its call ends.
/// </summary>
/// <remarks>
/// Kestrel counts a message examined by the framing check as read (its flow-control window
/// reopens), so a caller that sends most of a large message and then only Kestrel's minimum data
/// rate — an average since the body began — has the server hold it for hours. Before, one
/// low-privilege token could do that on every stream of every connection its address may open:
/// 64 connections × 100 streams × 5 MiB, 32 GiB.
/// </remarks>
internal sealed class RequestBytesInFlight(long perTenant)
{
    private readonly Dictionary<string, long> _held = new(StringComparer.Ordinal);

    /// <summary>The bound per tenant, in bytes.</summary>
    public long PerTenant => perTenant;

    /// <summary>Whom a caller's calls are counted against: its tenant, or itself when it has none (also the per-tenant bound on calls in flight, <c>Kms:MaxConcurrentCallsPerTenant</c>).</summary>
    public static string OwnerOf(Caller caller) =>
        caller.HomeTenant is { } tenant ? "t:" + tenant.Value : "p:" + caller.Principal;

    /// <summary>Counts <paramref name="bytes"/> against the owner, or null when that would pass the bound; dispose to give them back.</summary>
    public IDisposable? TryReserve(string owner, long bytes)
    {
        lock (_held)
        {
            var held = _held.GetValueOrDefault(owner);
            if (held + bytes > perTenant)
            {
                return null;
            }

            _held[owner] = held + bytes;
            return new Reservation(this, owner, bytes);
        }
    }

    /// <summary>The bytes counted against an owner now (tests).</summary>
    internal long Held(string owner)
    {
        lock (_held)
        {
            return _held.GetValueOrDefault(owner);
        }
    }

    private void Release(string owner, long bytes)
    {
        lock (_held)
        {
            if (_held.TryGetValue(owner, out var held))
            {
                if (held - bytes <= 0)
                {
                    _held.Remove(owner);
                }
                else
                {
                    _held[owner] = held - bytes;
                }
            }
        }
    }

    private sealed class Reservation(RequestBytesInFlight owner, string name, long bytes) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                owner.Release(name, bytes);
            }
        }
    }
}
