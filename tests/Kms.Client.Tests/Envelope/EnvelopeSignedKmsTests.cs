using System.Security.Cryptography;
using Grpc.Core;
using Kms.Client.Envelope;
using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Client.Tests.Envelope;

/// <summary>Suite 0x0002 against the real server (SoftHSM): the forgery it exists to stop.</summary>
public sealed class EnvelopeSignedKmsTests(FakeClockServerFixture fixture) : IClassFixture<FakeClockServerFixture>
{
    private static readonly Dictionary<string, string> Context = new() { ["table"] = "payments", ["row"] = "7" };

    private readonly KmsClient _client = fixture.Client;

    [Fact]
    public async Task RoundTrip_OneShotAndStream_ThroughTheKms()
    {
        var key = (await _client.CreateKeyAsync("tenants/dev", $"env-signed-{Guid.NewGuid():N}")).Name;
        using var encryptor = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key], Suite = EnvelopeSuite.CommittingSigned, RequireSignedMessages = true });
        var record = "card 4111-1111-1111-1111"u8.ToArray();

        var message = await encryptor.EncryptAsync(record, Context);
        Assert.Equal(record, await encryptor.DecryptAsync(message, Context));

        var file = EnvelopeRoundTripTests.Data(300_000);
        var encrypted = new MemoryStream();
        await encryptor.EncryptAsync(new MemoryStream(file), encrypted, Context);
        var decrypted = new MemoryStream();
        await encryptor.DecryptAsync(new MemoryStream(encrypted.ToArray()), decrypted, Context);
        Assert.Equal(file, decrypted.ToArray());
    }

    // With the cache on, the writer's messages share one data key and one key pair: what the
    // forger holds after reading one is then good for all of them, and must still forge none.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DecryptOnlyPrincipal_WritesANewBodyAndSignsIt_EveryWayRefused(bool cached)
    {
        var (key, forgerClient) = await KeyWithDecryptOnlyForgerAsync();
        using var forgerOwned = forgerClient;
        using var writer = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key], Suite = EnvelopeSuite.CommittingSigned, DataKeyCache = cached ? new Kms.Client.Caching.DataKeyCacheOptions() : null });
        using var reader = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        using var strictReader = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key], RequireSignedMessages = true });
        var original = await writer.EncryptAsync("pay alice 10"u8.ToArray(), Context);
        var next = await writer.EncryptAsync("pay bob 20"u8.ToArray(), Context);
        Assert.Equal(cached, EnvelopeHeader.Parse(next.AsSpan(0, EnvelopeHeader.Measure(next))).EncodedContext.AsSpan()
            .SequenceEqual(EnvelopeHeader.Parse(original.AsSpan(0, EnvelopeHeader.Measure(original))).EncodedContext));

        // The forger reads the message and holds its data key: it is a real decryptor.
        using var forgerEnvelopes = new EnvelopeEncryptor(forgerClient, new EnvelopeOptions { KeyNames = [key], Suite = EnvelopeSuite.CommittingSigned });
        Assert.Equal("pay alice 10"u8.ToArray(), await forgerEnvelopes.DecryptAsync(original, Context));
        var header = EnvelopeHeader.Parse(original.AsSpan(0, EnvelopeHeader.Measure(original)));
        using var stolen = await new KmsEnvelopeKeyProvider(forgerClient).UnwrapDataKeyAsync(header.WrappedKeys[0], header.Context, default);

        // It cannot have a data key bound to a public key of its own: the KMS refuses it a new one.
        var denied = await Assert.ThrowsAsync<RpcException>(() => forgerEnvelopes.EncryptAsync("pay mallory 1000"u8.ToArray(), Context));
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);

        // 1. A new body signed with its own key pair, its public key in the context, the stolen
        //    wrapped data key: the KMS does not unwrap it under the changed context.
        using var own = EnvelopeSignature.ForWriting();
        var ownContext = new Dictionary<string, string>(Context) { [EnvelopeFormat.PublicKeyContextKey] = own.EncodedPublicKey };
        var withOwnKey = Forge(stolen.Plaintext.Span, EnvelopeContext.Encode(ownContext), header.WrappedKeys, own);
        var refused = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(withOwnKey, Context));
        Assert.Contains("InvalidArgument", refused.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(withOwnKey), new MemoryStream(), Context));

        // 2. The original context (the writer's public key), a new body signed with its own key:
        //    the KMS unwraps, the signature does not verify.
        using var other = EnvelopeSignature.ForWriting();
        var underWritersKey = Forge(stolen.Plaintext.Span, header.EncodedContext, header.WrappedKeys, other);
        var opaque = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(underWritersKey, Context));
        Assert.Equal("envelope decryption failed", opaque.Message);
        var output = new MemoryStream();
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(underWritersKey), output, Context));
        Assert.Equal(0, output.Length);

        // 3. Unsigned (0x0001) under the original context: refused by any reader (a 0x0001
        //    message never carries a public key); without the public key, the KMS refuses it.
        var downgraded = Forge(stolen.Plaintext.Span, header.EncodedContext, header.WrappedKeys, null);
        Assert.Equal("envelope decryption failed", (await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(downgraded, Context))).Message);
        var stripped = Forge(stolen.Plaintext.Span, EnvelopeContext.Encode(Context), header.WrappedKeys, null);
        Assert.Contains("InvalidArgument", (await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(stripped, Context))).Message, StringComparison.Ordinal);
        Assert.StartsWith("the message is not signed", (await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => strictReader.DecryptAsync(stripped, Context))).Message, StringComparison.Ordinal);

        // The originals still read, by both readers.
        Assert.Equal("pay alice 10"u8.ToArray(), await reader.DecryptAsync(original, Context));
        Assert.Equal("pay alice 10"u8.ToArray(), await strictReader.DecryptAsync(original, Context));
        Assert.Equal("pay bob 20"u8.ToArray(), await strictReader.DecryptAsync(next, Context));
    }

    // A reader that acts on streamed plaintext (StreamSignedMessages off) is handed none of a body
    // the decrypt-only principal wrote under the writer's header, where a default reader is handed
    // every frame but the last; it still reads the writer's message, in one shot.
    [Fact]
    public async Task DecryptOnlyPrincipal_ForgedBody_ReaderNotStreamingSignedMessages_ReleasesNothing()
    {
        var (key, forgerClient) = await KeyWithDecryptOnlyForgerAsync();
        using var forgerOwned = forgerClient;
        using var writer = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key], Suite = EnvelopeSuite.CommittingSigned });
        using var reader = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        using var carefulReader = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key], StreamSignedMessages = false });
        var original = await writer.EncryptAsync("pay alice 10"u8.ToArray(), Context);
        var header = EnvelopeHeader.Parse(original.AsSpan(0, EnvelopeHeader.Measure(original)));
        using var stolen = await new KmsEnvelopeKeyProvider(forgerClient).UnwrapDataKeyAsync(header.WrappedKeys[0], header.Context, default);
        using var forgersKey = EnvelopeSignature.ForWriting();
        var body = System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("pay mallory 1000; ", 10)));
        var forged = Forge(stolen.Plaintext.Span, header.EncodedContext, header.WrappedKeys, forgersKey, body);

        var released = new MemoryStream();
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(forged), released, Context));
        var withheld = new MemoryStream();
        var refused = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => carefulReader.DecryptAsync(new MemoryStream(forged), withheld, Context));

        Assert.Equal(body[..128], released.ToArray());
        Assert.Equal(0, withheld.Length);
        Assert.StartsWith("the message is signed (suite 0x0002) and this reader does not stream signed messages", refused.Message, StringComparison.Ordinal);
        Assert.Null(refused.InnerException);
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => carefulReader.OpenDecryptingStreamAsync(new MemoryStream(original), Context));
        Assert.Equal("envelope decryption failed", (await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => carefulReader.DecryptAsync(forged, Context))).Message);
        Assert.Equal("pay alice 10"u8.ToArray(), await carefulReader.DecryptAsync(original, Context));
    }

    /// <summary>A new key the fixture's principal may ENCRYPT and DECRYPT under, and a client of a principal that, by the key's policy, may only DECRYPT (the caller disposes it).</summary>
    private async Task<(string Key, KmsClient Forger)> KeyWithDecryptOnlyForgerAsync()
    {
        var key = (await _client.CreateKeyAsync("tenants/dev", $"env-signed-{Guid.NewGuid():N}")).Name;
        var forgerId = $"forger-{Guid.NewGuid():N}"[..24];
        var forgerToken = await fixture.Server.CreatePrincipalWithTokenAsync(forgerId, "dev", "key-user");
        await _client.SetKeyPolicyAsync(key,
        [
            new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } },
            new KeyPolicyEntry { Principal = "token:" + forgerId, Operations = { "DECRYPT" } },
        ]);
        return (key, new KmsClient(new KmsClientOptions { Endpoint = fixture.Server.Address, CaCertificatePath = fixture.Server.CaCertificatePath, ApiToken = forgerToken }));
    }

    /// <summary>A whole message over a stolen data key, written with the SDK's own writer (suite 0x0002 if signed).</summary>
    private static byte[] Forge(ReadOnlySpan<byte> dataKey, byte[] encodedContext, IReadOnlyList<WrappedDataKey> wrapped, EnvelopeSignature? signature, byte[]? body = null) =>
        EnvelopeMessage.Seal(dataKey, RandomNumberGenerator.GetBytes(32), encodedContext, wrapped, 64, body ?? "pay mallory 1000"u8.ToArray(), [], signature);
}
