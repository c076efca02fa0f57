using System.Net;

namespace Kms.Server.Security;

/// <summary>
/// Bounds the credential checks that fail, per client IP address
/// (<see cref="Hosting.KmsServerOptions.MaxFailedAuthenticationsPerClientAddress"/>): a token bucket of
/// that many, refilled at that many a minute. Every check that is not answered from the credential
/// cache (an API token's database lookup, a JWT's or a client certificate's verification) takes one
/// before it runs and gives it back when the credential is accepted; an address whose bucket is empty
/// is refused before any check. So one address costs the server at most that many failed lookups or
/// verifications a minute, however many distinct bad credentials it sends, while the callers it has
/// already authenticated (answered from the cache) are served.
/// </summary>
/// <remarks>
/// Keyed by the whole address (IPv4-mapped IPv6 as IPv4), as the per-address connection bound is;
/// behind a load balancer or NAT every client is its address, and the bound is theirs together
/// (docs/deployment.md). The table holds at most <see cref="MaxAddresses"/> addresses: buckets that
/// have filled up again are dropped when it is full, and while it is still full a new address shares
/// one overflow bucket, so that many addresses neither grow the table nor each get a bucket of their own.
/// An access write (a token created, a principal enabled) empties the table: the failures counted were
/// judged against what just changed.
/// </remarks>
internal sealed class FailedAuthenticationLimit(int perMinute, TimeProvider clock)
{
    /// <summary>The most addresses with a bucket of their own.</summary>
    internal const int MaxAddresses = 10_000;

    private static readonly IPAddress Overflow = IPAddress.IPv6None;
    private readonly Dictionary<IPAddress, Bucket> _buckets = [];
    private long _pruned;

    /// <summary>The bound (checks that fail per address per minute).</summary>
    public int PerMinute => perMinute;

    /// <summary>
    /// Takes one check for <paramref name="address"/>; false (and how long until one is back) when the
    /// address has used up its failures. The address to give it back to (<see cref="Accepted"/>) is returned.
    /// </summary>
    public bool TryTake(IPAddress address, out IPAddress charged, out TimeSpan retryAfter)
    {
        address = address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
        retryAfter = TimeSpan.Zero;
        lock (_buckets)
        {
            var now = clock.GetTimestamp();
            if (!_buckets.TryGetValue(address, out var bucket))
            {
                // At most once a second: a full table of active addresses is not scanned for every new one.
                if (_buckets.Count >= MaxAddresses && (_pruned == 0 || clock.GetElapsedTime(_pruned, now) >= TimeSpan.FromSeconds(1)))
                {
                    _pruned = now;
                    Prune(now);
                }

                if (_buckets.Count >= MaxAddresses)
                {
                    address = Overflow;
                    bucket = _buckets.GetValueOrDefault(Overflow);
                }

                if (bucket is null)
                {
                    bucket = new Bucket(perMinute, now);
                    _buckets[address] = bucket;
                }
            }

            charged = address;
            Refill(bucket, now);
            if (bucket.Tokens >= 1)
            {
                bucket.Tokens--;
                return true;
            }

            retryAfter = TimeSpan.FromMilliseconds(Math.Ceiling((1 - bucket.Tokens) * 60_000 / perMinute));
            return false;
        }
    }

    /// <summary>Gives back the check taken for a credential that was accepted (or could not be checked).</summary>
    public void Accepted(IPAddress charged)
    {
        lock (_buckets)
        {
            if (_buckets.TryGetValue(charged, out var bucket))
            {
                bucket.Tokens = Math.Min(perMinute, bucket.Tokens + 1);
            }
        }
    }

    /// <summary>Forgets every address's failures.</summary>
    public void Reset()
    {
        lock (_buckets)
        {
            _buckets.Clear();
        }
    }

    /// <summary>Addresses with a bucket (tests).</summary>
    internal int Addresses
    {
        get
        {
            lock (_buckets)
            {
                return _buckets.Count;
            }
        }
    }

    private void Refill(Bucket bucket, long now)
    {
        bucket.Tokens = Math.Min(perMinute, bucket.Tokens + (clock.GetElapsedTime(bucket.Stamp, now).TotalMinutes * perMinute));
        bucket.Stamp = now;
    }

    // Drops the buckets that have filled up again: an address that failed nothing for a minute.
    private void Prune(long now)
    {
        foreach (var (address, bucket) in _buckets.ToList())
        {
            Refill(bucket, now);
            if (bucket.Tokens >= perMinute)
            {
                _buckets.Remove(address);
            }
        }
    }

    private sealed class Bucket(double tokens, long stamp)
    {
        public double Tokens { get; set; } = tokens;

        public long Stamp { get; set; } = stamp;
    }
}
