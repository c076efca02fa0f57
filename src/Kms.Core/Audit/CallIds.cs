using System.Security.Cryptography;

namespace Kms.Core.Audit;

/// <summary>
/// Request ids the server makes for calls that bring none: 32 lower-case hex digits, like a
/// <see cref="Guid"/> in "N" form, but without a system call per id (<see cref="Guid.NewGuid"/>
/// reads /dev/urandom on Linux, one <c>read</c> per audited call). The first 16 digits are
/// drawn once per process from the system's random source, so ids of different processes and
/// nodes do not collide; the last 16 count up from a random start. A request id is a
/// correlation label, not a secret: knowing one says nothing a caller could use, and a caller
/// may choose its own (<c>x-request-id</c>).
/// </summary>
public static class CallIds
{
    private static readonly ulong Prefix = RandomPrefix();
    private static long _counter = (long)(RandomPrefix() >> 1);

    /// <summary>A new request id, unique within this process and, with overwhelming probability, across processes.</summary>
    public static string New()
    {
        var n = (ulong)Interlocked.Increment(ref _counter);
        return string.Create(32, (Prefix, n), static (span, state) =>
        {
            state.Prefix.TryFormat(span[..16], out _, "x16", System.Globalization.CultureInfo.InvariantCulture);
            state.n.TryFormat(span[16..], out _, "x16", System.Globalization.CultureInfo.InvariantCulture);
        });
    }

    private static ulong RandomPrefix()
    {
        Span<byte> bytes = stackalloc byte[8];
        RandomNumberGenerator.Fill(bytes);
        return BitConverter.ToUInt64(bytes);
    }
}
