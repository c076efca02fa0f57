using System.Formats.Asn1;
using System.Numerics;
using CsCheck;
using Kms.Core.Crypto;

namespace Kms.Core.Tests.Properties;

/// <summary>
/// <see cref="EcdsaSignature.TryDerToP1363"/> on DER sequences of two integers of every size around
/// the field's (zero, negative, one and two bytes too long): false, or the P1363 signature whose DER
/// encoding is exactly the input — never an exception.
/// </summary>
public sealed class EcdsaSignaturePropertyTests
{
    [Theory]
    [InlineData(32)]
    [InlineData(48)]
    public void TryDerToP1363_IntegersOfAnySize_FalseOrTheSignatureThatEncodesBackToThem(int fieldSize)
    {
        var integer = Gen.Select(Gen.Byte.Array[1, fieldSize + 2], Gen.Bool).Select((bytes, negative) =>
            negative ? -new BigInteger(bytes, isUnsigned: true, isBigEndian: true) : new BigInteger(bytes, isUnsigned: true, isBigEndian: true));
        Gen.Select(integer, integer).Sample((r, s) =>
        {
            var writer = new AsnWriter(AsnEncodingRules.DER);
            using (writer.PushSequence())
            {
                writer.WriteInteger(r);
                writer.WriteInteger(s);
            }

            var der = writer.Encode();
            var fits = r.Sign > 0 && s.Sign > 0 && r.GetByteCount(isUnsigned: true) <= fieldSize && s.GetByteCount(isUnsigned: true) <= fieldSize;

            Assert.Equal(fits, EcdsaSignature.TryDerToP1363(der, fieldSize, out var p1363));
            if (fits)
            {
                Assert.Equal(2 * fieldSize, p1363.Length);
                Assert.Equal(der, EcdsaSignature.P1363ToDer(p1363));
            }
        }, iter: 500);
    }
}
