using CsCheck;
using Kms.Core.Crypto;
using Kms.Core.Keys;

namespace Kms.Core.Tests.Properties;

/// <summary>Round trips of the ciphertext blob (docs/ciphertext-format.md), on random parts and random bytes.</summary>
public sealed class CiphertextBlobPropertyTests
{
    private static readonly Gen<(byte[] Id, byte[] Iv, byte[] CiphertextAndTag)> Parts =
        Gen.Select(Gen.Byte.Array[KeyVersionId.Length], Gen.Byte.Array[CiphertextBlob.IvLength], Gen.Byte.Array[CiphertextBlob.TagLength, 300]);

    [Fact]
    public void FormatThenTryParse_AnyParts_GivesThePartsBack()
    {
        Parts.Sample((id, iv, ciphertextAndTag) =>
        {
            var blob = CiphertextBlob.Format(KeyVersionId.FromBytes(id), iv, ciphertextAndTag);

            Assert.True(CiphertextBlob.TryParse(blob, out var parsed));
            Assert.Equal(id, parsed!.KeyVersionId.ToBytes());
            Assert.Equal(iv, parsed.Iv.ToArray());
            Assert.Equal(ciphertextAndTag, parsed.CiphertextAndTag.ToArray());
            Assert.Equal(blob.Length, ciphertextAndTag.Length + CiphertextBlob.HeaderLength + CiphertextBlob.IvLength);
        }, iter: 500);
    }

    [Fact]
    public void TryParse_AnyBytes_AcceptsExactlyTheWellFormedAndFormatsThemBack()
    {
        Gen.Byte.Array[0, 80].Sample(bytes =>
        {
            var accepted = CiphertextBlob.TryParse(bytes, out var parsed);

            Assert.Equal(bytes.Length >= CiphertextBlob.OverheadBytes && bytes[0] == CiphertextBlob.FormatVersion1, accepted);
            if (accepted)
            {
                Assert.Equal(bytes, CiphertextBlob.Format(parsed!.KeyVersionId, parsed.Iv, parsed.CiphertextAndTag));
            }
        }, iter: 2000);
    }
}
