using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// Message ids straight from the kernel's generator (<c>getrandom(2)</c>), with no random state
/// in this process.
/// </summary>
/// <remarks>
/// <para>.NET's <see cref="RandomNumberGenerator"/> on Linux is OpenSSL's DRBG: state in the
/// process, seeded once and reseeded rarely (100,000 fills of 32 bytes made 2 <c>getrandom</c>
/// calls under strace, docs/benchmarks.md, "Envelope SDK"). A VM restored twice from one
/// snapshot, or a process image cloned, runs that state twice and draws the same ids; with a
/// data key cached before the snapshot, the same id is the same message key and the same frame
/// IVs — GCM nonce reuse. The kernel reseeds its generator when it learns of a VM fork
/// (vmgenid, Linux 5.18), which no process-held state does.</para>
/// <para>It is also cheaper: one system call (about 0.35 µs here) against about 1 µs for
/// OpenSSL's generator through .NET. Elsewhere, and where the call is missing or refused (an old
/// kernel or C library, a seccomp filter), ids come from <see cref="RandomNumberGenerator"/>.</para>
/// </remarks>
internal static partial class KernelRandom
{
    private const int EPERM = 1;
    private const int ENOSYS = 38;
    private const int EINTR = 4;

    private static volatile bool _unavailable = !OperatingSystem.IsLinux();

    private static long _messageIds;

    /// <summary>Whether ids come from <c>getrandom(2)</c> (false: from <see cref="RandomNumberGenerator"/>).</summary>
    public static bool FromKernel => !_unavailable;

    public static void Fill(Span<byte> destination)
    {
        if (!_unavailable)
        {
            while (!destination.IsEmpty)
            {
                nint read;
                try
                {
                    read = GetRandom(ref MemoryMarshal.GetReference(destination), (nuint)destination.Length, 0);
                }
                catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
                {
                    _unavailable = true; // a C library without getrandom (glibc before 2.25)
                    break;
                }

                if (read > 0)
                {
                    destination = destination[(int)read..];
                    continue;
                }

                var error = Marshal.GetLastPInvokeError();
                if (read < 0 && error == EINTR)
                {
                    continue;
                }

                if (read < 0 && error is ENOSYS or EPERM)
                {
                    _unavailable = true; // a kernel before 3.17, or a seccomp filter refusing the call
                    break;
                }

                throw new CryptographicException($"getrandom failed (errno {error})");
            }

            if (destination.IsEmpty)
            {
                return;
            }
        }

        RandomNumberGenerator.Fill(destination);
    }

    /// <summary>Message ids drawn through <see cref="MessageId"/> (for the test that pins every encryption path to it).</summary>
    internal static long MessageIdsDrawn => Interlocked.Read(ref _messageIds);

    public static byte[] MessageId()
    {
        var id = new byte[EnvelopeFormat.MessageIdLength];
        Fill(id);
        Interlocked.Increment(ref _messageIds);
        return id;
    }

    [LibraryImport("libc", EntryPoint = "getrandom", SetLastError = true)]
    private static partial nint GetRandom(ref byte buffer, nuint length, uint flags);
}
