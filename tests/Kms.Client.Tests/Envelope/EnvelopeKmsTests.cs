using System.Text;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Kms.Client.Caching;
using Kms.Client.Envelope;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests.Envelope;

/// <summary>One real server (SoftHSM, TLS, audit) on a fake clock, shared by a test class.</summary>
public sealed class FakeClockServerFixture : IAsyncLifetime
{
    public FakeTimeProvider Time { get; } = new(new DateTimeOffset(2026, 11, 30, 12, 0, 0, TimeSpan.Zero));

    public KmsTestServer Server { get; private set; } = null!;

    public KmsClient Client { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Server = await KmsTestServer.StartAsync(null, null, "dev", services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(Time)));
        Client = Server.CreateClient();
    }

    public async Task DisposeAsync()
    {
        Client.Dispose();
        await Server.DisposeAsync();
    }
}

/// <summary>The envelope SDK against the real server.</summary>
public sealed class EnvelopeKmsTests(FakeClockServerFixture fixture) : IClassFixture<FakeClockServerFixture>
{
    private readonly FakeTimeProvider _time = fixture.Time;
    private readonly KmsClient _client = fixture.Client;

    [Fact]
    public async Task Decrypt_OnlyEndpointPresentsAnUntrustedCertificate_UnavailableRpcExceptionNotADecryptionFailure()
    {
        var key = await NewKeyAsync();
        using var writer = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        var message = await writer.EncryptAsync(new byte[] { 1, 2, 3 });
        using var untrusted = new UntrustedTlsListener();
        using var client = new KmsClient(new KmsClientOptions
        {
            Endpoints = [untrusted.Address],
            CaCertificatePath = fixture.Server.CaCertificatePath,
            ApiToken = fixture.Server.DeveloperToken,
            Retry = { MaxAttempts = 2, BaseBackoff = TimeSpan.FromMilliseconds(10), MaxBackoff = TimeSpan.FromMilliseconds(20) },
        });
        using var reader = new EnvelopeEncryptor(client, new EnvelopeOptions { KeyNames = [key] });

        var e = await Assert.ThrowsAsync<RpcException>(() => reader.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains("UntrustedRoot", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task EncryptingStreamDisposedWithoutComplete_LoggedThroughTheKmsClientsLoggerFactory()
    {
        var key = await NewKeyAsync();
        var sink = new LogSink();
        using var factory = LoggerFactory.Create(b => b.AddProvider(sink));
        using var client = new KmsClient(
            new KmsClientOptions { Endpoint = fixture.Server.Address, CaCertificatePath = fixture.Server.CaCertificatePath, ApiToken = fixture.Server.DeveloperToken },
            factory);
        using var encryptor = new EnvelopeEncryptor(client, new EnvelopeOptions { KeyNames = [key] });

        await using (var encrypting = await encryptor.OpenEncryptingStreamAsync(new MemoryStream()))
        {
            await encrypting.WriteAsync(new byte[10]);
        }

        Assert.Contains(sink.Events, e => e.EventId == 3007 && e.Level == LogLevel.Warning);
    }

    [Fact]
    public async Task RoundTrip_OneShotAndStream_ThroughTheKms()
    {
        var key = await NewKeyAsync();
        using var encryptor = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        var record = "card 4111-1111-1111-1111"u8.ToArray();
        var context = new Dictionary<string, string> { ["table"] = "payments" };

        var message = await encryptor.EncryptAsync(record, context);
        Assert.Equal(record, await encryptor.DecryptAsync(message, context));

        var file = EnvelopeRoundTripTests.Data(300_000);
        var encrypted = new MemoryStream();
        await encryptor.EncryptAsync(new MemoryStream(file), encrypted, context);
        var decrypted = new MemoryStream();
        await encryptor.DecryptAsync(new MemoryStream(encrypted.ToArray()), decrypted, context);
        Assert.Equal(file, decrypted.ToArray());
        Assert.Equal(-1, encrypted.ToArray().AsSpan().IndexOf(file.AsSpan(0, 64)));
    }

    [Fact]
    public async Task Alias_RecordedAsTheKeyItPointsTo()
    {
        var key = await NewKeyAsync();
        var aliasId = $"env-{Guid.NewGuid():N}";
        await _client.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = aliasId, Alias = new Alias { Key = key } });
        var alias = "tenants/dev/aliases/" + aliasId;
        using var writer = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [alias], TrustedKeyNames = [key] });
        using var reader = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });

        var message = await writer.EncryptAsync(new byte[] { 1, 2, 3 });

        Assert.Equal(new byte[] { 1, 2, 3 }, await reader.DecryptAsync(message, EnvelopeEncryptor.NoContext));
        Assert.Equal(new byte[] { 1, 2, 3 }, await writer.DecryptAsync(message, EnvelopeEncryptor.NoContext));
        Assert.True(message.AsSpan().IndexOf(Encoding.UTF8.GetBytes(key)) > 0, "the header records the key");
        Assert.True(message.AsSpan().IndexOf(Encoding.UTF8.GetBytes(alias)) < 0, "the header does not record the alias");
    }

    // Through the KMS, with an alias (whose key is named only in the KMS's answer), both suites: a
    // destination short of the message without its wrapped keys is refused before the cache lease
    // (and the KMS call); one byte short of the exact length passes that check and is refused by the
    // exact one, after the lease; the exact length is written and decrypts.
    [Theory]
    [InlineData(EnvelopeSuite.Committing)]
    [InlineData(EnvelopeSuite.CommittingSigned)]
    public async Task EncryptIntoDestination_TooSmall_RefusedBeforeTheLease_OneByteShortByTheExactCheck(EnvelopeSuite suite)
    {
        var key = await NewKeyAsync();
        var second = await NewKeyAsync();
        var aliasId = $"env-{Guid.NewGuid():N}";
        await _client.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = aliasId, Alias = new Alias { Key = second } });
        using var writer = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key, "tenants/dev/aliases/" + aliasId], Suite = suite, DataKeyCache = new DataKeyCacheOptions() });
        var context = new Dictionary<string, string> { ["table"] = "orders" };
        var plaintext = Encoding.UTF8.GetBytes(new string('x', 1000));

        var tooSmall = await Assert.ThrowsAsync<ArgumentException>(() => writer.EncryptAsync(plaintext.AsMemory(), new byte[1000].AsMemory(), context));
        Assert.Equal(new DataKeyCacheStatistics(0, 0, 0, 0, 0), writer.CacheStatistics);
        Assert.StartsWith("the destination holds 1000 bytes; this message needs at least ", tooSmall.Message, StringComparison.Ordinal);

        var exact = (await writer.EncryptAsync(plaintext, context)).Length;
        var oneShort = await Assert.ThrowsAsync<ArgumentException>(() => writer.EncryptAsync(plaintext.AsMemory(), new byte[exact - 1].AsMemory(), context));
        Assert.StartsWith($"the destination holds {exact - 1} bytes; this message needs {exact} ", oneShort.Message, StringComparison.Ordinal);
        var destination = new byte[exact];
        Assert.Equal(exact, await writer.EncryptAsync(plaintext.AsMemory(), destination.AsMemory(), context));
        Assert.Equal(plaintext, await writer.DecryptAsync(destination, context));
    }

    [Fact]
    public async Task MultiKey_FirstKeyDisabled_SecondKeyDecrypts()
    {
        var siteA = await NewKeyAsync();
        var siteB = await NewKeyAsync();
        using var encryptor = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [siteA, siteB] });
        var message = await encryptor.EncryptAsync(new byte[1000]);

        await _client.Raw.DisableKeyAsync(new DisableKeyRequest { Name = siteA });

        Assert.Equal(new byte[1000], await encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));
        using var onlyA = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [siteA] });
        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => onlyA.DecryptAsync(message, EnvelopeEncryptor.NoContext));
        Assert.Contains($"{siteA}: FailedPrecondition", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DestroyedKeyVersion_FailsClearly()
    {
        var key = await NewKeyAsync();
        using var encryptor = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        var message = await encryptor.EncryptAsync(new byte[10]);
        await _client.RotateKeyAsync(key);
        await _client.Raw.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest
        {
            Name = key + "/versions/1",
            WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(7)),
        });
        _time.Advance(TimeSpan.FromDays(7) + TimeSpan.FromMinutes(1));
        await WaitUntilAsync(async () => (await _client.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = key + "/versions/1" })).KeyVersion.State == KeyState.Destroyed);

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Contains("FailedPrecondition", e.Message, StringComparison.Ordinal);
        Assert.Contains("DESTROYED", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ForgedHeader_NamesTheTrustedKeyButCarriesAnotherKeysDataKey_Refused()
    {
        var trusted = await NewKeyAsync();
        var attackers = await NewKeyAsync();
        using var forger = new EnvelopeEncryptor(new RenamingProvider(new KmsEnvelopeKeyProvider(_client), attackers), new EnvelopeOptions { KeyNames = [trusted] });
        var forged = await forger.EncryptAsync("pay mallory"u8.ToArray());
        using var reader = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [trusted] });

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(forged, EnvelopeEncryptor.NoContext));

        Assert.Contains("decryption failed", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ForgedHeader_WrappedKeyNamesAVersionOfAMacKey_TheKmsAnswersAsForAnUnknownVersion()
    {
        // The server answered FailedPrecondition "key tenants/dev/keys/... has purpose MAC, not
        // ENCRYPT_DECRYPT": the reader's error named a key the message never mentioned.
        var key = await NewKeyAsync();
        var mac = (await _client.CreateKeyAsync("tenants/dev", $"env-mac-{Guid.NewGuid():N}", KeyPurpose.Mac)).Name;
        using var encryptor = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        var message = await encryptor.EncryptAsync(new byte[10]);
        var store = fixture.Server.Services.GetRequiredService<Kms.Core.Ports.IKeyStore>();
        async Task<byte[]> IdOfAsync(string name) =>
            (await store.GetVersionAsync(Kms.Core.Names.KeyVersionName.Parse($"{name}/versions/1", "name"), default))!.Id.ToBytes();
        var keyVersionId = await IdOfAsync(key);
        var at = message.AsSpan().IndexOf(keyVersionId);
        Assert.True(at > 0);
        async Task<string> FailureNamingAsync(byte[] id)
        {
            var forged = message.ToArray();
            id.CopyTo(forged, at);
            return (await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(forged, EnvelopeEncryptor.NoContext))).Message;
        }

        var unknown = await FailureNamingAsync(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));
        Assert.Contains("InvalidArgument decryption failed", unknown, StringComparison.Ordinal);
        Assert.Equal(unknown, await FailureNamingAsync(await IdOfAsync(mac)));
    }

    [Fact]
    public async Task HeaderBitFlips_AgainstTheKms_AllFail()
    {
        var key = await NewKeyAsync();
        using var encryptor = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key], FrameLength = 64 });
        var context = new Dictionary<string, string> { ["k"] = "v" };
        var message = await encryptor.EncryptAsync(new byte[100], context);
        var headerLength = message.Length - 84 - 28 - 36;

        for (var i = 0; i < headerLength; i++)
        {
            var altered = message.ToArray();
            altered[i] ^= (byte)(1 << (i % 8));
            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(altered, EnvelopeEncryptor.AnyContext));
        }
    }

    [Fact]
    public async Task WrappedKeyWithAnotherContext_RefusedByTheKms()
    {
        var key = await NewKeyAsync();
        using var encryptor = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        var message = await encryptor.EncryptAsync(new byte[10], new Dictionary<string, string> { ["tenant"] = "a" });
        var altered = message.ToArray();
        var at = altered.AsSpan().IndexOf("tenanta"u8.ToArray().AsSpan(0, 6));
        Assert.True(at > 0);
        altered[at + 10] = (byte)'b';

        // The reader expects the context the altered header claims: only the KMS can tell.
        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(altered, new Dictionary<string, string> { ["tenant"] = "b" }));

        Assert.Contains("InvalidArgument", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HundredConcurrentEncryptions_ColdCache_OneGenerateDataKeyCall()
    {
        var key = await NewKeyAsync();
        var counting = new CountingProvider(new KmsEnvelopeKeyProvider(_client));
        using var encryptor = new EnvelopeEncryptor(counting, new EnvelopeOptions { KeyNames = [key], DataKeyCache = new DataKeyCacheOptions() });

        var messages = await Task.WhenAll(Enumerable.Range(0, 100).Select(i => Task.Run(() => encryptor.EncryptAsync(new byte[] { (byte)i }))));

        Assert.Equal(1, counting.GenerateCalls);
        using var reader = new EnvelopeEncryptor(_client, new EnvelopeOptions { KeyNames = [key] });
        Assert.Equal(new byte[] { 42 }, await reader.DecryptAsync(messages[42], EnvelopeEncryptor.NoContext));
    }

    private async Task<string> NewKeyAsync() => (await _client.CreateKeyAsync("tenants/dev", $"env-{Guid.NewGuid():N}")).Name;

    // Waits for the lifecycle worker without moving the clock again: its PeriodicTimer keeps a tick
    // that passed during a pass (see LifecycleEndToEndTests.WaitUntilAsync).
    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the background job did not act within 30 s");
            await Task.Delay(50);
        }
    }

    /// <summary>A malicious writer: wraps the data key under <paramref name="realKey"/> and records the name of the key asked for.</summary>
    private sealed class RenamingProvider(IEnvelopeKeyProvider inner, string realKey) : IEnvelopeKeyProvider
    {
        public async Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
        {
            var real = await inner.GenerateDataKeyAsync(realKey, context, cancellationToken);
            return new GeneratedDataKey(real.Plaintext.ToArray(), real.Wrapped with { KeyName = keyName });
        }

        public Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
            inner.WrapDataKeyAsync(keyName, dataKey, context, cancellationToken);

        public Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
            inner.UnwrapDataKeyAsync(wrappedKey, context, cancellationToken);
    }

    private sealed class CountingProvider(IEnvelopeKeyProvider inner) : IEnvelopeKeyProvider
    {
        private int _generateCalls;

        public int GenerateCalls => _generateCalls;

        public Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _generateCalls);
            return inner.GenerateDataKeyAsync(keyName, context, cancellationToken);
        }

        public Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
            inner.WrapDataKeyAsync(keyName, dataKey, context, cancellationToken);

        public Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
            inner.UnwrapDataKeyAsync(wrappedKey, context, cancellationToken);
    }
}
