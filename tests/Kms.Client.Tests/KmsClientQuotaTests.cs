using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests;

/// <summary>
/// A tenant's quota or a principal's call rate used up, against the real server (its clock and the
/// client's both fake): the SDK waits the RetryInfo delay the server answers and sends the call again
/// (a unary call, or a stream refused before it began), counted in <c>kms.client.quota_retries</c>; a
/// delay past <see cref="KmsRetryOptions.MaxRetryInfoDelay"/> is returned at once, RetryInfo and all.
/// </summary>
public sealed class KmsClientQuotaTests
{
    [Fact]
    public async Task TenantQuotaUsedUp_TheCallWaitsTheServersRetryInfo_ThenSucceeds_ALongerDelayReturnedAtOnce()
    {
        var serverTime = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await KmsTestServer.StartAsync(
            null,
            null,
            "dev",
            services => services.AddSingleton<TimeProvider>(serverTime),
            "--Kms:Quotas:Tenants:dev:OperationsPerSecond=2",
            "--Kms:Quotas:Tenants:dev:Burst=1",
            "--Kms:Quotas:Tenants:slow:OperationsPerSecond=0.001",
            "--Kms:Quotas:Tenants:slow:Burst=1");
        var clientTime = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var refusals = new Refusals("GenerateRandom");
        using var retries = new QuotaRetryCount();
        using var client = ClientOf(server, server.DeveloperToken, refusals, clientTime);

        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length); // the burst: one operation
        var call = client.GenerateRandomAsync(8);
        await Eventually.TrueAsync(() => refusals.Count == 1, "the second call is refused for the quota");

        // The server's bucket has an operation again after 500 ms (2 a second); the client waits
        // the 500 ms it was told, on its own clock, and sends the call again.
        await RefilledThenWaitedOutAsync(serverTime, clientTime, call, "the call is sent again once the client's clock passes the delay");
        Assert.Equal(8, (await call).Length);
        Assert.Equal((3, 1), (refusals.Attempts, refusals.Count));
        Assert.Equal(1, retries.Value);

        // A tenant at 0.001 a second is told to come back in 1,000 s: past MaxRetryInfoDelay (5 s).
        await server.EnsureTenantAsync("slow");
        using var slow = ClientOf(server, await server.CreatePrincipalWithTokenAsync("slow-user", "slow", "key-user"), refusals, clientTime);
        await slow.GenerateRandomAsync(8);
        var refused = await Assert.ThrowsAsync<RpcException>(() => slow.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Equal(TimeSpan.MaxValue, Kms.Client.Failover.RetrySafety.RetryInfoDelay(refused, TimeSpan.FromSeconds(5)));
        Assert.Equal((5, 2), (refusals.Attempts, refusals.Count));
        Assert.Equal(1, retries.Value);
    }

    [Fact]
    public async Task SecurityOfficerPastItsCallRate_ExportAudit_WaitsTheServersRetryInfo_ThenExportsTheWholeLogOnce()
    {
        // ExportAudit meters no tenant's quota (it is no crypto), but a principal of no tenant spends
        // its own call rate on every call, a stream included, and is refused before the stream begins.
        var serverTime = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await StartWithPrincipalRateAsync(serverTime);
        var officerToken = await server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"); // the admin's three calls
        var clientTime = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var refusals = new Refusals("ExportAudit");
        using var retries = new QuotaRetryCount();
        using var officer = ClientOf(server, officerToken, refusals, clientTime);

        for (var i = 0; i < 3; i++)
        {
            await officer.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest()); // the burst
        }

        using var first = new StringWriter();
        var export = officer.ExportAuditAsync(first);
        await Eventually.TrueAsync(() => refusals.Count == 1, "the export is refused for the officer's call rate");

        await RefilledThenWaitedOutAsync(serverTime, clientTime, export, "the export is sent again once the client's clock passes the delay");
        await export;
        Assert.Equal((2, 1), (refusals.Attempts, refusals.Count));
        Assert.Equal(1, retries.Value);

        // Whole and each event once: the lines are the start of a later export, which has more (this export's own events).
        serverTime.Advance(TimeSpan.FromSeconds(10));
        using var second = new StringWriter();
        await officer.ExportAuditAsync(second);
        var lines = Lines(first);
        Assert.NotEmpty(lines);
        Assert.Equal(lines.Count, lines.Distinct(StringComparer.Ordinal).Count());
        Assert.Equal(lines, Lines(second).Take(lines.Count));
        Assert.True(Lines(second).Count > lines.Count);
    }

    [Fact]
    public async Task DeploymentAdminPastItsCallRate_OnceOnlyCreateApiToken_RefusedBeforeItRan_WaitedOut_CreatedExactlyOnce()
    {
        // CreateApiToken is never repeated after a lost answer (a second live token nobody holds); the
        // server refuses it for the admin's call rate before any of it runs, so the client waits the
        // delay and sends it again — and there is one token, which works.
        var serverTime = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await StartWithPrincipalRateAsync(serverTime);
        serverTime.Advance(TimeSpan.FromSeconds(10)); // whatever the start spent: the bucket is full
        var clientTime = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var refusals = new Refusals("CreateApiToken");
        using var retries = new QuotaRetryCount();
        using var admin = ClientOf(server, server.DeploymentAdminToken, refusals, clientTime);

        await admin.CreatePrincipalAsync("token:quota-svc", "tenants/dev");
        await admin.SetRoleBindingAsync("token:quota-svc", "key-user", "tenants/dev");
        await admin.GetPrincipalAsync("token:quota-svc"); // the burst: three calls
        var create = admin.CreateApiTokenAsync("token:quota-svc", "SESSION");
        await Eventually.TrueAsync(() => refusals.Count == 1, "CreateApiToken is refused for the admin's call rate");

        await RefilledThenWaitedOutAsync(serverTime, clientTime, create, "the creation is sent again once the client's clock passes the delay");
        var token = await create;
        Assert.Equal((2, 1), (refusals.Attempts, refusals.Count));
        Assert.Equal(1, retries.Value);

        serverTime.Advance(TimeSpan.FromSeconds(10));
        var tokens = await admin.ListApiTokensAsync("token:quota-svc").ToListAsync();
        Assert.Equal(token.Token.Id, Assert.Single(tokens).Id);
        using var service = server.CreateClient(token.Secret);
        Assert.Equal(8, (await service.GenerateRandomAsync(8)).Length);
    }

    // A principal of no tenant may make 2 calls a second, 3 at once (the server's clock fake).
    private static Task<KmsTestServer> StartWithPrincipalRateAsync(FakeTimeProvider serverTime) =>
        KmsTestServer.StartAsync(
            null,
            null,
            "dev",
            services => services.AddSingleton<TimeProvider>(serverTime),
            "--Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond=2",
            "--Kms:Quotas:PrincipalsWithoutTenant:Burst=3");

    // A client on the server's address with the test's interceptor, on the fake clock, with no jitter.
    private static KmsClient ClientOf(KmsTestServer server, string token, Refusals refusals, TimeProvider clientTime)
    {
        var options = new KmsClientOptions { Endpoint = server.Address, CaCertificatePath = server.CaCertificatePath, ApiToken = token };
        options.Interceptors.Add(refusals);
        return new KmsClient(KmsClient.Connect(options, null, clientTime, () => 0));
    }

    // The server's bucket has a call again 500 ms on (its fake clock); the client, told to wait that
    // long, sends the call again once its own clock has passed the delay.
    private static Task RefilledThenWaitedOutAsync(FakeTimeProvider serverTime, FakeTimeProvider clientTime, Task call, string what)
    {
        serverTime.Advance(TimeSpan.FromMilliseconds(500));
        return Eventually.TrueAsync(
            () =>
            {
                clientTime.Advance(TimeSpan.FromMilliseconds(100));
                return call.IsCompleted;
            },
            what);
    }

    private static List<string> Lines(StringWriter export) => [.. export.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];

    /// <summary>Counts the attempts of one method that pass it and those answered RESOURCE_EXHAUSTED.</summary>
    private sealed class Refusals(string method) : Interceptor
    {
        private int _attempts;
        private int _count;

        public int Attempts => Volatile.Read(ref _attempts);

        public int Count => Volatile.Read(ref _count);

        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context, AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
        {
            if (context.Method.Name != method)
            {
                return continuation(request, context);
            }

            Interlocked.Increment(ref _attempts);
            var call = continuation(request, context);
            return new AsyncUnaryCall<TResponse>(SeenAsync(call.ResponseAsync), call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
        }

        public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context, AsyncServerStreamingCallContinuation<TRequest, TResponse> continuation)
        {
            if (context.Method.Name != method)
            {
                return continuation(request, context);
            }

            Interlocked.Increment(ref _attempts);
            var call = continuation(request, context);
            return new AsyncServerStreamingCall<TResponse>(new SeenReader<TResponse>(this, call.ResponseStream), call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
        }

        private async Task<TResponse> SeenAsync<TResponse>(Task<TResponse> answer)
        {
            try
            {
                return await answer;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
            {
                Interlocked.Increment(ref _count);
                throw;
            }
        }

        private sealed class SeenReader<T>(Refusals owner, IAsyncStreamReader<T> inner) : IAsyncStreamReader<T>
        {
            public T Current => inner.Current;

            public async Task<bool> MoveNext(CancellationToken cancellationToken)
            {
                try
                {
                    return await inner.MoveNext(cancellationToken);
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
                {
                    Interlocked.Increment(ref owner._count);
                    throw;
                }
            }
        }
    }
}
