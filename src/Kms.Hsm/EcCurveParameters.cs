using System.Formats.Asn1;
using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Ports;

namespace Kms.Hsm;

/// <summary>
/// What the adapter needs to know about a named curve: its PKCS#11 parameters (the DER OID
/// that CKA_EC_PARAMS carries), the digest length a signature takes, and how to turn the
/// HSM's CKA_EC_POINT into a SubjectPublicKeyInfo.
/// </summary>
internal sealed class EcCurveParameters
{
    /// <summary>NIST P-256 (secp256r1, OID 1.2.840.10045.3.1.7), signing SHA-256 digests.</summary>
    public static readonly EcCurveParameters P256 = new("P-256", "1.2.840.10045.3.1.7", fieldSize: 32, digestLength: 32, ECCurve.NamedCurves.nistP256, KeyHandleKind.EcdsaP256);

    /// <summary>NIST P-384 (secp384r1, OID 1.3.132.0.34), signing SHA-384 digests.</summary>
    public static readonly EcCurveParameters P384 = new("P-384", "1.3.132.0.34", fieldSize: 48, digestLength: 48, ECCurve.NamedCurves.nistP384, KeyHandleKind.EcdsaP384);

    private readonly byte[] _ecParams;
    private readonly ECCurve _curve;

    private EcCurveParameters(string name, string oid, int fieldSize, int digestLength, ECCurve curve, KeyHandleKind handleKind)
    {
        Name = name;
        HandleKind = handleKind;
        FieldSize = fieldSize;
        DigestLength = digestLength;
        _curve = curve;
        var writer = new AsnWriter(AsnEncodingRules.DER);
        writer.WriteObjectIdentifier(oid);
        _ecParams = writer.Encode();
    }

    /// <summary>The curve's name, for messages.</summary>
    public string Name { get; }

    /// <summary>What an unwrapped private key of this curve is cached as.</summary>
    public KeyHandleKind HandleKind { get; }

    /// <summary>Bytes of a field element: of each point coordinate, and of each of r and s.</summary>
    public int FieldSize { get; }

    /// <summary>
    /// The only digest length accepted for signing: the hash of the curve's strength.
    /// ECDSA would silently truncate a longer digest and sign a shorter one as given.
    /// </summary>
    public int DigestLength { get; }

    /// <summary>Length of an IEEE P1363 signature (r‖s).</summary>
    public int SignatureLength => 2 * FieldSize;

    /// <summary>The CKA_EC_PARAMS value: ECParameters as the namedCurve choice, i.e. the DER OID (a fresh copy).</summary>
    public byte[] EcParams => (byte[])_ecParams.Clone();

    /// <summary>Whether a CKA_EC_PARAMS value read from the HSM names this curve.</summary>
    public bool IsEcParams(ReadOnlySpan<byte> ecParams) => ecParams.SequenceEqual(_ecParams);

    /// <summary>The parameters of a curve of the port, or INVALID_ARGUMENT for a value it does not define.</summary>
    public static EcCurveParameters Of(EcCurve curve) => curve switch
    {
        EcCurve.P256 => P256,
        EcCurve.P384 => P384,
        _ => throw KmsErrors.InvalidArgument("curve", $"unsupported curve {curve}"),
    };

    /// <summary>
    /// The DER SubjectPublicKeyInfo of a public key read from the HSM. CKA_EC_POINT is a DER
    /// OCTET STRING around the uncompressed point (04‖X‖Y); anything else, or a point that is
    /// not on the curve, is the HSM misbehaving.
    /// </summary>
    public byte[] SubjectPublicKeyInfo(byte[] ecPoint)
    {
        byte[] point;
        try
        {
            point = AsnDecoder.ReadOctetString(ecPoint, AsnEncodingRules.DER, out var consumed);
            if (consumed != ecPoint.Length)
            {
                throw KmsErrors.Internal($"the HSM's {Name} CKA_EC_POINT has {ecPoint.Length - consumed} bytes after its OCTET STRING");
            }
        }
        catch (AsnContentException e)
        {
            throw KmsErrors.Internal($"the HSM's {Name} CKA_EC_POINT is not a DER OCTET STRING", e);
        }

        if (point.Length != 1 + (2 * FieldSize) || point[0] != 0x04)
        {
            throw KmsErrors.Internal($"the HSM's {Name} CKA_EC_POINT is not an uncompressed point ({point.Length} bytes)");
        }

        try
        {
            using var key = ECDsa.Create(new ECParameters
            {
                Curve = _curve,
                Q = new ECPoint { X = point[1..(1 + FieldSize)], Y = point[(1 + FieldSize)..] },
            });
            return key.ExportSubjectPublicKeyInfo();
        }
        catch (CryptographicException e)
        {
            throw KmsErrors.Internal($"the HSM's {Name} public key is not a valid point of the curve", e);
        }
    }
}
