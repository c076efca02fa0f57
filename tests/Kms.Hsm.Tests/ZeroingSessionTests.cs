using System.Security.Cryptography;
using Kms.Core.Ports;

namespace Kms.Hsm.Tests;

/// <summary>
/// Pkcs11Interop's <c>Decrypt</c> sizes its output by SoftHSM's length query (the ciphertext's
/// length) and drops that longer array, plaintext inside, for a shorter copy; the adapter's
/// sessions zero it (<see cref="ZeroingSession"/>).
/// </summary>
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
        var before = ZeroingSession.ZeroedOversizedOutputs;

        var single = await fixture.Hsm.DecryptAesGcmAsync(key, iv, "aad"u8.ToArray(), sealedBytes, default);
        var many = await fixture.Hsm.DecryptAesGcmManyAsync(key, [new AesGcmInput(iv, "aad"u8.ToArray(), sealedBytes)], default);

        Assert.Equal(plaintext, single);
        Assert.Equal(plaintext, many[0]);
        // Both decryptions met SoftHSM's 21-byte answer for 5 bytes of plaintext, and zeroed it.
        Assert.True(ZeroingSession.ZeroedOversizedOutputs >= before + 2, $"{ZeroingSession.ZeroedOversizedOutputs - before} zeroed");
    }
}
