using Microsoft.Extensions.Logging;

namespace Kms.Client.Failover;

/// <summary>The client's log events (ids 3001–3099, catalogued in docs/observability.md). Addresses and status codes only: never request data.</summary>
internal static partial class ClientLog
{
    [LoggerMessage(EventId = 3001, Level = LogLevel.Warning, Message = "KMS endpoint {Endpoint} marked down after {Method} failed UNAVAILABLE: {Detail}")]
    public static partial void EndpointDown(ILogger logger, Uri endpoint, string method, string detail);

    [LoggerMessage(EventId = 3002, Level = LogLevel.Information, Message = "KMS endpoint {Endpoint} is back ({Evidence})")]
    public static partial void EndpointUp(ILogger logger, Uri endpoint, string evidence);

    [LoggerMessage(EventId = 3003, Level = LogLevel.Debug, Message = "{Method} attempt {Attempt} on {Endpoint} after {Delay} (previous attempt UNAVAILABLE, not sent for want of a place, or refused RESOURCE_EXHAUSTED with a retry delay)")]
    public static partial void Retrying(ILogger logger, string method, int attempt, Uri endpoint, TimeSpan delay);

    [LoggerMessage(EventId = 3004, Level = LogLevel.Debug, Message = "{Method} refused by {Endpoint}: the key's residency is {Region}, which that node is not in; trying another node")]
    public static partial void ResidencyElsewhere(ILogger logger, string method, Uri endpoint, string region);

    [LoggerMessage(EventId = 3005, Level = LogLevel.Warning, Message = "{Method}: {Count} attempts not sent since the last such message, {MaxCalls} calls being on the wire to {Endpoint} (MaxConcurrentCalls); each goes to another endpoint with room or is retried after a backoff while its attempts last")]
    public static partial void CallsShed(ILogger logger, string method, long count, int maxCalls, Uri endpoint);

    [LoggerMessage(EventId = 3006, Level = LogLevel.Warning, Message = "{Count} attempts shed by full KMS nodes since the last such message (none of them run; the last: {Method} on {Endpoint}, {Reason}); each goes to another endpoint believed up or is retried after a backoff while its attempts last, and the nodes stay in the rotation")]
    public static partial void ShedByServer(ILogger logger, string method, long count, Uri endpoint, string reason);

    [LoggerMessage(EventId = 3007, Level = LogLevel.Warning, Message = "An envelope encrypting stream was disposed without Complete after {Bytes} plaintext bytes: the message it wrote has no final frame and every reader will refuse it. A wrapper (StreamWriter, GZipStream, …) that disposes the stream it wraps needs leaveOpen: true, then call CompleteAsync; a caller giving the message up on purpose calls Abandon first")]
    public static partial void EncryptingStreamNotCompleted(ILogger logger, long bytes);
}
