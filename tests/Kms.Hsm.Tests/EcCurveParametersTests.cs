using System.Formats.Asn1;
using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Ports;

namespace Kms.Hsm.Tests;

/// <summary>Curve parameters and the CKA_EC_POINT → SubjectPublicKeyInfo conversion, without an HSM.</summary>
public sealed class EcCurveParametersTests
{
    [Theory]
    [InlineData(EcCurve.P256, "06082A8648CE3D030107", 32, 64)]
    [InlineData(EcCurve.P384, "06052B81040022", 48, 96)]
    public void Of_KnownCurve_DerOidDigestAndSignatureLengths(EcCurve curve, string ecParams, int digestLength, int signatureLength)
    {
        var parameters = EcCurveParameters.Of(curve);
        Assert.Equal(Convert.FromHexString(ecParams), parameters.EcParams);
        Assert.True(parameters.IsEcParams(Convert.FromHexString(ecParams)));
        Assert.Equal(digestLength, parameters.DigestLength);
        Assert.Equal(signatureLength, parameters.SignatureLength);
    }

    [Fact]
    public void Of_UndefinedCurve_InvalidArgument()
    {
        var e = Assert.Throws<KmsException>(() => EcCurveParameters.Of((EcCurve)99));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
    }

    [Theory]
    [InlineData(EcCurve.P256)]
    [InlineData(EcCurve.P384)]
    public void SubjectPublicKeyInfo_DerWrappedUncompressedPoint_SameAsDotNet(EcCurve curve)
    {
        using var key = NewKey(curve);
        Assert.Equal(key.ExportSubjectPublicKeyInfo(), EcCurveParameters.Of(curve).SubjectPublicKeyInfo(EcPoint(key)));
    }

    [Fact]
    public void SubjectPublicKeyInfo_MalformedPoints_Internal()
    {
        using var key = NewKey(EcCurve.P256);
        using var other = NewKey(EcCurve.P384);
        var parameters = EcCurveParameters.P256;
        var point = UncompressedPoint(key);
        var offCurve = (byte[])point.Clone();
        offCurve[^1] ^= 1;
        var compressed = point[..33];
        compressed[0] = (byte)(2 + (point[^1] & 1));

        foreach (var bad in new[]
        {
            point, // not DER-wrapped
            OctetString(offCurve),
            OctetString(compressed),
            [.. OctetString(point), 0],
            EcPoint(other), // a point of another curve
            other.ExportSubjectPublicKeyInfo(), // not a point at all
        })
        {
            var e = Assert.Throws<KmsException>(() => parameters.SubjectPublicKeyInfo(bad));
            Assert.Equal(KmsErrorCode.Internal, e.Code);
        }
    }

    private static ECDsa NewKey(EcCurve curve) =>
        ECDsa.Create(curve == EcCurve.P256 ? ECCurve.NamedCurves.nistP256 : ECCurve.NamedCurves.nistP384);

    private static byte[] UncompressedPoint(ECDsa key)
    {
        var q = key.ExportParameters(false).Q;
        return [0x04, .. q.X!, .. q.Y!];
    }

    private static byte[] EcPoint(ECDsa key) => OctetString(UncompressedPoint(key));

    private static byte[] OctetString(byte[] content)
    {
        var writer = new AsnWriter(AsnEncodingRules.DER);
        writer.WriteOctetString(content);
        return writer.Encode();
    }
}
