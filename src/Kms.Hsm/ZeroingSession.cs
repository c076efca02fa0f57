using System.Security.Cryptography;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;
using Net.Pkcs11Interop.HighLevelAPI.Factories;
using LowLevel80 = Net.Pkcs11Interop.LowLevelAPI80;

namespace Kms.Hsm;

/// <summary>
/// A Pkcs11Interop session whose single-part decryption leaves no copy of the plaintext behind.
/// </summary>
/// <remarks>
/// Pkcs11Interop 5.3's <c>Session.Decrypt</c> sizes its output by <c>C_Decrypt</c>'s length
/// query, then <c>Array.Resize</c>s it to what was written. SoftHSM answers the query with the
/// ciphertext's length (tag included for GCM; the modulus for OAEP), so every decryption left a
/// longer array holding the whole plaintext — a data key, a caller's record — for the garbage
/// collector, never zeroed. Here the output buffer is sized by the input (a GCM or OAEP plaintext
/// is never longer), pinned, and zeroed once the exact copy is made. Only on Pkcs11Interop's "80"
/// platform (64-bit CK_ULONG, unpacked: Linux and macOS on 64 bits); elsewhere sessions are its own.
/// </remarks>
internal sealed class ZeroingSession : Net.Pkcs11Interop.HighLevelAPI80.Session
{
    // Plaintexts up to this size are decrypted into the session's own pinned scratch buffer, not a
    // new pinned array per call (pinned-heap garbage lasts until a full collection). A pooled
    // session serves one call at a time, and an abandoned call's session is never reused.
    private const int ScratchLength = 4096;

    private static long _zeroedOutputs;

    private byte[]? _scratch;

    private ZeroingSession(Pkcs11InteropFactories factories, LowLevel80.Pkcs11Library library, ulong sessionId)
        : base(factories, library, sessionId)
    {
    }

    /// <summary>Decryptions whose output buffer (longer than the plaintext: what <c>Array.Resize</c> would have dropped) was zeroed.</summary>
    public static long ZeroedOutputs => Interlocked.Read(ref _zeroedOutputs);

    /// <summary>
    /// Single-part decryption, as <see cref="ISession.Decrypt(IMechanism, IObjectHandle, byte[])"/>, on
    /// any session: a <see cref="ZeroingSession"/> zeroes its over-long output buffer; another
    /// session (a platform this adapter does not extend) decrypts as Pkcs11Interop does.
    /// </summary>
    public static byte[] Decrypt(ISession session, IMechanism mechanism, IObjectHandle key, byte[] input) =>
        session is ZeroingSession zeroing ? zeroing.DecryptZeroing(mechanism, key, input) : session.Decrypt(mechanism, key, input);

    private byte[] DecryptZeroing(IMechanism mechanism, IObjectHandle key, byte[] input)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);

        // No length query: GCM and OAEP plaintexts are never longer than their input, and a
        // successful query would leave the operation open on this pooled session if anything
        // failed before the second call. Taken (pinned: the GC must not leave a moved copy
        // behind) before C_DecryptInit, so nothing can fail between the two.
        var output = input.Length <= ScratchLength
            ? _scratch ??= GC.AllocateUninitializedArray<byte>(ScratchLength, pinned: true)
            : GC.AllocateUninitializedArray<byte>(input.Length, pinned: true);
        try
        {
            var marshalled = (LowLevel80.CK_MECHANISM)mechanism.ToMarshalableStructure();
            Check("C_DecryptInit", _pkcs11Library.C_DecryptInit(SessionId, ref marshalled, key.ObjectId));
            var length = (ulong)output.Length;
            var rv = _pkcs11Library.C_Decrypt(SessionId, input, (ulong)input.Length, output, ref length);
            if (rv == CKR.CKR_BUFFER_TOO_SMALL && length <= (ulong)Array.MaxLength)
            {
                // A module that wants more room than the input (none we know of): the operation
                // is still open, so call again with what it asked for.
                CryptographicOperations.ZeroMemory(output);
                output = GC.AllocateUninitializedArray<byte>((int)length, pinned: true);
                rv = _pkcs11Library.C_Decrypt(SessionId, input, (ulong)input.Length, output, ref length);
            }

            Check("C_Decrypt", rv);
            var exact = output.AsSpan(0, (int)length).ToArray();
            Interlocked.Increment(ref _zeroedOutputs);
            return exact;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(output);
        }
    }

    private static void Check(string function, CKR rv)
    {
        if (rv != CKR.CKR_OK)
        {
            throw new Pkcs11Exception(function, rv);
        }
    }

    /// <summary>Makes <see cref="ZeroingSession"/>s where the platform is Pkcs11Interop's "80" (64-bit CK_ULONG, unpacked: Linux and macOS on 64 bits); elsewhere its own sessions.</summary>
    internal sealed class Factory : ISessionFactory
    {
        private readonly SessionFactory _default = new();

        public ISession Create(Pkcs11InteropFactories factories, LowLevelPkcs11Library pkcs11Library, ulong sessionId) =>
            pkcs11Library is LowLevel80.Pkcs11Library library
                ? new ZeroingSession(factories, library, sessionId)
                : _default.Create(factories, pkcs11Library, sessionId);
    }
}
