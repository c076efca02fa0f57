using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Contracts.V1;
using Kms.Server.Hosting;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// One tenant cannot take the server's call slots from the others (SECURITY.md claim 132): its
/// calls in flight, whatever principals and tokens make them, are bounded by
/// <c>Kms:MaxConcurrentCallsPerTenant</c> (half of <c>Kms:MaxConcurrentCalls</c> unless set), past
/// which they are shed (UNAVAILABLE, <c>kms-shed: tenant</c>) while other tenants are served.
/// </summary>
[Collection(ThreadPoolBlockingGroup.Name)] // sheds: counted by the process-wide meter that OverloadTests reads
public sealed class TenantFairnessTests
{
    private const string SigningKeyMethod = "/kms.v1.AuditService/GetAuditSigningKey";

    [Fact]
    public async Task OneTenantsCallsInFlight_PastHalfTheSlots_Shed_OtherTenantsStillServed()
    {
        // Before, the slots were one pool: tenant dev's four calls held all of
        // Kms:MaxConcurrentCalls=4 and acme's were shed "at capacity" (a single SDK client keeps
        // up to 512 calls on the wire, the server's default slot count).
        var gate = new CallGate(SigningKeyMethod);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<GatedCalls>(gate)),
            "--Kms:MaxConcurrentCalls=4");
        var devSecond = await server.CreatePrincipalWithTokenAsync("dev-second", "dev", "key-user");
        await server.EnsureTenantAsync("acme");
        var acme = await server.CreatePrincipalWithTokenAsync("acme-user", "acme", "key-user");
        using var channel = server.CreateChannel();
        var audit = new AuditService.AuditServiceClient(channel);
        Task<GetAuditSigningKeyResponse> Call(string token) => audit.GetAuditSigningKeyAsync(new GetAuditSigningKeyRequest(), KmsTestServer.Bearer(token)).ResponseAsync;
        try
        {
            // Two principals of dev, two tokens: one tenant's share (half of 4).
            var held = new List<Task<GetAuditSigningKeyResponse>> { Call(server.DeveloperToken), Call(devSecond) };
            await gate.EnteredAsync(2);

            var third = Call(server.DeveloperToken);
            await Task.WhenAny(third, gate.EnteredAsync(3));
            Assert.True(third.IsCompleted, "a third call of tenant dev got a slot: one tenant can hold every slot of the server");
            var shed = await Assert.ThrowsAsync<RpcException>(() => third);
            Assert.Equal(StatusCode.Unavailable, shed.StatusCode);
            Assert.Equal("tenant", shed.Trailers.GetValue("kms-shed"));
            Assert.Equal("the calls of your tenant in progress on this server are at its bound; retry with backoff", shed.Status.Detail);
            Assert.Contains(server.Logs.Events, line => line.Contains("Kms:MaxConcurrentCallsPerTenant", StringComparison.Ordinal) && line.Contains("tenants/dev", StringComparison.Ordinal));

            // The other tenant gets the rest of the slots.
            held.Add(Call(acme));
            held.Add(Call(acme));
            await Task.WhenAny(gate.EnteredAsync(4), Task.WhenAny(held));
            Assert.Equal(4, gate.Entered);

            gate.Release();
            foreach (var call in held)
            {
                Assert.NotEmpty((await call).PublicKeyDer);
            }

            // Every slot was given back: dev is served again, and nothing is left counted.
            Assert.NotEmpty((await Call(server.DeveloperToken)).PublicKeyDer);
            Assert.NotEmpty((await Call(devSecond)).PublicKeyDer);
            var interceptor = server.Services.GetRequiredService<Kms.Server.Security.AuthorizationInterceptor>();
            Assert.Equal(0, interceptor.TenantsInFlight);
        }
        finally
        {
            gate.Release(); // a failed test does not leave its calls held
        }
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    public async Task Build_APerTenantBoundBelowOne_Refused_NamingTheOption(string value)
    {
        var dataDir = Path.Combine(Path.GetTempPath(), $"kms-never-{Guid.NewGuid():N}");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:MaxConcurrentCallsPerTenant={value}", $"--Kms:DataDir={dataDir}"]));
        Assert.StartsWith($"Kms:MaxConcurrentCallsPerTenant ({value}) must be at least 1", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataDir));
    }

    [Theory]
    [InlineData(512, null, 256)]
    [InlineData(5, null, 3)]
    [InlineData(1, null, 1)]
    [InlineData(512, 500, 500)]
    public void TenantCallBound_HalfTheSlotsRoundedUp_UnlessSet(int slots, int? perTenant, int bound) =>
        Assert.Equal(bound, new KmsServerOptions { MaxConcurrentCalls = slots, MaxConcurrentCallsPerTenant = perTenant }.TenantCallBound);

    /// <summary>Holds the calls of one method, inside their slot, until released.</summary>
    private sealed class CallGate(string method)
    {
        private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly List<(int Count, TaskCompletionSource Reached)> _waiters = [];
        private int _entered;

        public string Method => method;

        public int Entered => Volatile.Read(ref _entered);

        public Task Released => _release.Task;

        public void Release() => _release.TrySetResult();

        public void Enter()
        {
            lock (_waiters)
            {
                _entered++;
                foreach (var waiter in _waiters.Where(w => w.Count <= _entered))
                {
                    waiter.Reached.TrySetResult();
                }
            }
        }

        public Task EnteredAsync(int count)
        {
            lock (_waiters)
            {
                if (_entered >= count)
                {
                    return Task.CompletedTask;
                }

                var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _waiters.Add((count, reached));
                return reached.Task;
            }
        }
    }

    // Added after the server's own interceptors: runs inside the call's slot.
    private sealed class GatedCalls(CallGate gate) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (context.Method == gate.Method)
            {
                gate.Enter();
                await gate.Released;
            }

            return await continuation(request, context);
        }
    }
}
