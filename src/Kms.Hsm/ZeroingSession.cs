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
/// collector, never zeroed. Here that array is zeroed once the exact copy is made.
/// </remarks>
internal sealed class ZeroingSession : Net.Pkcs11Interop.HighLevelAPI80.Session
{
    private static long s_zeroedOversizedOutputs;

    private ZeroingSession(Pkcs11InteropFactories factories, LowLevel80.Pkcs11Library library, ulong sessionId)
        : base(factories, library, sessionId)
    {
    }

    /// <summary>Output buffers longer than their plaintext, zeroed (what <c>Array.Resize</c> would have dropped).</summary>
    public static long ZeroedOversizedOutputs => Interlocked.Read(ref s_zeroedOversizedOutputs);

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
        var marshalled = (LowLevel80.CK_MECHANISM)mechanism.ToMarshalableStructure();
        Check("C_DecryptInit", _pkcs11Library.C_DecryptInit(SessionId, ref marshalled, key.ObjectId));

        ulong length = 0;
        Check("C_Decrypt", _pkcs11Library.C_Decrypt(SessionId, input, (ulong)input.Length, null, ref length));
        var output = new byte[checked((int)length)];
        try
        {
            Check("C_Decrypt", _pkcs11Library.C_Decrypt(SessionId, input, (ulong)input.Length, output, ref length));
            if (length == (ulong)output.Length)
            {
                return output;
            }

            var exact = output.AsSpan(0, checked((int)length)).ToArray();
            CryptographicOperations.ZeroMemory(output);
            Interlocked.Increment(ref s_zeroedOversizedOutputs);
            return exact;
        }
        catch
        {
            CryptographicOperations.ZeroMemory(output);
            throw;
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
