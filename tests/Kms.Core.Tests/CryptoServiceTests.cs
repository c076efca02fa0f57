using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

public sealed class CryptoServiceTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private static readonly Caller Acme = DomainHarness.Acme;
    private static readonly KeyName Orders = KeyName.Parse("tenants/dev/keys/orders", "name");
    private static readonly KeyName Invoices = KeyName.Parse("tenants/dev/keys/invoices", "name");

    private readonly DomainHarness _domain = new();
    private readonly FakeHsm _hsm;
    private readonly CryptoService _crypto;
    private readonly KeyService _keys;

    public CryptoServiceTests()
    {
        _hsm = _domain.FakeHsm!;
        _crypto = _domain.Crypto;
        _keys = _domain.Keys;
    }

    public void Dispose() => _domain.Dispose();

    [Fact]
    public async Task EncryptDecrypt_SameContext_RoundTrips()
    {
        await CreateAsync(Orders);
        var context = Context(("table", "orders"));
        var encrypted = await _crypto.EncryptAsync(Dev, Orders, "secret"u8.ToArray(), context, default);
        using var decrypted = await _crypto.DecryptAsync(Dev, encrypted.Ciphertext, context, default);

        Assert.Equal("secret"u8.ToArray(), decrypted.Plaintext.Span.ToArray());
        Assert.Equal(encrypted.KeyVersion, decrypted.KeyVersion);
        Assert.Equal("tenants/dev/keys/orders/versions/1", encrypted.KeyVersion.ToString());
    }

    [Fact]
    public async Task GenerateDataKey_TwoHsmCalls_RandomThenEncrypt()
    {
        await CreateAsync(Orders);
        _hsm.Calls.Clear();
        using var dataKey = await _crypto.GenerateDataKeyAsync(Dev, Orders, EncryptionContext.Empty, default);

        Assert.Equal(32, dataKey.Plaintext.Length);
        Assert.Equal(new Dictionary<string, int> { ["random"] = 1, ["encrypt"] = 1 }, _hsm.Calls);
    }

    [Fact]
    public async Task GenerateDataKey_HsmAnswersAMalformedCiphertext_TheDataKeyIsZeroed()
    {
        await CreateAsync(Orders);
        _hsm.EncryptAnswersWithoutTag = true;

        await Assert.ThrowsAsync<ArgumentException>(() => _crypto.GenerateDataKeyAsync(Dev, Orders, EncryptionContext.Empty, default));

        var dataKey = _hsm.LastEncryptPlaintext!;
        Assert.Equal(32, dataKey.Length);
        Assert.Equal(new byte[32], dataKey);
    }

    [Fact]
    public async Task GenerateDataKey_DecryptReturnsSameKey()
    {
        await CreateAsync(Orders);
        using var dataKey = await _crypto.GenerateDataKeyAsync(Dev, Orders, EncryptionContext.Empty, default);
        using var decrypted = await _crypto.DecryptAsync(Dev, dataKey.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal(dataKey.Plaintext.Span.ToArray(), decrypted.Plaintext.Span.ToArray());
    }

    [Fact]
    public async Task Decrypt_OtherContext_DecryptionFailed()
    {
        await CreateAsync(Orders);
        var encrypted = await _crypto.EncryptAsync(Dev, Orders, [1, 2, 3], Context(("a", "1")), default);
        await AssertDecryptionFailed(Dev, encrypted.Ciphertext, Context(("a", "2")));
        await AssertDecryptionFailed(Dev, encrypted.Ciphertext, EncryptionContext.Empty);
    }

    [Fact]
    public async Task Decrypt_OtherTenant_DecryptionFailedLikeGarbage()
    {
        await CreateAsync(Orders);
        var encrypted = await _crypto.EncryptAsync(Dev, Orders, [1, 2, 3], EncryptionContext.Empty, default);
        await AssertDecryptionFailed(Acme, encrypted.Ciphertext, EncryptionContext.Empty);
    }

    [Fact]
    public async Task Decrypt_HeaderRetargetedToAnotherKeyVersion_DecryptionFailed()
    {
        await CreateAsync(Orders);
        var invoices = await CreateAsync(Invoices);
        var encrypted = await _crypto.EncryptAsync(Dev, Orders, [1, 2, 3], EncryptionContext.Empty, default);
        invoices.Primary.Id.WriteTo(encrypted.Ciphertext.AsSpan(1));
        await AssertDecryptionFailed(Dev, encrypted.Ciphertext, EncryptionContext.Empty);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(17)]
    [InlineData(30)]
    [InlineData(-1)]
    public async Task Decrypt_OneByteFlipped_DecryptionFailed(int position)
    {
        await CreateAsync(Orders);
        var blob = (await _crypto.EncryptAsync(Dev, Orders, [1, 2, 3, 4], EncryptionContext.Empty, default)).Ciphertext;
        blob[position < 0 ? blob.Length + position : position] ^= 0x01;
        await AssertDecryptionFailed(Dev, blob, EncryptionContext.Empty);
    }

    [Fact]
    public async Task Decrypt_Truncated_DecryptionFailed()
    {
        await CreateAsync(Orders);
        var blob = (await _crypto.EncryptAsync(Dev, Orders, [1, 2, 3, 4], EncryptionContext.Empty, default)).Ciphertext;
        await AssertDecryptionFailed(Dev, blob[..^1], EncryptionContext.Empty);
        await AssertDecryptionFailed(Dev, blob[..20], EncryptionContext.Empty);
    }

    [Fact]
    public async Task Decrypt_UnknownKeyVersion_DecryptionFailed()
    {
        var blob = CiphertextBlob.Format(KeyVersionId.NewId(), new byte[12], new byte[40]);
        await AssertDecryptionFailed(Dev, blob, EncryptionContext.Empty);
    }

    [Fact]
    public async Task Encrypt_EmptyPlaintext_InvalidArgument()
    {
        await CreateAsync(Orders);
        var e = await Assert.ThrowsAsync<KmsException>(() => _crypto.EncryptAsync(Dev, Orders, [], EncryptionContext.Empty, default));
        Assert.Equal("plaintext", e.Field);
    }

    [Fact]
    public async Task Encrypt_OverLimit_InvalidArgument_AtLimit_Accepted()
    {
        await CreateAsync(Orders);
        var e = await Assert.ThrowsAsync<KmsException>(() => _crypto.EncryptAsync(Dev, Orders, new byte[Limits.MaxEncryptPlaintextBytes + 1], EncryptionContext.Empty, default));
        Assert.Equal("plaintext", e.Field);

        var encrypted = await _crypto.EncryptAsync(Dev, Orders, new byte[Limits.MaxEncryptPlaintextBytes], EncryptionContext.Empty, default);
        using var decrypted = await _crypto.DecryptAsync(Dev, encrypted.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal(Limits.MaxEncryptPlaintextBytes, decrypted.Plaintext.Length);
    }

    [Fact]
    public async Task Encrypt_MissingKey_NotFound()
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _crypto.EncryptAsync(Dev, Orders, [1], EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.NotFound, e.Code);
    }

    [Fact]
    public async Task Encrypt_OtherTenantsKey_NotFound()
    {
        await CreateAsync(Orders);
        var e = await Assert.ThrowsAsync<KmsException>(() => _crypto.EncryptAsync(Acme, Orders, [1], EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.NotFound, e.Code);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1025)]
    public async Task GenerateRandom_OutOfRange_InvalidArgument(int length)
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _crypto.GenerateRandomAsync(length, default));
        Assert.Equal("length_bytes", e.Field);
    }

    [Fact]
    public async Task DataKeyResult_Dispose_ZeroesPlaintext()
    {
        await CreateAsync(Orders);
        var dataKey = await _crypto.GenerateDataKeyAsync(Dev, Orders, EncryptionContext.Empty, default);
        var buffer = dataKey.Plaintext.UnsafeArray;
        dataKey.Dispose();
        Assert.All(buffer, b => Assert.Equal(0, b));
        Assert.Throws<ObjectDisposedException>(() => _ = dataKey.Plaintext.Length);
        Assert.Equal("***", dataKey.Plaintext.ToString());
    }

    [Fact]
    public async Task ReEncrypt_ThePlaintextBetweenTheTwoKeys_ZeroedOnceItReturns()
    {
        await CreateAsync(Orders);
        var encrypted = await _crypto.EncryptAsync(Dev, Orders, "secret"u8.ToArray(), EncryptionContext.Empty, default);

        var moved = await _crypto.ReEncryptAsync(Dev, encrypted.Ciphertext, EncryptionContext.Empty, Orders, EncryptionContext.Empty, default);

        // The array the HSM was given to seal under the destination is the decrypted plaintext itself.
        var between = _hsm.LastEncryptPlaintext!;
        Assert.Equal(6, between.Length);
        Assert.All(between, b => Assert.Equal(0, b));
        using var decrypted = await _crypto.DecryptAsync(Dev, moved.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal("secret"u8.ToArray(), decrypted.Plaintext.Span.ToArray());
    }

    private async Task<Key> CreateAsync(KeyName name) =>
        (await _keys.CreateKeyAsync(Dev, new CreateKeyCommand(name.Tenant, name.KeyId, KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null), default)).Key;

    private async Task AssertDecryptionFailed(Caller caller, byte[] blob, EncryptionContext context)
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _crypto.DecryptAsync(caller, blob, context, default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);
        Assert.Equal(KmsErrors.DecryptionFailedMessage, e.Message);
    }

    private static EncryptionContext Context(params (string Key, string Value)[] entries) =>
        EncryptionContext.Create(entries.Select(e => new KeyValuePair<string, string>(e.Key, e.Value)));
}
