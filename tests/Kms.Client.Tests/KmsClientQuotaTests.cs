using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Client.Tests.Failover;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests;

/// <summary>
/// A tenant's quota used up, against the real server (its clock and the client's both fake): the SDK
/// waits the RetryInfo delay the server answers and sends the call again; a delay past
/// <see cref="KmsRetryOptions.MaxRetryInfoDelay"/> is returned at once, RetryInfo and all.
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
        var refusals = new Refusals();
        var options = new KmsClientOptions { Endpoint = server.Address, CaCertificatePath = server.CaCertificatePath, ApiToken = server.DeveloperToken };
        options.Interceptors.Add(refusals);
        using var client = new KmsClient(KmsClient.Connect(options, null, clientTime, () => 0));

        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length); // the burst: one operation
        var call = client.GenerateRandomAsync(8);
        await Eventually.TrueAsync(() => refusals.Count == 1, "the second call is refused for the quota");

        // The server's bucket has an operation again after 500 ms (2 a second); the client waits
        // the 500 ms it was told, on its own clock, and sends the call again.
        serverTime.Advance(TimeSpan.FromMilliseconds(500));
        await Eventually.TrueAsync(
            () =>
            {
                clientTime.Advance(TimeSpan.FromMilliseconds(100));
                return call.IsCompleted;
            },
            "the call is sent again once the client's clock passes the delay");
        Assert.Equal(8, (await call).Length);
        Assert.Equal((3, 1), (refusals.Attempts, refusals.Count));

        // A tenant at 0.001 a second is told to come back in 1,000 s: past MaxRetryInfoDelay (5 s).
        await server.EnsureTenantAsync("slow");
        var slowOptions = new KmsClientOptions { Endpoint = server.Address, CaCertificatePath = server.CaCertificatePath, ApiToken = await server.CreatePrincipalWithTokenAsync("slow-user", "slow", "key-user") };
        slowOptions.Interceptors.Add(refusals);
        using var slow = new KmsClient(KmsClient.Connect(slowOptions, null, clientTime, () => 0));
        await slow.GenerateRandomAsync(8);
        var refused = await Assert.ThrowsAsync<RpcException>(() => slow.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Equal(TimeSpan.MaxValue, Kms.Client.Failover.RetrySafety.RetryInfoDelay(refused, TimeSpan.FromSeconds(5)));
        Assert.Equal((5, 2), (refusals.Attempts, refusals.Count));
    }

    /// <summary>Counts the attempts that pass it and those answered RESOURCE_EXHAUSTED.</summary>
    private sealed class Refusals : Interceptor
    {
        private int _attempts;
        private int _count;

        public int Attempts => Volatile.Read(ref _attempts);

        public int Count => Volatile.Read(ref _count);

        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context, AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
        {
            if (context.Method.Name != "GenerateRandom")
            {
                return continuation(request, context);
            }

            Interlocked.Increment(ref _attempts);
            var call = continuation(request, context);
            return new AsyncUnaryCall<TResponse>(SeenAsync(call.ResponseAsync), call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
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
    }
}
