using System.Security.Cryptography;
using Kms.Client.Envelope;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Modes;
using Org.BouncyCastle.Crypto.Parameters;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// The envelope's AES-256-GCM on OpenSSL called directly (<see cref="LibCrypto"/>) and on .NET's
/// <see cref="AesGcm"/>: the same bytes as BouncyCastle's GCM, the same refusals, the same
/// argument checks. Wycheproof's vectors run through both in <see cref="EnvelopeKnownAnswerTests"/>.
/// </summary>
public sealed class Aes256GcmTests
{
    public static TheoryData<bool> Implementations => [false, true];

    /// <summary>On this machine the fast path must be the one messages take, or the tests of it test nothing that runs.</summary>
    [Fact]
    public void OnLinuxWithOpenSsl3_MessagesUseOpenSslDirectly()
    {
        Assert.True(OperatingSystem.IsLinux(), "the project's tests run on Linux");
        Assert.True(LibCrypto.Sha512Available, "libcrypto.so.3's SHA512_Init/Update/Final were not usable (missing, FIPS mode, or a failed self-test)");
        Assert.True(LibCrypto.GcmAvailable, "libcrypto.so.3's AES-256-GCM was not usable (missing, FIPS mode, or a failed self-test)");
        using var gcm = new Aes256Gcm(new byte[32]);
        Assert.True(gcm.IsNative);
    }

    [Theory]
    [MemberData(nameof(Implementations))]
    public void EncryptsAsBouncyCastle_AndOpensItsOutput_AtEveryLengthAroundTheBlocks(bool native)
    {
        var random = new Random(38);
        var key = new byte[32];
        random.NextBytes(key);
        using var gcm = new Aes256Gcm(key, native);
        Assert.Equal(native, gcm.IsNative);
        var cases = 0;
        foreach (var length in new[] { 0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 1024, 65_536 + 3 })
        {
            foreach (var aadLength in new[] { 0, 1, 16, 41, 300 })
            {
                var (iv, plaintext, aad) = (new byte[12], new byte[length], new byte[aadLength]);
                random.NextBytes(iv);
                random.NextBytes(plaintext);
                random.NextBytes(aad);
                var (ciphertext, tag) = (new byte[length], new byte[16]);
                gcm.Encrypt(iv, plaintext, ciphertext, tag, aad);

                var expected = BouncyCastleSeal(key, iv, plaintext, aad);
                Assert.True(expected.AsSpan().SequenceEqual([.. ciphertext, .. tag]), $"length {length}, aad {aadLength}");

                var opened = new byte[length];
                gcm.Decrypt(iv, ciphertext, tag, opened, aad);
                Assert.Equal(plaintext, opened);
                cases++;
            }
        }

        Assert.Equal(12 * 5, cases);
    }

    [Theory]
    [MemberData(nameof(Implementations))]
    public void InPlace_EncryptsAndDecryptsTheSameBuffer(bool native)
    {
        var key = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var iv = new byte[12];
        var plaintext = Enumerable.Range(0, 1000).Select(i => (byte)(i * 7)).ToArray();
        using var gcm = new Aes256Gcm(key, native);
        var buffer = plaintext.ToArray();
        var tag = new byte[16];

        gcm.Encrypt(iv, buffer, buffer, tag, "aad"u8);
        Assert.Equal(BouncyCastleSeal(key, iv, plaintext, "aad"u8.ToArray()), buffer.Concat(tag).ToArray());
        gcm.Decrypt(iv, buffer, tag, buffer, "aad"u8);
        Assert.Equal(plaintext, buffer);
    }

    /// <summary>A changed bit anywhere — ciphertext, tag, IV, AAD — is the one tag error, and the output buffer is left cleared.</summary>
    [Theory]
    [MemberData(nameof(Implementations))]
    public void AnyChangedBit_IsATagMismatch_AndLeavesNoPlaintext(bool native)
    {
        var key = Enumerable.Range(100, 32).Select(i => (byte)i).ToArray();
        var iv = Enumerable.Range(0, 12).Select(i => (byte)i).ToArray();
        var plaintext = Enumerable.Range(0, 40).Select(i => (byte)(i + 1)).ToArray();
        var aad = "header"u8.ToArray();
        using var gcm = new Aes256Gcm(key, native);
        var (ciphertext, tag) = (new byte[40], new byte[16]);
        gcm.Encrypt(iv, plaintext, ciphertext, tag, aad);

        var inputs = new[] { ciphertext, tag, iv, aad };
        var refused = 0;
        foreach (var input in inputs)
        {
            for (var bit = 0; bit < input.Length * 8; bit += 5)
            {
                input[bit / 8] ^= (byte)(1 << (bit % 8));
                var opened = Enumerable.Repeat((byte)0xAA, 40).ToArray();
                Assert.Throws<AuthenticationTagMismatchException>(() => gcm.Decrypt(iv, ciphertext, tag, opened, aad));
                Assert.All(opened, b => Assert.Equal(0, b));
                input[bit / 8] ^= (byte)(1 << (bit % 8));
                refused++;
            }
        }

        Assert.True(refused > 100, $"{refused} changes tried");

        // The context is still good after the refusals.
        var again = new byte[40];
        gcm.Decrypt(iv, ciphertext, tag, again, aad);
        Assert.Equal(plaintext, again);
    }

    [Theory]
    [MemberData(nameof(Implementations))]
    public void BadArguments_AreRefusedBeforeAnyWork(bool native)
    {
        Assert.Throws<ArgumentException>(() => new Aes256Gcm(new byte[16], native));
        using var gcm = new Aes256Gcm(new byte[32], native);
        var buffer = new byte[64];
        var tag = new byte[16];
        Assert.Throws<ArgumentException>(() => gcm.Encrypt(new byte[8], buffer, new byte[64], tag, default));
        Assert.Throws<ArgumentException>(() => gcm.Encrypt(new byte[12], buffer, new byte[64], new byte[8], default));
        Assert.Throws<ArgumentException>(() => gcm.Encrypt(new byte[12], buffer, new byte[63], tag, default));
        Assert.Throws<ArgumentException>(() => gcm.Encrypt(new byte[12], buffer.AsSpan(0, 32), buffer.AsSpan(1, 32), tag, default));
        Assert.Throws<ArgumentException>(() => gcm.Decrypt(new byte[12], buffer.AsSpan(0, 32), tag, buffer.AsSpan(8, 32), default));
    }

    [Theory]
    [MemberData(nameof(Implementations))]
    public void AfterDispose_EveryCallIsRefused(bool native)
    {
        var gcm = new Aes256Gcm(new byte[32], native);
        gcm.Dispose();
        gcm.Dispose();
        Assert.Throws<ObjectDisposedException>(() => gcm.Encrypt(new byte[12], new byte[4], new byte[4], new byte[16], default));
        Assert.Throws<ObjectDisposedException>(() => gcm.Decrypt(new byte[12], new byte[4], new byte[16], new byte[4], default));
    }

    /// <summary>Contexts used from many threads at once, each by one thread at a time, as messages use them.</summary>
    [Fact]
    public async Task ManyContexts_OnManyThreads_GiveTheReferenceBytes()
    {
        var key = Enumerable.Range(7, 32).Select(i => (byte)i).ToArray();
        var plaintext = Enumerable.Range(0, 3000).Select(i => (byte)(i * 13)).ToArray();
        var expected = BouncyCastleSeal(key, new byte[12], plaintext, []);
        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() =>
        {
            for (var i = 0; i < 500; i++)
            {
                using var gcm = new Aes256Gcm(key, native: true);
                var (ciphertext, tag) = (new byte[plaintext.Length], new byte[16]);
                gcm.Encrypt(new byte[12], plaintext, ciphertext, tag, default);
                if (!expected.AsSpan().SequenceEqual([.. ciphertext, .. tag]))
                {
                    return false;
                }
            }

            return true;
        })));
        Assert.All(results, Assert.True);
    }

    /// <summary>OpenSSL's <c>SHA512_CTX</c> is 216 bytes; the 256 reserved for it are never written past that.</summary>
    [Fact]
    public void Sha512Context_OpenSslWritesInsideTheReservedSpace()
    {
        var context = default(LibCrypto.Sha512Context);
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes((Span<ulong>)context);
        bytes.Fill(0xAA);
        var digest = new byte[64];
        LibCrypto.Sha512Init(ref context);
        LibCrypto.Sha512Update(ref context, new byte[1000]);
        LibCrypto.Sha512Final(ref context, digest);

        Assert.Equal(SHA512.HashData(new byte[1000]), digest);
        Assert.Equal(256, bytes.Length);
        Assert.True(bytes[216..].ToArray().All(b => b == 0xAA), "OpenSSL wrote past the 216 bytes of its SHA512_CTX");
        Assert.False(bytes[..216].ToArray().All(b => b == 0xAA));
    }

    /// <summary>A refused tag leaves nothing on OpenSSL's per-thread error queue, where .NET's next call on this thread would find it.</summary>
    [Fact]
    public void RefusedTag_LeavesOpenSslsErrorQueueEmpty()
    {
        using var gcm = new Aes256Gcm(new byte[32], native: true);
        var (ciphertext, tag) = (new byte[20], new byte[16]);
        gcm.Encrypt(new byte[12], new byte[20], ciphertext, tag, default);
        tag[0] ^= 1;
        Assert.Throws<AuthenticationTagMismatchException>(() => gcm.Decrypt(new byte[12], ciphertext, tag, new byte[20], default));
        Assert.Equal((nuint?)0, LibCrypto.PeekError());
    }

    [Theory]
    [InlineData(false, false, null, false)]
    [InlineData(false, false, "0\n", false)]
    [InlineData(true, false, "0\n", true)]
    [InlineData(false, true, null, true)]
    [InlineData(false, false, "1\n", true)]
    public void FipsMode_AnyOfItsSigns_KeepsDotNetsImplementations(bool defaultProperty, bool providerLoaded, string? kernelFlag, bool required)
    {
        Assert.Equal(required, LibCrypto.FipsRequired(defaultProperty, providerLoaded, kernelFlag));
    }

    private static byte[] BouncyCastleSeal(byte[] key, byte[] iv, byte[] plaintext, byte[] aad)
    {
        var gcm = new GcmBlockCipher(new AesEngine());
        gcm.Init(forEncryption: true, new AeadParameters(new KeyParameter(key), 128, iv, aad));
        var output = new byte[gcm.GetOutputSize(plaintext.Length)];
        var written = gcm.ProcessBytes(plaintext, 0, plaintext.Length, output, 0);
        gcm.DoFinal(output, written);
        return output;
    }
}
