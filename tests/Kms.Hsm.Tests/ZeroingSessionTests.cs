using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// Pkcs11Interop's <c>Decrypt</c> sizes its output by SoftHSM's length query (the ciphertext's
/// length) and drops that longer array, plaintext inside, for a shorter copy; the adapter's
/// sessions zero it (<see cref="ZeroingSession"/>).
/// </summary>
[Collection(nameof(ZeroingSessionTests))] // alone: the counter below is the process's
public sealed class ZeroingSessionTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    [Fact]
    public async Task GcmDecrypt_SoftHsmOversizesTheOutput_ThatBufferZeroed_PlaintextExact()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var key = fixture.ImportKnownKey(secret);
        using var aes = new AesGcm(secret, 16);
        var (iv, plaintext) = (RandomNumberGenerator.GetBytes(12), RandomNumberGenerator.GetBytes(5));
        var sealedBytes = new byte[plaintext.Length + 16];
        aes.Encrypt(iv, plaintext, sealedBytes.AsSpan(0, plaintext.Length), sealedBytes.AsSpan(plaintext.Length), "aad"u8);
        var before = ZeroingSession.ZeroedOutputs;

        var single = await fixture.Hsm.DecryptAesGcmAsync(key, iv, "aad"u8.ToArray(), sealedBytes, default);
        var many = await fixture.Hsm.DecryptAesGcmManyAsync(key, [new AesGcmInput(iv, "aad"u8.ToArray(), sealedBytes)], default);

        Assert.Equal(plaintext, single);
        Assert.Equal(plaintext, many[0]);
        // Both decryptions went through the adapter's own C_Decrypt (a 21-byte buffer for 5 bytes), which zeroed it.
        Assert.Equal(before + 2, ZeroingSession.ZeroedOutputs);
    }

    [Theory]
    [InlineData(4096 - 16)] // the largest input the session's scratch buffer takes
    [InlineData(4096 - 15)] // one byte more: a buffer of its own
    [InlineData(64 * 1024)]
    public async Task GcmDecrypt_AroundTheScratchBuffersSize_PlaintextExact(int plaintextLength)
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var key = fixture.ImportKnownKey(secret);
        using var aes = new AesGcm(secret, 16);
        var (iv, plaintext) = (RandomNumberGenerator.GetBytes(12), RandomNumberGenerator.GetBytes(plaintextLength));
        var sealedBytes = new byte[plaintext.Length + 16];
        aes.Encrypt(iv, plaintext, sealedBytes.AsSpan(0, plaintext.Length), sealedBytes.AsSpan(plaintext.Length));

        Assert.Equal(plaintext, await fixture.Hsm.DecryptAesGcmAsync(key, iv, [], sealedBytes, default));
    }

    [Fact]
    public async Task WrongTag_OnTheOnlySession_DecryptionFailed_TheSessionStillDecrypts()
    {
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(sessions: 1), NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [1, 2, 3], default);
        var tampered = sealedBytes.ToArray();
        tampered[^1] ^= 1;

        for (var i = 0; i < 2; i++)
        {
            var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], tampered, default));
            Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);
            Assert.Equal([1, 2, 3], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        }
    }
}

[CollectionDefinition(nameof(ZeroingSessionTests), DisableParallelization = true)]
public sealed class ZeroingSessionCollection;
