using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Kms.Client.Caching;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// An <see cref="EnvelopeEncryptor"/> on a <see cref="KmsClient"/> whose KMS answers wrongly (a
/// bug, an old version, or a man in the middle past TLS): a clear exception, never a message
/// under a short or known key or one the encryptor cannot read, what was received zeroed, and
/// no wrong answer kept in the data-key cache for later messages.
/// </summary>
public sealed class HostileKmsAnswerTests
{
    private const string Key = "tenants/t/keys/a";

    private static readonly Dictionary<string, string> Context = new() { ["table"] = "orders" };

    /// <summary>Data key lengths other than 32 bytes, from none to a megabyte.</summary>
    public static TheoryData<int> WrongKeyLengths => new() { 0, 16, 31, 33, 1 << 20 };

    [Theory]
    [MemberData(nameof(WrongKeyLengths))]
    public async Task GenerateDataKey_PlaintextOfAnotherLength_Refused_Zeroed_NothingWritten_NothingCached(int length)
    {
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        kms.OnGenerate = (_, honest) => With(honest, kms.Secret(Filled(length)));

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.EncryptAsync("x"u8.ToArray(), Context));
        Assert.Contains($"{length}-byte data key", e.Message, StringComparison.Ordinal);
        var destination = new MemoryStream();
        await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.OpenEncryptingStreamAsync(destination, Context, plaintextLength: 1));
        Assert.Equal(0, destination.Length);
        Assert.True(kms.AllSentZeroed);

        // The next honest answer serves: the wrong one was not cached.
        kms.OnGenerate = null;
        var message = await encryptor.EncryptAsync("x"u8.ToArray(), Context);
        Assert.Equal("x"u8.ToArray(), await encryptor.DecryptAsync(message, Context));
        Assert.Equal(3, kms.GenerateCalls);
    }

    [Fact]
    public async Task GenerateDataKey_AKeyOfZeros_Refused_NoMessageUnderAKnownKey()
    {
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        kms.OnGenerate = (_, honest) => With(honest, kms.Secret(new byte[32]));

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.EncryptAsync("secret"u8.ToArray(), Context));

        Assert.Contains("zeros", e.Message, StringComparison.Ordinal);
        kms.OnGenerate = null;
        Assert.Equal("x"u8.ToArray(), await encryptor.DecryptAsync(await encryptor.EncryptAsync("x"u8.ToArray(), Context), Context));
    }

    [Fact]
    public async Task GenerateDataKey_AnswerForAnotherKey_Refused_NoMessageTheEncryptorCannotRead()
    {
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        kms.OnGenerate = (_, honest) =>
        {
            honest.Plaintext = kms.Secret(RandomNumberGenerator.GetBytes(32));
            honest.KeyVersion = "tenants/t/keys/other/versions/3";
            return honest;
        };

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.EncryptAsync("x"u8.ToArray(), Context));

        Assert.Contains("tenants/t/keys/other", e.Message, StringComparison.Ordinal);
        Assert.Contains(Key, e.Message, StringComparison.Ordinal);
        Assert.True(kms.AllSentZeroed);
        kms.OnGenerate = null;
        Assert.Equal("x"u8.ToArray(), await encryptor.DecryptAsync(await encryptor.EncryptAsync("x"u8.ToArray(), Context), Context));
    }

    [Fact]
    public async Task Encrypt_WrappingUnderTheSecondKey_AnswerForAnotherKey_Refused()
    {
        using var kms = new ScriptedKms();
        using var encryptor = new EnvelopeEncryptor(kms.Client, new EnvelopeOptions { KeyNames = [Key, "tenants/t/keys/b"] });
        kms.OnEncrypt = (_, honest) =>
        {
            honest.KeyVersion = "tenants/t/keys/other/versions/1";
            return honest;
        };

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.EncryptAsync("x"u8.ToArray(), Context));

        Assert.Contains("tenants/t/keys/b", e.Message, StringComparison.Ordinal);
        Assert.True(kms.AllSentZeroed);
    }

    [Theory]
    [InlineData("tenants/t/aliases/other/versions/1")]
    [InlineData("tenants/t/versions/1")]
    [InlineData("tenants/other/keys/target/versions/1")]
    [InlineData("tenants/t/keys/target/versions/1/versions/2")]
    [InlineData("tenants/t/keys/bad.id/versions/1")]
    public async Task GenerateDataKey_UnderAnAlias_AnswerNamingNoKeyOfTheAliasesTenant_Refused(string keyVersion)
    {
        // An alias points at a key of its own tenant: an answer naming one of another tenant, or
        // a name that is not a key's (its version cut off it once, a key id no key has), would
        // put a name in the header that no reader trusts.
        using var kms = new ScriptedKms();
        using var encryptor = new EnvelopeEncryptor(kms.Client, new EnvelopeOptions { KeyNames = ["tenants/t/aliases/pii"], TrustedKeyNames = [kms.AliasTarget] });
        var message = await encryptor.EncryptAsync("x"u8.ToArray(), Context);
        Assert.Equal("x"u8.ToArray(), await encryptor.DecryptAsync(message, Context));
        kms.OnGenerate = (_, honest) =>
        {
            honest.Plaintext = kms.Secret(RandomNumberGenerator.GetBytes(32));
            honest.KeyVersion = keyVersion;
            return honest;
        };

        await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.EncryptAsync("x"u8.ToArray(), Context));
        Assert.True(kms.AllSentZeroed);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1025)]
    [InlineData(1 << 20)]
    public async Task GenerateDataKey_WrappedKeyEmptyOrOverTheHeaderLimit_RefusedAsTheKmsAnswer_NothingWritten(int length)
    {
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        kms.OnGenerate = (_, honest) =>
        {
            honest.Plaintext = kms.Secret(RandomNumberGenerator.GetBytes(32));
            honest.Ciphertext = ByteString.CopyFrom(new byte[length]);
            return honest;
        };
        var destination = new MemoryStream();

        // Not an ArgumentException: the caller's arguments were fine, the answer was not.
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.OpenEncryptingStreamAsync(destination, Context, plaintextLength: 1));

        Assert.Contains($"{length} bytes", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, destination.Length);
        Assert.True(kms.AllSentZeroed);
    }

    [Theory]
    [InlineData("")]
    [InlineData("garbage")]
    [InlineData(Key)]
    public async Task GenerateDataKey_NoKeyVersionName_InternalRpcException_Zeroed(string keyVersion)
    {
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        kms.OnGenerate = (_, honest) =>
        {
            honest.Plaintext = kms.Secret(RandomNumberGenerator.GetBytes(32));
            honest.KeyVersion = keyVersion;
            return honest;
        };

        var e = await Assert.ThrowsAsync<RpcException>(() => encryptor.EncryptAsync("x"u8.ToArray(), Context));

        Assert.Equal(StatusCode.Internal, e.StatusCode);
        Assert.True(kms.AllSentZeroed);
    }

    [Theory]
    [MemberData(nameof(WrongKeyLengths))]
    public async Task Decrypt_KeyOfAnotherLength_Refused_Zeroed_NotCached(int length)
    {
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        var message = await encryptor.EncryptAsync("x"u8.ToArray(), Context);
        kms.OnDecrypt = (_, honest) => With(honest, kms.Secret(Filled(length)));

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, Context));
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), Context));
        Assert.True(kms.AllSentZeroed);

        kms.OnDecrypt = null;
        Assert.Equal("x"u8.ToArray(), await encryptor.DecryptAsync(message, Context));
    }

    [Fact]
    public async Task Decrypt_AnswerForAnotherKey_Refused_Zeroed()
    {
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        var message = await encryptor.EncryptAsync("x"u8.ToArray(), Context);
        kms.OnDecrypt = (_, honest) =>
        {
            honest.KeyVersion = "tenants/t/keys/other/versions/1";
            honest.Plaintext = kms.Secret(RandomNumberGenerator.GetBytes(32));
            return honest;
        };

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, Context));

        Assert.True(kms.AllSentZeroed);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Decrypt_AWrongDataKeyOfTheRightLength_NotKeptInTheDecryptionCache(bool stream)
    {
        // One wrong answer (a 32-byte key that is not the message's) must not fail every later
        // read of the messages under that wrapped key for as long as DecryptionMaxAge.
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        var message = await encryptor.EncryptAsync("x"u8.ToArray(), Context);
        kms.OnDecrypt = (_, honest) => With(honest, kms.Secret(RandomNumberGenerator.GetBytes(32)));

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => Decrypt(encryptor, message, stream));
        Assert.Equal("envelope decryption failed", e.Message);

        kms.OnDecrypt = null;
        Assert.Equal("x"u8.ToArray(), await Decrypt(encryptor, message, stream));
        Assert.Equal("x"u8.ToArray(), await Decrypt(encryptor, message, stream));
        Assert.Equal(2, kms.DecryptCalls);
        Assert.True(kms.AllSentZeroed);
    }

    [Fact]
    public async Task Decrypt_AForgedCommitment_DropsTheCachedKey_TheNextReadAsksTheKmsAgain()
    {
        // The other side of not keeping a wrong key: a message forged under a cached wrapped key
        // costs the next honest read one KMS call, nothing more.
        using var kms = new ScriptedKms();
        using var encryptor = Cached(kms);
        var message = await encryptor.EncryptAsync("x"u8.ToArray(), Context);
        Assert.Equal("x"u8.ToArray(), await encryptor.DecryptAsync(message, Context));
        var forged = message.ToArray();
        forged[EnvelopeFormat.FixedPrefixLength - 1] ^= 1; // the message id's last byte: another derived key and commitment

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(forged, Context));

        Assert.Equal("x"u8.ToArray(), await encryptor.DecryptAsync(message, Context));
        Assert.Equal(2, kms.DecryptCalls);
    }

    private static async Task<byte[]> Decrypt(EnvelopeEncryptor encryptor, byte[] message, bool stream)
    {
        if (!stream)
        {
            return await encryptor.DecryptAsync(message, Context);
        }

        var output = new MemoryStream();
        await encryptor.DecryptAsync(new MemoryStream(message), output, Context);
        return output.ToArray();
    }

    private static EnvelopeEncryptor Cached(ScriptedKms kms) =>
        new(kms.Client, new EnvelopeOptions { KeyNames = [Key], DataKeyCache = new DataKeyCacheOptions { DecryptionMaxAge = TimeSpan.FromMinutes(5) } });

    private static byte[] Filled(int length)
    {
        var bytes = new byte[length];
        Array.Fill(bytes, (byte)0x5A);
        return bytes;
    }

    private static Kms.Contracts.V1.GenerateDataKeyResponse With(Kms.Contracts.V1.GenerateDataKeyResponse response, ByteString plaintext)
    {
        response.Plaintext = plaintext;
        return response;
    }

    private static Kms.Contracts.V1.DecryptResponse With(Kms.Contracts.V1.DecryptResponse response, ByteString plaintext)
    {
        response.Plaintext = plaintext;
        return response;
    }
}
