namespace Kms.Client;

/// <summary>
/// How a call that failed UNAVAILABLE is sent again: at once to another endpoint believed
/// healthy; otherwise after a wait drawn uniformly from [0, min(<see cref="MaxBackoff"/>,
/// <see cref="BaseBackoff"/> · 2^(n-1))) before the n-th such wait ("full jitter"). And how one
/// refused RESOURCE_EXHAUSTED with a retry delay is (<see cref="MaxRetryInfoDelay"/>).
/// </summary>
public sealed class KmsRetryOptions
{
    /// <summary>Most attempts accepted.</summary>
    public const int MostAttempts = 10;

    /// <summary>Attempts per call, the first included: 1 (never retry) to <see cref="MostAttempts"/>.</summary>
    public int MaxAttempts { get; set; } = 5;

    /// <summary>Ceiling of the first backoff.</summary>
    public TimeSpan BaseBackoff { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Largest ceiling of a backoff; at least <see cref="BaseBackoff"/>.</summary>
    public TimeSpan MaxBackoff { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>Longest <see cref="MaxRetryInfoDelay"/> accepted.</summary>
    public static readonly TimeSpan MostRetryInfoDelay = TimeSpan.FromMinutes(5);

    /// <summary>
    /// The longest delay a RESOURCE_EXHAUSTED's <c>google.rpc.RetryInfo</c> may ask for (a used-up
    /// tenant quota or call rate, a client address past its failed authentications) and still be
    /// waited out: the call is sent again to the same endpoint after that delay plus up to a quarter
    /// of it (jitter), never past this, the call's deadline or its cancellation, while attempts remain
    /// (<see cref="MaxAttempts"/>) — any unary call, a once-only one included (the server refused it
    /// before any of it ran), and a server stream whose repeat is harmless. A longer delay, or a
    /// RESOURCE_EXHAUSTED without RetryInfo, is returned at once. Zero: never retried. At most
    /// <see cref="MostRetryInfoDelay"/>.
    /// </summary>
    public TimeSpan MaxRetryInfoDelay { get; set; } = TimeSpan.FromSeconds(5);

    internal void Validate(string paramName)
    {
        if (MaxRetryInfoDelay < TimeSpan.Zero || MaxRetryInfoDelay > MostRetryInfoDelay)
        {
            throw KmsClientOptions.Invalid($"Retry.MaxRetryInfoDelay must be from zero to {MostRetryInfoDelay}; it is {MaxRetryInfoDelay}", paramName);
        }

        if (MaxAttempts is < 1 or > MostAttempts)
        {
            throw KmsClientOptions.Invalid($"Retry.MaxAttempts must be from 1 to {MostAttempts}; it is {MaxAttempts}", paramName);
        }

        if (BaseBackoff <= TimeSpan.Zero)
        {
            throw KmsClientOptions.Invalid($"Retry.BaseBackoff must be positive; it is {BaseBackoff}", paramName);
        }

        if (MaxBackoff < BaseBackoff)
        {
            throw KmsClientOptions.Invalid($"Retry.MaxBackoff ({MaxBackoff}) must be at least Retry.BaseBackoff ({BaseBackoff})", paramName);
        }
    }
}
