using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// The signature of a suite 0x0002 message (docs/envelope-format-signed.md): ECDSA P-384 over the
/// SHA-384 of every byte before the footer, taken as the bytes go by, so a stream signs and
/// verifies in constant memory. One per message. A writer's key pair is a <see cref="SigningKey"/>
/// handle, released with this (the pair is disposed with its last handle: a cached one outlives the
/// message); a reader's public key is disposed with this.
/// </summary>
internal sealed class EnvelopeSignature : IDisposable
{
    /// <summary>Base64 (with padding) of the 97-byte uncompressed point 0x04 ‖ X ‖ Y.</summary>
    public const int EncodedPublicKeyLength = 132;

    private const int CoordinateLength = 48;

    private const int PointLength = 1 + (2 * CoordinateLength);

    // Exactly one of the two: a writer signs through its handle, a reader verifies with the public key.
    private readonly SigningKey.Handle? _signer;
    private readonly ECDsa? _verifier;
    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA384);

    private EnvelopeSignature(SigningKey.Handle signer) => _signer = signer;

    private EnvelopeSignature(ECDsa verifier) => _verifier = verifier;

    /// <summary>A fresh key pair for one message (its private half never leaves this process).</summary>
    public static EnvelopeSignature ForWriting() => new(SigningKey.Create());

    /// <summary>A signer over a given P-384 key, taken over (disposed with this): for the golden vectors, whose key pairs are fixed.</summary>
    internal static EnvelopeSignature ForWriting(ECDsa key) => new(SigningKey.Create(key));

    /// <summary>A signer through <paramref name="signer"/>, taken over (released with this): a key pair the data-key cache shares.</summary>
    internal static EnvelopeSignature ForWriting(SigningKey.Handle signer) => new(signer);

    /// <summary>
    /// The verifier of a message whose context is <paramref name="context"/>: null when the context
    /// has no public key or an encoding that is not exactly one P-384 point (the caller refuses the
    /// message with the opaque failure).
    /// </summary>
    public static EnvelopeSignature? ForReading(IReadOnlyDictionary<string, string> context)
    {
        if (!context.TryGetValue(EnvelopeFormat.PublicKeyContextKey, out var encoded) || encoded.Length != EncodedPublicKeyLength)
        {
            return null;
        }

        Span<byte> point = stackalloc byte[PointLength];
        // One encoding per key: base64 with padding and zero trailing bits, an uncompressed point.
        if (!Convert.TryFromBase64String(encoded, point, out var written) || written != PointLength || point[0] != 0x04
            || !string.Equals(Convert.ToBase64String(point), encoded, StringComparison.Ordinal))
        {
            return null;
        }

        var parameters = new ECParameters
        {
            Curve = ECCurve.NamedCurves.nistP384,
            Q = new ECPoint { X = point.Slice(1, CoordinateLength).ToArray(), Y = point[(1 + CoordinateLength)..].ToArray() },
        };
        var key = ECDsa.Create();
        try
        {
            // OpenSSL refuses a point that is not on the curve.
            key.ImportParameters(parameters);
            return new EnvelopeSignature(verifier: key);
        }
        catch (CryptographicException)
        {
            key.Dispose();
            return null;
        }
    }

    /// <summary>The public key as the context carries it.</summary>
    public string EncodedPublicKey
    {
        get
        {
            if (_signer is not null)
            {
                return _signer.Key.EncodedPublicKey;
            }

            var q = _verifier!.ExportParameters(includePrivateParameters: false).Q;
            return Convert.ToBase64String([0x04, .. q.X!, .. q.Y!]);
        }
    }

    /// <summary>Adds message bytes, in order, to what is signed.</summary>
    public void Append(ReadOnlySpan<byte> bytes) => _hash.AppendData(bytes);

    /// <summary>Signs what was appended into <paramref name="signature"/> (<see cref="EnvelopeFormat.SignatureLength"/> bytes).</summary>
    public void Sign(Span<byte> signature)
    {
        Span<byte> digest = stackalloc byte[48];
        _hash.GetHashAndReset(digest);
        (_signer ?? throw new InvalidOperationException("a reader's signature verifies; it does not sign")).Sign(digest, signature);
    }

    /// <summary>Whether <paramref name="signature"/> is this key's signature of what was appended.</summary>
    public bool Verify(ReadOnlySpan<byte> signature)
    {
        Span<byte> digest = stackalloc byte[48];
        _hash.GetHashAndReset(digest);
        return signature.Length == EnvelopeFormat.SignatureLength
            && (_verifier ?? throw new InvalidOperationException("a writer's signature signs; it does not verify")).VerifyHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
    }

    /// <summary>Releases the writer's key pair (OpenSSL clears the private scalar when its last holder lets go), or frees the reader's public key.</summary>
    public void Dispose()
    {
        _signer?.Dispose();
        _verifier?.Dispose();
        _hash.Dispose();
    }
}
