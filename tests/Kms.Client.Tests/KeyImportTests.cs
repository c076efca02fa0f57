using System.Security.Cryptography;
using Kms.Contracts.V1;
using Kms.Testing;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Parameters;

namespace Kms.Client.Tests;

/// <summary>The caller's half of BYOK: RFC 5649 KWP and the RSA-OAEP + KWP layout.</summary>
public sealed class KeyImportTests
{
    [WycheproofFact]
    public void Kwp_EveryValidWycheproofVector_WrapsToTheExpectedBytes()
    {
        var checkedCount = 0;
        foreach (var (_, test) in Wycheproof.Tests("aes_kwp_test.json"))
        {
            if (test.GetProperty("result").GetString() != "valid")
            {
                continue;
            }

            Assert.Equal(Convert.ToHexString(Wycheproof.Hex(test, "ct")), Convert.ToHexString(AesKeyWrapPad.Wrap(Wycheproof.Hex(test, "key"), Wycheproof.Hex(test, "msg"))));
            checkedCount++;
        }

        Assert.True(checkedCount > 20, $"only {checkedCount} valid vectors");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    [InlineData(20)]
    [InlineData(32)]
    [InlineData(1217)]
    public void Kwp_AnyLength_BouncyCastleUnwrapsIt(int length)
    {
        var kek = RandomNumberGenerator.GetBytes(32);
        var material = RandomNumberGenerator.GetBytes(length);
        var engine = new AesWrapPadEngine();
        engine.Init(false, new KeyParameter(kek));

        var wrapped = AesKeyWrapPad.Wrap(kek, material);

        Assert.Equal(((length + 7) / 8 * 8) + 8, wrapped.Length);
        Assert.Equal(material, engine.Unwrap(wrapped, 0, wrapped.Length));
    }

    [Fact]
    public void Wrap_OaepBlockThenKwp_TheJobsPrivateKeyRecoversTheMaterial()
    {
        using var job = RSA.Create(3072);
        var material = RandomNumberGenerator.GetBytes(32);

        var wrapped = KeyImport.Wrap(job.ExportSubjectPublicKeyInfo(), ImportMethod.RsaOaep3072Sha256Aes256, material);

        var ephemeral = job.Decrypt(wrapped[..384], RSAEncryptionPadding.OaepSHA256);
        var engine = new AesWrapPadEngine();
        engine.Init(false, new KeyParameter(ephemeral));
        Assert.Equal(material, engine.Unwrap(wrapped, 384, wrapped.Length - 384));
    }

    [Fact]
    public void Wrap_PublicKeyOfAnotherSizeThanTheMethod_Refused()
    {
        using var job = RSA.Create(2048);
        var e = Assert.Throws<ArgumentException>(() => KeyImport.Wrap(job.ExportSubjectPublicKeyInfo(), ImportMethod.RsaOaep3072Sha1Aes256, new byte[32]));
        Assert.Contains("2048", e.Message, StringComparison.Ordinal);
    }
}
