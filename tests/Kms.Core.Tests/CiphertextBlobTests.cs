using Kms.Core.Crypto;
using Kms.Core.Keys;

namespace Kms.Core.Tests;

public sealed class CiphertextBlobTests
{
    [Fact]
    public void TryParse_ShorterThanOverhead_False()
    {
        Assert.False(CiphertextBlob.TryParse(new byte[CiphertextBlob.OverheadBytes - 1], out _));
    }

    [Fact]
    public void TryParse_UnknownFormatVersion_False()
    {
        var blob = CiphertextBlob.Format(KeyVersionId.NewId(), new byte[12], new byte[20]);
        blob[0] = 0x02;
        Assert.False(CiphertextBlob.TryParse(blob, out _));
    }

    [Theory]
    [InlineData(11)]
    [InlineData(13)]
    public void Format_IvNotTwelveBytes_ArgumentExceptionNamingIv(int ivLength)
    {
        var e = Assert.Throws<ArgumentException>(() => CiphertextBlob.Format(KeyVersionId.NewId(), new byte[ivLength], new byte[20]));
        Assert.Equal("iv", e.ParamName);
    }

    [Fact]
    public void Format_ShorterThanTag_ArgumentExceptionNamingCiphertext()
    {
        var e = Assert.Throws<ArgumentException>(() => CiphertextBlob.Format(KeyVersionId.NewId(), new byte[12], new byte[CiphertextBlob.TagLength - 1]));
        Assert.Equal("ciphertextAndTag", e.ParamName);
    }

    [Fact]
    public void Format_LaysOutHeaderIvCiphertextTag()
    {
        var id = KeyVersionId.NewId();
        var iv = Enumerable.Range(1, 12).Select(i => (byte)i).ToArray();
        var sealedBytes = Enumerable.Range(100, 20).Select(i => (byte)i).ToArray();
        var blob = CiphertextBlob.Format(id, iv, sealedBytes);

        Assert.Equal(CiphertextBlob.FormatVersion1, blob[0]);
        Assert.Equal(id.ToBytes(), blob[1..17]);
        Assert.Equal(iv, blob[17..29]);
        Assert.Equal(sealedBytes, blob[29..]);
        Assert.Equal(sealedBytes.Length - CiphertextBlob.TagLength + CiphertextBlob.OverheadBytes, blob.Length);
    }

    [Fact]
    public void BuildAad_DifferentKeyVersion_Differs()
    {
        var tenant = Names.TenantId.Parse("dev");
        Assert.NotEqual(
            CiphertextBlob.BuildAad(KeyVersionId.NewId(), tenant, EncryptionContext.Empty),
            CiphertextBlob.BuildAad(KeyVersionId.NewId(), tenant, EncryptionContext.Empty));
    }

    [Fact]
    public void KeyVersionId_RoundTripsThroughBytesAndHex()
    {
        var id = KeyVersionId.NewId();
        Assert.Equal(id, KeyVersionId.FromBytes(id.ToBytes()));
        Assert.Equal(32, id.ToString().Length);
    }
}
