using Grpc.Core;
using Kms.Contracts.V1;

namespace Kms.Client.Tests.Failover;

/// <summary>
/// <see cref="KmsClientOptions.MaxConcurrentCalls"/>: an attempt beyond the bound is not sent; it is
/// retried after a backoff like an UNAVAILABLE attempt, without blaming the endpoint, and the call
/// fails UNAVAILABLE when its attempts run out. Against scripted endpoints that hold calls on the wire.
/// </summary>
public sealed class ConcurrencyLimitTests
{
    private static readonly GetKeyRequest AnyGet = new() { Name = "tenants/dev/keys/k" };

    [Fact]
    public async Task Call_BeyondTheBound_NotSent_SentAfterItsBackoffOnceAPlaceIsFree_EndpointKept()
    {
        var a = new ScriptedEndpoint("a") { Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        using var fake = new FakeClient([a], maxAttempts: 5, unitRandom: 0.5, baseBackoff: TimeSpan.FromSeconds(1), maxConcurrentCalls: 2);

        var held = new[] { fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync, fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync };
        var third = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        Assert.Equal(2, a.Calls);

        // Its first backoff (0.5 · 1 s) ends while both places are still taken: not sent again; then 0.5 · 2 s.
        fake.Time.Advance(TimeSpan.FromMilliseconds(500));
        await Eventually.StillAsync(() => a.Calls == 2, "the third call is not sent while two are on the wire");
        Assert.False(third.IsCompleted);

        a.Hold.SetResult();
        await Task.WhenAll(held);
        fake.Time.Advance(TimeSpan.FromMilliseconds(999));
        await Eventually.StillAsync(() => a.Calls == 2, "the third call waits out its backoff");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await third;

        Assert.Equal(3, a.Calls);
        Assert.True(fake.IsUp(a), "a place refused on the client says nothing about the endpoint");
    }

    [Fact]
    public async Task Call_BeyondTheBound_AttemptsRunOut_UnavailableWithoutBeingSent()
    {
        var a = new ScriptedEndpoint("a") { Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 1);

        var held = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal("1 calls to the KMS were on the wire from this client (KmsClientOptions.MaxConcurrentCalls); not sent, retry with backoff", e.Status.Detail);
        Assert.Equal(1, a.Calls);
        Assert.True(fake.IsUp(a));
        a.Hold.SetResult();
        await held;
    }

    [Fact]
    public async Task Call_BeyondTheBound_NextBackoffOutlastsTheDeadline_UnavailableWithoutWaiting()
    {
        var a = new ScriptedEndpoint("a") { Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        using var fake = new FakeClient([a], maxAttempts: 10, unitRandom: 0.99, baseBackoff: TimeSpan.FromSeconds(1), callTimeout: TimeSpan.FromMilliseconds(500), maxConcurrentCalls: 1);

        var held = fake.Client.Raw.GetKeyAsync(AnyGet, deadline: DateTime.MaxValue).ResponseAsync;
        var call = fake.Client.GetKeyAsync(AnyGet.Name);

        var e = await Assert.ThrowsAsync<RpcException>(() => call);
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains("MaxConcurrentCalls", e.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(1, a.Calls);
        a.Hold.SetResult();
        await held;
    }

    [Fact]
    public async Task FinishedAttempts_GiveTheirPlaceBack_WhateverTheirOutcome()
    {
        var outcomes = new Queue<Func<object?>>([
            () => null,
            () => throw new RpcException(new Status(StatusCode.NotFound, "no such key")),
            () => throw ScriptedEndpoint.LostAnswer(),
            () => null,
        ]);
        var a = new ScriptedEndpoint("a") { Respond = _ => outcomes.Dequeue()() };
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 1);

        await fake.Client.GetKeyAsync(AnyGet.Name);
        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        await fake.Client.GetKeyAsync(AnyGet.Name);

        Assert.Equal(4, a.Calls);
        Assert.Equal(0, fake.Invoker.Limit!.OnTheWire);
    }

    [Fact]
    public async Task ServerStream_NotCounted()
    {
        var a = new ScriptedEndpoint("a")
        {
            Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously),
            Stream = ([new ExportAuditResponse { Lines = { "1" } }], null),
        };
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 1);

        var held = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        using var writer = new StringWriter();
        await fake.Client.ExportAuditAsync(writer);

        Assert.Equal("1", writer.ToString().Trim());
        a.Hold.SetResult();
        await held;
    }

    [Fact]
    public async Task ManyCallersAtOnce_ExactlyTheBoundSent_TheRestRefused_PlacesAllGivenBack()
    {
        var a = new ScriptedEndpoint("a") { Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 3);

        // Started from pool threads at once; each task is the call itself, not awaited here.
        var calls = await Task.WhenAll(Enumerable.Range(0, 400).Select(_ => Task.Run(() => Task.FromResult(fake.Client.GetKeyAsync(AnyGet.Name)))));
        var refused = 0;
        foreach (var call in calls.Where(c => c.IsCompleted))
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => call);
            Assert.Equal(StatusCode.Unavailable, e.StatusCode);
            refused++;
        }

        Assert.Equal((3, 397), (a.Calls, refused));
        Assert.Equal(3, fake.Invoker.Limit!.OnTheWire);
        a.Hold.SetResult();
        await Task.WhenAll(calls.Where(c => !c.IsCompleted));
        Assert.Equal(0, fake.Invoker.Limit.OnTheWire);
    }
}
