namespace Kms.Server.Hosting;

/// <summary>The host's log catalog (the gRPC layer's is in ErrorInterceptor, the HSM's in Kms.Hsm).</summary>
internal static partial class ServerLog
{
    [LoggerMessage(EventId = 1100, Level = LogLevel.Information, Message = "Kms listening on {Address} (gRPC over TLS 1.3)")]
    public static partial void Listening(ILogger logger, Uri address);

    [LoggerMessage(EventId = 1314, Level = LogLevel.Warning, Message = "credentials from {Address} refused unchecked (RESOURCE_EXHAUSTED): that address had {Bound} failed authentications in the last minute (Kms:MaxFailedAuthenticationsPerClientAddress); {Count} such calls since the last such message")]
    public static partial void FailedAuthenticationsBounded(ILogger logger, string address, int bound, long count);

    [LoggerMessage(EventId = 1113, Level = LogLevel.Warning, Message = "TLS certificate {Path} could not be reloaded ({Reason}); still serving the previous one")]
    public static partial void TlsCertificateNotReloaded(ILogger logger, string path, string reason);

    [LoggerMessage(EventId = 1120, Level = LogLevel.Information, Message = "Kms serving Prometheus metrics at {Address} (plain HTTP/1.1, no credential)")]
    public static partial void MetricsListening(ILogger logger, Uri address);

    [LoggerMessage(EventId = 1130, Level = LogLevel.Information, Message = "quorum: officer set {Sequence} ({Hash}), {Threshold} of {Officers} officers, verified back to the genesis in {GenesisFile}")]
    public static partial void QuorumReady(ILogger logger, long sequence, string hash, int threshold, int officers, string genesisFile);

    [LoggerMessage(EventId = 1131, Level = LogLevel.Information, Message = "quorum: no officer genesis configured (Kms:Quorum:GenesisFile); quorum operations are refused")]
    public static partial void QuorumNotConfigured(ILogger logger);

    [LoggerMessage(EventId = 1132, Level = LogLevel.Error, Message = "quorum: {Reason}")]
    public static partial void QuorumChainBroken(ILogger logger, string reason);

    [LoggerMessage(EventId = 1134, Level = LogLevel.Warning, Message = "quorum: the officer genesis {Hash} in {GenesisFile} has no value of this deployment's own (written by a ceremony before genesis sets had one): every deployment whose ceremony named the same officers and threshold pinned the same genesis, so an officer change approved for one of them verifies in the others (docs/quorum.md, \"The chain and the pinned genesis\")")]
    public static partial void QuorumGenesisShared(ILogger logger, string hash, string genesisFile);

    [LoggerMessage(EventId = 1133, Level = LogLevel.Error, Message = "quorum: the officer head record {Path} {What} ({Error}); quorum operations are refused")]
    public static partial void OfficerHeadRecordFailed(ILogger logger, string path, string what, string error);

    [LoggerMessage(EventId = 1320, Level = LogLevel.Warning, Message = "stopping: a stop was asked for (SIGTERM, SIGINT or SIGQUIT) while the server was starting; it stops without having served")]
    public static partial void StoppedWhileStarting(ILogger logger);

    [LoggerMessage(EventId = 1329, Level = LogLevel.Error, Message = "start refused or stopped: closing what the start had opened failed too ({ExceptionType}); the refusal stands as the process's error")]
    public static partial void StartCloseFailed(ILogger logger, string exceptionType);
}
