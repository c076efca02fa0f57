using Kms.Core.Services;

namespace Kms.Server.Overload;

/// <summary>
/// The request bytes the server holds for each tenant's calls whose message is still arriving or
/// was inflated (a caller of no tenant counts alone, by principal), bounded by
/// <c>Kms:MaxRequestBytesInFlightPerTenant</c>: a message is counted by the length its header
/// declares from the moment it is seen not to have arrived whole, and a compressed message by
/// the bytes it inflates to as they are produced, until its call ends.
/// </summary>
/// <remarks>
/// Kestrel counts a message examined by the framing check as read (its flow-control window
/// reopens), so a caller that sends most of a large message and then only Kestrel's minimum data
/// rate — an average since the body began — has the server hold it for hours. Before, one
/// low-privilege token could do that on every stream of every connection its address may open:
/// 64 connections × 100 streams × 5 MiB, 32 GiB. A compressed message arrives whole in a few
/// kilobytes (5 MiB of zeros gzip to 5 KiB) and is then inflated and held until its call ends:
/// before it was counted, the same token had the server hold 5 MiB for each.
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
        }

        return new Reservation(this, owner, bytes);
    }

    /// <summary>
    /// A reservation of nothing yet against the owner, that <see cref="Reservation.TryAdd"/> grows as
    /// bytes are produced (a compressed message as it is inflated); dispose to give them all back.
    /// </summary>
    public Reservation Start(string owner) => new(this, owner, 0);

    /// <summary>The bytes counted against an owner now (tests).</summary>
    internal long Held(string owner)
    {
        lock (_held)
        {
            return _held.GetValueOrDefault(owner);
        }
    }

    /// <summary>Bytes counted against one owner until disposed; it grows, never shrinks.</summary>
    internal sealed class Reservation(RequestBytesInFlight inFlight, string owner, long counted) : IDisposable
    {
        private long _bytes = counted;
        private bool _disposed;

        /// <summary>Counts <paramref name="bytes"/> more, or false (nothing counted) when that would pass the owner's bound or the reservation was given back.</summary>
        public bool TryAdd(long bytes)
        {
            lock (inFlight._held)
            {
                var held = inFlight._held.GetValueOrDefault(owner);
                if (_disposed || held + bytes > inFlight.PerTenant)
                {
                    return false;
                }

                inFlight._held[owner] = held + bytes;
                _bytes += bytes;
                return true;
            }
        }

        /// <summary>Gives back every byte counted.</summary>
        public void Dispose()
        {
            lock (inFlight._held)
            {
                if (_disposed)
                {
                    return;
                }

                _disposed = true;
                var held = inFlight._held.GetValueOrDefault(owner) - _bytes;
                if (held <= 0)
                {
                    inFlight._held.Remove(owner);
                }
                else
                {
                    inFlight._held[owner] = held;
                }
            }
        }
    }
}
