using Microsoft.Extensions.Logging;
using Net.Pkcs11Interop.Common;

namespace Kms.Hsm;

/// <summary>The HSM adapter's log catalog. Key version ids, labels and return values only: never PINs or bytes.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 2001, Level = LogLevel.Information, Message = "HSM ready: token '{TokenLabel}', profile {Profile}, {Sessions} sessions, domain key check value {CheckValue}, generation {Generation}")]
    public static partial void Ready(ILogger logger, string tokenLabel, string profile, int sessions, string checkValue, long generation);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Warning, Message = "Dev mode: created a domain key in token '{TokenLabel}' (check value {CheckValue}); it can never be split into custodian shares")]
    public static partial void DevDomainKeyCreated(ILogger logger, string tokenLabel, string checkValue);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Error, Message = "HSM lost during {Operation} ({ReturnValue}); answering UNAVAILABLE and recovering")]
    public static partial void DeviceLost(ILogger logger, string operation, CKR returnValue);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Warning, Message = "HSM recovered: new generation {Generation} (module generation {ModuleGeneration}); every cached key handle dropped")]
    public static partial void Recovered(ILogger logger, long generation, long moduleGeneration);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Error, Message = "HSM recovery failed; retrying after {Backoff}")]
    public static partial void RecoveryFailed(ILogger logger, TimeSpan backoff, Exception exception);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Critical, Message = "The HSM refused the PIN ({ReturnValue}); not retrying, a real HSM locks the token after a few failures")]
    public static partial void PinRefused(ILogger logger, CKR returnValue);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Warning, Message = "Cached handle of key version {KeyVersionId} is no longer valid; unwrapping again")]
    public static partial void HandleLost(ILogger logger, string keyVersionId);

    [LoggerMessage(EventId = 2008, Level = LogLevel.Warning, Message = "Could not destroy the session object of an evicted key version ({ReturnValue}); it dies with its session")]
    public static partial void DestroyFailed(ILogger logger, CKR returnValue);

    [LoggerMessage(EventId = 2009, Level = LogLevel.Warning, Message = "Sessions still busy after {Timeout} while recovering; leaving them open until their calls return")]
    public static partial void DrainTimedOut(ILogger logger, TimeSpan timeout);

    [LoggerMessage(EventId = 2011, Level = LogLevel.Information, Message = "The calls on handle generation {Generation}, left open by a recovery, returned; its sessions and key copies are closed")]
    public static partial void LateClosed(ILogger logger, long generation);

    [LoggerMessage(EventId = 2012, Level = LogLevel.Warning, Message = "The last user of the PKCS#11 module {ModulePath} stopped with {Inside} calls still inside it ({Abandoned} abandoned calls, {Recoveries} recoveries of this adapter still running): the module is left initialised, neither finalized under them nor waited for, and the next open in this process uses it")]
    public static partial void ModuleLeftLoaded(ILogger logger, string modulePath, int inside, int abandoned, int recoveries);

    [LoggerMessage(EventId = 2013, Level = LogLevel.Warning, Message = "Stopping: the HSM's calls in flight or its recovery still ran after {Waited} (the stop waits at most {DrainTimeout}; cut short by the host's stop time: {StopTimeRanOut}; {Recoveries} recoveries still running); their sessions are left open until the calls return")]
    public static partial void StopLeftCallsRunning(ILogger logger, TimeSpan waited, TimeSpan drainTimeout, bool stopTimeRanOut, int recoveries);

    [LoggerMessage(EventId = 2010, Level = LogLevel.Information, Message = "HSM module re-initialised after {Destroyed} destroyed session objects, which profile {Profile} keeps until C_Finalize; new generation {Generation} (module generation {ModuleGeneration}), every cached key handle dropped")]
    public static partial void Recycled(ILogger logger, long destroyed, string profile, long generation, long moduleGeneration);

    [LoggerMessage(EventId = 2015, Level = LogLevel.Information, Message = "HSM module re-initialisation deferred behind {LongOperations} long operations (RSA key generation) on generation {Generation}: calls are served on it meanwhile, new long operations wait for the re-initialisation, which follows once these end")]
    public static partial void RecycleDeferred(ILogger logger, int longOperations, long generation);

    [LoggerMessage(EventId = 2016, Level = LogLevel.Warning, Message = "Deferred HSM module re-initialisation dropped: generation {Generation} failed while it waited, and the recovery takes over; the next destroyed session object starts it again")]
    public static partial void RecycleDropped(ILogger logger, long generation);

    [LoggerMessage(EventId = 1210, Level = LogLevel.Error, Message = "HSM call {Operation} did not return within {Timeout}; answering UNAVAILABLE, abandoning it with its session ({Abandoned} abandoned) and recovering")]
    public static partial void CallTimedOut(ILogger logger, string operation, TimeSpan timeout, int abandoned);

    [LoggerMessage(EventId = 1211, Level = LogLevel.Warning, Message = "Abandoned HSM call {Operation} returned after {Elapsed}; its session is released")]
    public static partial void AbandonedCallReturned(ILogger logger, string operation, TimeSpan elapsed);
}
