namespace Kms.Cli.Infrastructure;

/// <summary>
/// The exit codes of <c>kms</c>, one per kind of outcome a script may want to branch on.
/// docs/cli.md lists them; <see cref="ErrorReport"/> is the one table that maps failures to them.
/// </summary>
internal static class ExitCodes
{
    /// <summary>The command did what it was asked.</summary>
    public const int Ok = 0;

    /// <summary>Anything not classified below (a bug, or a status such as INTERNAL or UNKNOWN).</summary>
    public const int Unexpected = 1;

    /// <summary>Bad flags or arguments, or a configuration that cannot work (no such profile, a missing token or CA file, a CA that does not vouch for the server).</summary>
    public const int Usage = 2;

    /// <summary>NOT_FOUND: the key, version or alias does not exist (or belongs to another tenant).</summary>
    public const int NotFound = 3;

    /// <summary>UNAUTHENTICATED or PERMISSION_DENIED: no or a bad credential, or a missing role.</summary>
    public const int Denied = 4;

    /// <summary>FAILED_PRECONDITION, ALREADY_EXISTS or ABORTED: the resource's state does not allow it (disabled key, existing id).</summary>
    public const int Conflict = 5;

    /// <summary>UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED: the server, its HSM or database could not answer after the client's retries, or a quota; try again later.</summary>
    public const int Unavailable = 6;

    /// <summary>A ciphertext or envelope file could not be decrypted: tampered, truncated, another context, a key not trusted.</summary>
    public const int DecryptionFailed = 7;

    /// <summary>INVALID_ARGUMENT or OUT_OF_RANGE from the server (other than "decryption failed"): the request was malformed.</summary>
    public const int InvalidArgument = 8;

    /// <summary>A local file could not be read or written (input missing, output directory not writable).</summary>
    public const int LocalIo = 9;

    /// <summary><c>kms audit verify</c>: everything before a torn last line verified, that line not read (a copy taken mid-append, a crash): not verified to its end.</summary>
    public const int TornTail = 10;

    /// <summary>
    /// <c>kms audit verify</c>: a SIEM stream copy verified, every chain in it, but it holds restart
    /// lines: the database's audit chain was rolled back under the stream (listed). Not 0: a
    /// rollback is itself an event an auditor must see, and a script that checks for 0 must not pass it.
    /// </summary>
    public const int StreamRestarts = 11;

    /// <summary>Interrupted (Ctrl-C) or cancelled; partial output was removed.</summary>
    public const int Cancelled = 130;
}
