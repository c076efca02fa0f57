using Grpc.Core;
using Kms.Client.Tests.Failover;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Kms.Client.Tests;

public sealed class KmsClientServiceCollectionExtensionsTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
{
    [Fact]
    public async Task AddKmsClient_Resolved_OneWorkingClientDisposedWithTheContainer()
    {
        var services = new ServiceCollection().AddKmsClient(o =>
        {
            o.Endpoint = fixture.Server.Address;
            o.CaCertificatePath = fixture.Server.CaCertificatePath;
            o.ApiToken = fixture.Server.DeveloperToken;
        });

        KmsClient client;
        await using (var provider = services.BuildServiceProvider())
        {
            client = provider.GetRequiredService<KmsClient>();
            Assert.Same(client, provider.GetRequiredService<KmsClient>());
            Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
        }

        await Assert.ThrowsAsync<ObjectDisposedException>(() => client.GenerateRandomAsync(8));
    }

    [Fact]
    public async Task AddKmsEnvelopeEncryptor_Resolved_EncryptsThroughTheRegisteredClient_CacheZeroedWithTheContainer()
    {
        using var setup = fixture.Server.CreateClient();
        var key = (await setup.CreateKeyAsync("tenants/dev", $"di-{Guid.NewGuid():N}")).Name;
        var services = new ServiceCollection()
            .AddKmsClient(o =>
            {
                o.Endpoint = fixture.Server.Address;
                o.CaCertificatePath = fixture.Server.CaCertificatePath;
                o.ApiToken = fixture.Server.DeveloperToken;
            })
            .AddKmsEnvelopeEncryptor(o =>
            {
                o.KeyNames = [key];
                o.DataKeyCache = new Kms.Client.Caching.DataKeyCacheOptions();
            });

        List<Kms.Client.Caching.CachedDataKey> cached;
        await using (var provider = services.BuildServiceProvider())
        {
            var envelopes = provider.GetRequiredService<Kms.Client.Envelope.EnvelopeEncryptor>();
            Assert.Same(envelopes, provider.GetRequiredService<Kms.Client.Envelope.EnvelopeEncryptor>());
            var message = await envelopes.EncryptAsync("hello"u8.ToArray());
            Assert.Equal("hello"u8.ToArray(), await envelopes.DecryptAsync(message, Kms.Client.Envelope.EnvelopeEncryptor.NoContext));
            cached = [.. envelopes.Cache!.Entries];
            Assert.NotEmpty(cached);
        }

        Assert.All(cached, entry => Assert.True(entry.IsZeroed));
    }

    [Fact]
    public void AddKmsEnvelopeEncryptor_Twice_Refused()
    {
        var services = new ServiceCollection().AddKmsEnvelopeEncryptor(o => o.KeyNames = ["tenants/dev/keys/a"]);

        var e = Assert.Throws<InvalidOperationException>(() => services.AddKmsEnvelopeEncryptor(o => o.KeyNames = ["tenants/dev/keys/b"]));

        Assert.Contains("registered already", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AddKmsClient_ConfigurationSection_BindsEndpointsTimeoutAndRetry()
    {
        var refusing = DeadEndpoints.Refusing();
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Kms:Endpoints:0"] = refusing.ToString(),
            ["Kms:Endpoints:1"] = fixture.Server.Address.ToString(),
            ["Kms:CaCertificatePath"] = fixture.Server.CaCertificatePath,
            ["Kms:ApiToken"] = fixture.Server.DeveloperToken,
            ["Kms:CallTimeout"] = "00:00:12",
            ["Kms:HealthCheckInterval"] = "00:01:00",
            ["Kms:Retry:MaxAttempts"] = "3",
            ["Kms:Retry:BaseBackoff"] = "00:00:00.050",
        }).Build();
        var counter = new AttemptCounter();
        await using var provider = new ServiceCollection()
            .AddKmsClient(configuration.GetSection("Kms"), o => o.Interceptors.Add(counter))
            .BuildServiceProvider();

        var options = provider.GetRequiredService<IOptions<KmsClientOptions>>().Value;
        Assert.Equal([refusing, fixture.Server.Address], options.Endpoints);
        Assert.Equal((TimeSpan.FromSeconds(12), TimeSpan.FromMinutes(1)), (options.CallTimeout, options.HealthCheckInterval));
        Assert.Equal((3, TimeSpan.FromMilliseconds(50)), (options.Retry.MaxAttempts, options.Retry.BaseBackoff));

        var client = provider.GetRequiredService<KmsClient>();
        await client.GenerateRandomAsync(8);
        Assert.Equal(2, counter["GenerateRandom"]);
    }

    [Fact]
    public void AddKmsClient_InvalidOptions_ArgumentExceptionOnResolution()
    {
        using var provider = new ServiceCollection().AddKmsClient(o => o.Endpoint = new Uri("http://127.0.0.1:1")).BuildServiceProvider();
        var e = Assert.Throws<ArgumentException>(() => provider.GetRequiredService<KmsClient>());
        Assert.Contains("https", e.Message, StringComparison.Ordinal);
    }
}
