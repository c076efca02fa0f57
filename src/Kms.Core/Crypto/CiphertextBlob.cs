using System.Buffers.Binary;
using System.Text;
using Kms.Core.Keys;
using Kms.Core.Names;

namespace Kms.Core.Crypto;

/// <summary>
/// The server's ciphertext format, version 1 (byte by byte in docs/ciphertext-format.md):
/// <c>0x01 ‖ key version id (16) ‖ IV (12) ‖ ciphertext ‖ tag (16)</c>, AES-256-GCM with
/// AAD = <c>header ‖ u32be len ‖ tenant ‖ encryption context (canonical)</c>, where the
/// header is the first 17 bytes.
/// </summary>
/// <remarks>
/// Binding the header, the tenant and the context into the AAD means a blob moved to
/// another key version, tenant or context fails the tag check. Unknown format versions are
/// rejected, never guessed at.
/// </remarks>
public sealed class CiphertextBlob
{
    /// <summary>The only format version this code writes and reads.</summary>
    public const byte FormatVersion1 = 0x01;

    /// <summary>GCM IV length (96 bits, from the HSM's RNG).</summary>
    public const int IvLength = 12;

    /// <summary>GCM tag length (128 bits).</summary>
    public const int TagLength = 16;

    /// <summary>Header length: format byte and key version id.</summary>
    public const int HeaderLength = 1 + KeyVersionId.Length;

    /// <summary>Bytes a blob adds to its plaintext.</summary>
    public const int OverheadBytes = HeaderLength + IvLength + TagLength;

    private readonly byte[] _blob;

    private CiphertextBlob(byte[] blob, KeyVersionId keyVersionId)
    {
        _blob = blob;
        KeyVersionId = keyVersionId;
    }

    /// <summary>The key version that made the blob.</summary>
    public KeyVersionId KeyVersionId { get; }

    /// <summary>The header (format byte and key version id), authenticated as part of the AAD.</summary>
    public ReadOnlySpan<byte> Header => _blob.AsSpan(0, HeaderLength);

    /// <summary>The GCM IV.</summary>
    public ReadOnlySpan<byte> Iv => _blob.AsSpan(HeaderLength, IvLength);

    /// <summary>The GCM ciphertext followed by its tag, as PKCS#11 expects it.</summary>
    public ReadOnlySpan<byte> CiphertextAndTag => _blob.AsSpan(HeaderLength + IvLength);

    /// <summary>Parses a blob. False for anything that is not a well-formed v1 blob.</summary>
    public static bool TryParse(ReadOnlySpan<byte> blob, out CiphertextBlob? parsed)
    {
        parsed = null;
        if (blob.Length < OverheadBytes || blob[0] != FormatVersion1)
        {
            return false;
        }

        parsed = new CiphertextBlob(blob.ToArray(), KeyVersionId.FromBytes(blob.Slice(1, KeyVersionId.Length)));
        return true;
    }

    /// <summary>Assembles a blob from its parts.</summary>
    public static byte[] Format(KeyVersionId keyVersionId, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> ciphertextAndTag)
    {
        if (iv.Length != IvLength)
        {
            throw new ArgumentException($"the IV must be {IvLength} bytes", nameof(iv));
        }

        if (ciphertextAndTag.Length < TagLength)
        {
            throw new ArgumentException("the ciphertext must end with a 16-byte tag", nameof(ciphertextAndTag));
        }

        var blob = new byte[HeaderLength + IvLength + ciphertextAndTag.Length];
        WriteHeader(blob, keyVersionId);
        iv.CopyTo(blob.AsSpan(HeaderLength));
        ciphertextAndTag.CopyTo(blob.AsSpan(HeaderLength + IvLength));
        return blob;
    }

    /// <summary>The AAD that authenticates a blob of <paramref name="keyVersionId"/> for a tenant and context.</summary>
    public static byte[] BuildAad(KeyVersionId keyVersionId, TenantId tenant, EncryptionContext context)
    {
        var tenantBytes = Encoding.UTF8.GetBytes(tenant.Value);
        var aad = new byte[HeaderLength + 4 + tenantBytes.Length + context.Encoded.Length];
        var span = aad.AsSpan();
        WriteHeader(span, keyVersionId);
        BinaryPrimitives.WriteUInt32BigEndian(span[HeaderLength..], (uint)tenantBytes.Length);
        tenantBytes.CopyTo(span[(HeaderLength + 4)..]);
        context.Encoded.CopyTo(span[(HeaderLength + 4 + tenantBytes.Length)..]);
        return aad;
    }

    private static void WriteHeader(Span<byte> destination, KeyVersionId keyVersionId)
    {
        destination[0] = FormatVersion1;
        keyVersionId.WriteTo(destination[1..]);
    }
}
