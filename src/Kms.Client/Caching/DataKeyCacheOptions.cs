namespace Kms.Client.Caching;

/// <summary>
/// Limits of an envelope encryptor's data-key cache. Reusing a data key for several messages
/// saves a KMS call per message; the limits bound how much one data key protects and for how long.
/// </summary>
/// <remarks>
/// A cached key keeps working after the KMS would refuse it (key disabled, grant revoked)
/// until it leaves the cache: <see cref="MaxAge"/> and <see cref="DecryptionMaxAge"/> are that
/// delay. Decryption is cached only if <see cref="DecryptionMaxAge"/> is set (it is off by
/// default): a cached unwrap keeps a disabled or destroyed key's messages readable, and its
/// reads leave no Decrypt in the KMS audit log. Per-message keys are derived from a random
/// 256-bit message id, so reusing a data key never reuses a GCM key and IV; the message limit
/// stays far below 2³² anyway.
/// </remarks>
public sealed class DataKeyCacheOptions
{
    /// <summary>Most messages per data key: 2³².</summary>
    public const long MessageLimit = 1L << 32;

    /// <summary>How long a data key is used for encryption after the KMS made it (required: 1 second to 1 day).</summary>
    /// <remarks>
    /// Ages (this and <see cref="DecryptionMaxAge"/>) are read on both of <see cref="TimeProvider"/>'s
    /// clocks, and a key is too old when either says so: a wall clock set back makes no key younger
    /// (the monotonic clock still counts), nor does time the monotonic clock missed while the machine
    /// was suspended or a VM snapshot was restored (the wall clock counts it).
    /// </remarks>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>Messages encrypted under one data key (1 to <see cref="MessageLimit"/>).</summary>
    public long MaxMessagesPerKey { get; set; } = 100_000;

    /// <summary>Plaintext bytes encrypted under one data key. A message larger than this gets a data key of its own.</summary>
    public long MaxBytesPerKey { get; set; } = 64L << 30;

    /// <summary>Entries kept, per direction (encryption and decryption).</summary>
    public int Capacity { get; set; } = 1000;

    /// <summary>
    /// How long an unwrapped data key is kept for decryption (1 second to 1 day); zero (the
    /// default): decryption is not cached, every message's data key is unwrapped by the KMS.
    /// </summary>
    /// <remarks>
    /// An opt-in of its own: for this long after the KMS would refuse it (key disabled, version
    /// destroyed — crypto-shredding —, grant revoked) a cached data key still decrypts, and those
    /// reads make no KMS call, so the KMS audit log does not show them.
    /// </remarks>
    public TimeSpan DecryptionMaxAge { get; set; }

    /// <summary>The clocks of the age limits: its wall clock (<see cref="TimeProvider.GetUtcNow"/>) and its monotonic one (<see cref="TimeProvider.GetTimestamp"/>).</summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    internal void Validate()
    {
        if (MaxAge < TimeSpan.FromSeconds(1) || MaxAge > TimeSpan.FromDays(1))
        {
            throw new ArgumentOutOfRangeException(nameof(MaxAge), MaxAge, "a cached data key needs a maximum age from 1 second to 1 day");
        }

        if (MaxMessagesPerKey is < 1 or > MessageLimit)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxMessagesPerKey), MaxMessagesPerKey, $"messages per data key must be 1 to {MessageLimit}");
        }

        if (MaxBytesPerKey < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxBytesPerKey), MaxBytesPerKey, "bytes per data key must be at least 1");
        }

        if (Capacity < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(Capacity), Capacity, "the cache needs room for at least one entry");
        }

        if (DecryptionMaxAge != TimeSpan.Zero && (DecryptionMaxAge < TimeSpan.FromSeconds(1) || DecryptionMaxAge > TimeSpan.FromDays(1)))
        {
            throw new ArgumentOutOfRangeException(nameof(DecryptionMaxAge), DecryptionMaxAge, "the decryption age limit is zero (no caching) or from 1 second to 1 day");
        }

        ArgumentNullException.ThrowIfNull(TimeProvider);
    }
}

/// <summary>Counts of cache lookups since the encryptor was created.</summary>
/// <param name="EncryptHits">Encryptions served by a cached data key.</param>
/// <param name="EncryptMisses">Encryptions that made a KMS call (one per data key made).</param>
/// <param name="DecryptHits">Decryptions served by a cached data key.</param>
/// <param name="DecryptMisses">Decryptions that made a KMS call.</param>
/// <param name="Coalesced">Lookups that waited for another caller's KMS call instead of making their own.</param>
public sealed record DataKeyCacheStatistics(long EncryptHits, long EncryptMisses, long DecryptHits, long DecryptMisses, long Coalesced);
