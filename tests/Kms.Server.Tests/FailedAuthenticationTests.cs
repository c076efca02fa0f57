using System.Reflection;
using System.Runtime.ExceptionServices;
using Google.Rpc;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Access;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// What credentials that are not valid cost the server (SECURITY.md claim 124). Before, every call
/// with a bad API token was a database lookup, however often the same token came back, and a client
/// address could send as many distinct bad tokens as it liked, each one a lookup. Now a credential
/// found not valid is remembered (by its hash) as an accepted one is, and one client address gets at
/// most <c>Kms:MaxFailedAuthenticationsPerClientAddress</c> failed checks a minute: past them, a
/// credential not already remembered is refused RESOURCE_EXHAUSTED before it is looked up, while the
/// callers already authenticated from that address are served, and a token issued meanwhile works at once.
/// </summary>
public sealed class FailedAuthenticationTests
{
    // A fake clock: no cache entry expires and no failure comes back during the test, however slow the machine.
    private readonly FakeTimeProvider _time = new(DateTimeOffset.UtcNow);

    [Fact]
    public async Task BadTokens_SameOneLookedUpOnce_DistinctOnesBoundedPerClientAddress_NewTokenServedAtOnce()
    {
        var lookups = new LookupCount();
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => Configure(services, lookups),
            "--Kms:MaxFailedAuthenticationsPerClientAddress=5");
        using var channel = server.CreateChannel();
        var kms = new KeyManagementService.KeyManagementServiceClient(channel);
        async Task<RpcException?> CallAsync(string token)
        {
            try
            {
                await kms.GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 8 }, KmsTestServer.Bearer(token));
                return null;
            }
            catch (RpcException e)
            {
                return e;
            }
        }

        // The deployment admin and the developer are remembered before anything fails.
        Assert.Null(await CallAsync(server.DeveloperToken));
        using (var admin = server.DeploymentAdmin())
        {
            await admin.Access.ListTenantsAsync(new ListTenantsRequest());
        }

        // The node's own writes (the start's principals), read back from the change feed, would
        // forget the failures counted below at a random point.
        await server.WaitForChangeFeedReadAsync();

        // One bad token (well formed, no such token), twenty times: one lookup. Before: twenty.
        var bad = ApiTokenSecret.Create().Text;
        var before = lookups.Value;
        for (var i = 0; i < 20; i++)
        {
            Assert.Equal(StatusCode.Unauthenticated, (await CallAsync(bad))!.StatusCode);
        }

        Assert.Equal(1, lookups.Value - before);

        // Twenty distinct bad tokens from the same address: the four failures left of the five are
        // looked up (UNAUTHENTICATED), the rest refused unchecked. Before: twenty lookups, twenty UNAUTHENTICATED.
        before = lookups.Value;
        var statuses = new List<StatusCode>();
        for (var i = 0; i < 20; i++)
        {
            statuses.Add((await CallAsync(ApiTokenSecret.Create().Text))!.StatusCode);
        }

        Assert.Equal(4, lookups.Value - before);
        Assert.Equal([.. Enumerable.Repeat(StatusCode.Unauthenticated, 4), .. Enumerable.Repeat(StatusCode.ResourceExhausted, 16)], statuses);
        var refused = (await CallAsync(ApiTokenSecret.Create().Text))!;
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.StartsWith("too many credentials from this client address failed authentication (Kms:MaxFailedAuthenticationsPerClientAddress: 5 a minute)", refused.Status.Detail, StringComparison.Ordinal);
        Assert.True(refused.GetRpcStatus()!.GetDetail<RetryInfo>().RetryDelay.ToTimeSpan() > TimeSpan.Zero);
        Assert.Contains(server.Logs.Events, line => line.Contains("Kms:MaxFailedAuthenticationsPerClientAddress", StringComparison.Ordinal) && line.Contains("127.0.0.1", StringComparison.Ordinal));

        // The bad token already found not valid is still answered UNAUTHENTICATED (remembered, no lookup),
        // and the caller remembered from this address is served.
        before = lookups.Value;
        Assert.Equal(StatusCode.Unauthenticated, (await CallAsync(bad))!.StatusCode);
        Assert.Null(await CallAsync(server.DeveloperToken));
        Assert.Equal(0, lookups.Value - before);

        // A token issued now works at once, from this address.
        var issued = await server.CreatePrincipalWithTokenAsync("issued-after", "dev", "key-user");
        Assert.Null(await CallAsync(issued));

        // A minute later the address has its five failures back.
        _time.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(StatusCode.Unauthenticated, (await CallAsync(ApiTokenSecret.Create().Text))!.StatusCode);
    }

    [Fact]
    public async Task RevokedToken_KeptBeingSent_LookedUpOncePerCacheTime()
    {
        var lookups = new LookupCount();
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => Configure(services, lookups));
        var token = await server.CreatePrincipalWithTokenAsync("revoked-soon", "dev", "key-user");
        using var admin = server.DeploymentAdmin();
        var id = (await admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:revoked-soon" })).Tokens.Single().Id;
        await admin.Access.RevokeApiTokenAsync(new RevokeApiTokenRequest { Id = id });

        // The revocation, read back from the change feed, forgets the remembered failure once more:
        // ci (2026-12-06) counted 2 lookups where the read came after the first refusal.
        await server.WaitForChangeFeedReadAsync();
        using var channel = server.CreateChannel();
        var kms = new KeyManagementService.KeyManagementServiceClient(channel);
        var before = lookups.Value;
        for (var i = 0; i < 10; i++)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => kms.GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 8 }, KmsTestServer.Bearer(token)).ResponseAsync);
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        }

        Assert.Equal(1, lookups.Value - before);

        // Kms:CredentialCacheTime (5 s) later it is looked up again.
        _time.Advance(TimeSpan.FromSeconds(5));
        await Assert.ThrowsAsync<RpcException>(() => kms.GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 8 }, KmsTestServer.Bearer(token)).ResponseAsync);
        Assert.Equal(2, lookups.Value - before);
    }

    private void Configure(IServiceCollection services, LookupCount lookups)
    {
        services.Replace(ServiceDescriptor.Singleton<TimeProvider>(_time));
        var original = services.Last(d => d.ServiceType == typeof(IAccessStore));
        services.Add(ServiceDescriptor.Singleton(provider =>
        {
            var proxy = DispatchProxy.Create<IAccessStore, CountingAccessStore>();
            var counting = (CountingAccessStore)(object)proxy;
            counting.Inner = (IAccessStore)original.ImplementationFactory!(provider);
            counting.Lookups = lookups;
            return proxy;
        }));
    }

    /// <summary>API token lookups in the store.</summary>
    public sealed class LookupCount
    {
        private int _value;

        public int Value => Volatile.Read(ref _value);

        public void Add() => Interlocked.Increment(ref _value);
    }

    /// <summary>The access store, counting its API token lookups.</summary>
    public class CountingAccessStore : DispatchProxy
    {
        internal IAccessStore Inner { get; set; } = null!;

        internal LookupCount Lookups { get; set; } = null!;

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            if (targetMethod!.Name == nameof(IAccessStore.GetApiTokenAsync))
            {
                Lookups.Add();
            }

            try
            {
                return targetMethod.Invoke(Inner, args);
            }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                ExceptionDispatchInfo.Throw(e.InnerException);
                throw;
            }
        }
    }
}
