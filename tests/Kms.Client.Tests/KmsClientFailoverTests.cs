using Grpc.Core;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Tests;

/// <summary>
/// Failover against the real server: a second configured endpoint that is down (refusing
/// connections, or accepting and closing them). Several live nodes come with scale-out.
/// </summary>
public sealed class KmsClientFailoverTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
{
    [Fact]
    public async Task Calls_OneOfTwoEndpointsRefusesConnections_EverySucceedsViaTheLiveOne()
    {
        var counter = new AttemptCounter();
        var refusing = DeadEndpoints.Refusing();
        using var client = Client([refusing, fixture.Server.Address], counter);

        var key = await client.CreateKeyAsync("tenants/dev", $"failover-{Guid.NewGuid():N}");
        var encrypted = await client.EncryptAsync(key.Name, new byte[] { 1, 2, 3 });
        using var decrypted = await client.DecryptAsync(encrypted.Ciphertext);
        using var dataKey = await client.GenerateDataKeyAsync(key.Name);
        await client.RotateKeyAsync(key.Name);
        await client.GetKeyVersionAsync(key.Name + "/versions/2");
        await client.CreateAliasAsync("tenants/dev", $"failover-{Guid.NewGuid():N}", key.Name);
        await client.DisableKeyAsync(key.Name);
        await client.EnableKeyAsync(key.Name);

        Assert.Equal([1, 2, 3], decrypted.Plaintext.ToArray());
        Assert.Equal(9 + 1, counter.Total);
        Assert.Equal(2, counter["CreateKey"]);
        Assert.False(client.Endpoints.IsUp(client.Endpoints.Endpoints[0]));
    }

    [Fact]
    public async Task Calls_OneEndpointPresentsAnUntrustedCertificate_EverySucceedsViaTheOtherAndItIsMarkedDown()
    {
        // The TLS failure reaches the SDK as INTERNAL, not UNAVAILABLE (an AuthenticationException
        // under the HttpRequestException): it must still take the endpoint out and, since a
        // handshake that failed sent nothing, send even a once-only call elsewhere.
        var sink = new LogSink();
        using var factory = LoggerFactory.Create(b => b.AddProvider(sink).SetMinimumLevel(LogLevel.Trace));
        using var untrusted = new UntrustedTlsListener();
        var counter = new AttemptCounter();
        var options = Options([untrusted.Address, fixture.Server.Address]);
        options.Interceptors.Add(counter);
        options.HealthCheckInterval = TimeSpan.FromMinutes(10);
        using var client = new KmsClient(options, factory);

        // The first call goes to the first endpoint. CreateGrant is never repeated once it may have
        // reached a server: the good one's own answer (the key does not exist) shows it was sent on.
        var grant = await Assert.ThrowsAsync<RpcException>(() => client.CreateGrantAsync("tenants/dev/keys/absent", new KeyGrant { Grantee = "token:x", Operations = { "DECRYPT" } }));
        for (var i = 0; i < 10; i++)
        {
            Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
        }

        Assert.Equal(StatusCode.NotFound, grant.StatusCode);
        Assert.Equal((2, 10), (counter["CreateGrant"], counter["GenerateRandom"]));
        Assert.Equal(1, untrusted.Connections);
        Assert.False(client.Endpoints.IsUp(client.Endpoints.Endpoints[0]));
        var down = Assert.Single(sink.Events, e => e.EventId == 3001);
        Assert.Contains(untrusted.Address.ToString(), down.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Calls_EndpointThatAcceptsAndCloses_SkippedAfterItsFirstFailure()
    {
        using var dead = new AcceptAndCloseListener();
        using var client = Client([dead.Address, fixture.Server.Address], healthCheckInterval: TimeSpan.FromMinutes(10));

        for (var i = 0; i < 20; i++)
        {
            Assert.Equal(16, (await client.GenerateRandomAsync(16)).Length);
        }

        Assert.Equal(1, dead.Connections);

        // Nothing reconnects to it in the background either.
        await Task.Delay(TimeSpan.FromSeconds(1.5));
        Assert.Equal(1, dead.Connections);
    }

    [Fact]
    public async Task Call_FirstEndpointHoldsConnectionAttempts_AnsweredByTheOtherWithinTheDeadline()
    {
        using var hole = await BlackHoleListener.StartAsync();
        var counter = new AttemptCounter();
        var options = Options([hole.Address, fixture.Server.Address]);
        // 10 s, not less: the other endpoint gets half of it for a new TLS connection and the
        // call, and under CI's load (the suite's classes run in parallel) 3 s once was not enough.
        options.CallTimeout = TimeSpan.FromSeconds(10);
        options.Interceptors.Add(counter);
        using var client = new KmsClient(options);

        // The call's deadline is CallTimeout for all its attempts: answered at all, it was answered
        // within it. That needs the held connection attempt to have given up first (the connect
        // timeout is half of CallTimeout): without it, the deadline passes on the first endpoint
        // and the call fails with DEADLINE_EXCEEDED.
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);

        Assert.Equal(2, counter["GenerateRandom"]); // one attempt held by the black hole, one answered by the server
        Assert.False(client.Endpoints.IsUp(client.Endpoints.Endpoints[0]));
    }

    [Fact]
    public async Task Call_OnlyServerStopped_UnavailableAfterMaxAttemptsWithinTheDeadline()
    {
        var server = await KmsTestServer.StartAsync();
        var counter = new AttemptCounter();
        using var client = new KmsClient(new KmsClientOptions
        {
            Endpoints = [server.Address],
            CaCertificatePath = server.CaCertificatePath,
            ApiToken = server.DeveloperToken,
            CallTimeout = TimeSpan.FromSeconds(10),
            Retry = { MaxAttempts = 4, BaseBackoff = TimeSpan.FromMilliseconds(50), MaxBackoff = TimeSpan.FromMilliseconds(200) },
            Interceptors = { counter },
        });
        await client.GenerateRandomAsync(8);
        await server.DisposeAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8));

        // Given up after MaxAttempts (counted), not retried until the call's deadline (CallTimeout), which
        // would answer UNAVAILABLE too, after many more attempts.
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal(1 + 4, counter["GenerateRandom"]);
    }

    [Fact]
    public async Task Call_BothEndpointsDown_TriedAnywayAndUnavailable()
    {
        var counter = new AttemptCounter();
        using var dead = new AcceptAndCloseListener();
        using var client = Client([DeadEndpoints.Refusing(), dead.Address], counter, maxAttempts: 3);

        var e = await Assert.ThrowsAsync<RpcException>(() => client.GetKeyAsync("tenants/dev/keys/any"));
        var again = await Assert.ThrowsAsync<RpcException>(() => client.GetKeyAsync("tenants/dev/keys/any"));

        Assert.Equal((StatusCode.Unavailable, StatusCode.Unavailable), (e.StatusCode, again.StatusCode));
        Assert.Equal(6, counter["GetKey"]);
        Assert.True(dead.Connections >= 2, $"{dead.Connections} connections");
    }

    [Fact]
    public async Task GetKeyAsync_NotFound_ReturnedAfterOneAttempt()
    {
        var counter = new AttemptCounter();
        using var dead = new AcceptAndCloseListener();
        using var client = Client([fixture.Server.Address, dead.Address], counter);

        var e = await Assert.ThrowsAsync<RpcException>(() => client.GetKeyAsync("tenants/dev/keys/absent"));

        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.Equal(1, counter["GetKey"]);
        Assert.Equal(0, dead.Connections);
    }

    [Fact]
    public async Task ExportAuditAsync_FirstEndpointRefusesConnections_ExportedByTheOther()
    {
        var counter = new AttemptCounter();
        var officer = await fixture.Server.CreatePrincipalWithTokenAsync($"officer-{Guid.NewGuid():N}"[..20], null, "security-officer");
        using var client = Client([DeadEndpoints.Refusing(), fixture.Server.Address], counter, token: officer);

        using var export = new StringWriter();
        await client.ExportAuditAsync(export);

        Assert.NotEmpty(export.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(2, counter["ExportAudit"]);
    }

    [Fact]
    public async Task RawCall_WithCallerHeaders_RetriedWithoutChangingThem()
    {
        using var client = Client([DeadEndpoints.Refusing(), fixture.Server.Address]);
        var headers = new Metadata { { "x-caller", "1" } };

        await client.Raw.GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 4 }, headers);

        Assert.Equal(["x-caller"], headers.Select(h => h.Key));
    }

    [Fact]
    public async Task RevokeGrantAsync_AnswerLostAfterTheServerRevoked_SentAgain_Succeeds()
    {
        // The first attempt revokes the grant and its answer is lost; the repeat finds the grant
        // revoked, which is what was asked, and says so (it answered NOT_FOUND).
        using var developer = fixture.Server.CreateClient();
        var key = await developer.CreateKeyAsync("tenants/dev", $"lost-revoke-{Guid.NewGuid():N}");
        var grantee = $"lost-revoke-{Guid.NewGuid():N}"[..30];
        await fixture.Server.CreatePrincipalWithTokenAsync(grantee, "dev", "key-user");
        await developer.SetKeyPolicyAsync(key.Name, [new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } }]);
        var grant = await developer.CreateGrantAsync(key.Name, new KeyGrant { Grantee = "token:" + grantee, Operations = { "DECRYPT" } });
        var counter = new AttemptCounter();
        var lost = new LostAnswers("RevokeGrant");
        var options = Options([fixture.Server.Address]);
        options.Retry.MaxBackoff = TimeSpan.FromMilliseconds(200);
        options.Interceptors.Add(counter);
        options.Interceptors.Add(lost);
        using var client = new KmsClient(options);

        await client.RevokeGrantAsync(grant.Name);

        Assert.True(lost.Lost("RevokeGrant"));
        Assert.Equal(2, counter["RevokeGrant"]);
        Assert.Empty(await developer.ListGrantsAsync(key.Name).ToListAsync());
    }

    [Fact]
    public async Task Failover_Logged_WithTheAddressAndWithoutTheToken()
    {
        var sink = new LogSink();
        using var factory = LoggerFactory.Create(b => b.AddProvider(sink).SetMinimumLevel(LogLevel.Trace));
        var refusing = DeadEndpoints.Refusing();
        using var client = new KmsClient(Options([refusing, fixture.Server.Address]), factory);

        await client.GenerateRandomAsync(4);

        var down = Assert.Single(sink.Events, e => e.EventId == 3001);
        Assert.Equal(LogLevel.Warning, down.Level);
        Assert.Contains(refusing.ToString(), down.Message, StringComparison.Ordinal);
        Assert.Contains(sink.Events, e => e.EventId == 3003);
        Assert.DoesNotContain(sink.Events, e => e.Message.Contains(fixture.Server.DeveloperToken, StringComparison.Ordinal));
    }

    private KmsClientOptions Options(Uri[] endpoints, string? token = null) => new()
    {
        Endpoints = endpoints,
        CaCertificatePath = fixture.Server.CaCertificatePath,
        ApiToken = token ?? fixture.Server.DeveloperToken,
        CallTimeout = TimeSpan.FromSeconds(20),
    };

    private KmsClient Client(Uri[] endpoints, AttemptCounter? counter = null, TimeSpan? healthCheckInterval = null, int maxAttempts = 5, string? token = null)
    {
        var options = Options(endpoints, token);
        options.Retry.MaxAttempts = maxAttempts;
        options.Retry.MaxBackoff = TimeSpan.FromMilliseconds(200);
        options.HealthCheckInterval = healthCheckInterval ?? TimeSpan.FromMinutes(10);
        if (counter is not null)
        {
            options.Interceptors.Add(counter);
        }

        return new KmsClient(options);
    }
}
