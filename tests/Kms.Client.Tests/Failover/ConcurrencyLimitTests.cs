using Grpc.Core;
using Kms.Client.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests.Failover;

/// <summary>
/// <see cref="KmsClientOptions.MaxConcurrentCalls"/>: an attempt beyond the bound on its endpoint is
/// not sent; it goes at once to another endpoint with room, or is retried after a backoff of which
/// half is certain, without blaming the endpoint, and the call fails UNAVAILABLE when its attempts
/// run out. Against scripted endpoints that hold calls on the wire, on a fake clock.
/// </summary>
public sealed class ConcurrencyLimitTests
{
    private static readonly GetKeyRequest AnyGet = new() { Name = "tenants/dev/keys/k" };
    // A hang guard in real time, not a bound on how fast (the calls run on a fake clock): the
    // suite's other classes hold thread-pool threads, and under CI's full run 10 s ran out once
    // for a step that needed the pool (DataKeyCacheDisposeTests, 70b7228).
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Call_BeyondTheBound_NotSent_SentAfterItsBackoffOnceAPlaceIsFree_EndpointKept()
    {
        var a = Holding("a");
        using var fake = new FakeClient([a], maxAttempts: 5, unitRandom: 0.5, baseBackoff: TimeSpan.FromSeconds(1), maxConcurrentCalls: 2);
        var limit = fake.Invoker.Limit!;

        var held = new[] { fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync, fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync };
        var third = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        await Eventually.TrueAsync(() => limit.Refused == 1, "the third call is refused a place");
        Assert.Equal(2, a.Calls);

        // Its first backoff (1 s / 2 + 0.5 · 1 s / 2) ends while both places are still taken: refused again.
        fake.Time.Advance(TimeSpan.FromMilliseconds(749));
        await Eventually.StillAsync(() => limit.Refused == 1, "no second try before the backoff");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await Eventually.TrueAsync(() => limit.Refused == 2, "the second try is refused too");
        Assert.Equal(2, a.Calls);

        // Places free; the second backoff (2 s / 2 + 0.5 · 2 s / 2 = 1.5 s), then it is sent.
        // The refusal is counted before the client sets its second wait: the clock moves once it is set.
        a.Hold!.SetResult();
        await Task.WhenAll(held).WaitAsync(Patience);
        await Eventually.TrueAsync(() => fake.Time.Timers == 2, "the second wait is set");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1_499));
        await Eventually.StillAsync(() => a.Calls == 2, "the third call waits out its backoff");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await third.WaitAsync(Patience);

        Assert.Equal((3, 2L), (a.Calls, limit.Refused));
        Assert.True(fake.IsUp(a), "a place refused on the client says nothing about the endpoint");
    }

    [Fact]
    public async Task Call_BeyondTheBound_NeverRetriedAtOnce_EvenWhenTheJitterDrawsZero()
    {
        var a = Holding("a");
        using var fake = new FakeClient([a], maxAttempts: 3, unitRandom: 0, baseBackoff: TimeSpan.FromSeconds(1), maxConcurrentCalls: 1);
        var limit = fake.Invoker.Limit!;

        var held = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        var second = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        await Eventually.TrueAsync(() => limit.Refused == 1, "the second call is refused a place");
        await Eventually.StillAsync(() => limit.Refused == 1, "a refused attempt is not tried again at once");

        fake.Time.Advance(TimeSpan.FromMilliseconds(500));
        await Eventually.TrueAsync(() => limit.Refused == 2, "tried again after half the ceiling");
        a.Hold!.SetResult();
        await held.WaitAsync(Patience);
        await Eventually.TrueAsync(() => fake.Time.Timers == 2, "the second wait is set (after the refusal was counted)");
        fake.Time.Advance(TimeSpan.FromSeconds(1));
        await second.WaitAsync(Patience);
        Assert.Equal(2, a.Calls);
    }

    [Fact]
    public async Task Call_BeyondTheBoundOnOneEndpoint_SentAtOnceToAnotherWithRoom_NeitherTakenOut()
    {
        var a = Holding("a");
        var b = new ScriptedEndpoint("b");
        using var fake = new FakeClient([a, b], maxAttempts: 2, maxConcurrentCalls: 1);

        var held = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync; // a (held)
        await fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience); // b
        await fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience); // a has no place: b at once, no time passes

        Assert.Equal((1, 2), (a.Calls, b.Calls));
        Assert.Equal(1, fake.Invoker.Limit!.Refused);
        Assert.True(fake.IsUp(a) && fake.IsUp(b));
        a.Hold!.SetResult();
        await held.WaitAsync(Patience);
    }

    [Fact]
    public async Task Call_BeyondTheBound_AttemptsRunOut_UnavailableWithoutBeingSent()
    {
        var a = Holding("a");
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 1);
        using var shed = new ShedCount("client");

        var held = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        Assert.Equal(1, shed.Value); // the tests of this class run one at a time, and only they refuse places

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal("1 calls were on the wire from this client to https://a.test:8443/ (KmsClientOptions.MaxConcurrentCalls); not sent, retry with backoff", e.Status.Detail);
        Assert.Equal(1, a.Calls);
        Assert.True(fake.IsUp(a));
        a.Hold!.SetResult();
        await held.WaitAsync(Patience);
    }

    [Fact]
    public async Task Call_BeyondTheBound_NextBackoffOutlastsTheDeadline_UnavailableWithoutWaiting()
    {
        var a = Holding("a");
        using var fake = new FakeClient([a], maxAttempts: 10, unitRandom: 0.99, baseBackoff: TimeSpan.FromSeconds(1), callTimeout: TimeSpan.FromMilliseconds(500), maxConcurrentCalls: 1);

        var held = fake.Client.Raw.GetKeyAsync(AnyGet, deadline: DateTime.MaxValue).ResponseAsync;

        // The first backoff (at least 0.5 s) would end at or past the deadline: UNAVAILABLE, no waiting.
        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience));
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains("MaxConcurrentCalls", e.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(1, a.Calls);
        a.Hold!.SetResult();
        await held.WaitAsync(Patience);
    }

    [Fact]
    public async Task FinishedAttempts_GiveTheirPlaceBack_WhateverTheirOutcome()
    {
        var outcomes = new Queue<Func<object?>>([
            () => null,
            () => throw new RpcException(new Status(StatusCode.NotFound, "no such key")),
            () => throw ScriptedEndpoint.LostAnswer(),
            () => throw new InvalidOperationException("not a gRPC failure"),
            () => null,
        ]);
        var a = new ScriptedEndpoint("a") { Respond = _ => outcomes.Dequeue()() };
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 1);

        await fake.Client.GetKeyAsync(AnyGet.Name);
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name))).StatusCode);
        Assert.Equal("connection reset", (await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name))).Status.Detail);
        await Assert.ThrowsAsync<InvalidOperationException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        await fake.Client.GetKeyAsync(AnyGet.Name);

        Assert.Equal(5, a.Calls);
        Assert.Equal(0, fake.Invoker.Limit!.Refused);
        Assert.Equal(0, ConcurrencyLimit.OnTheWire(fake.Invoker.Pool.Endpoints.Single()));
    }

    [Fact]
    public async Task ServerStream_NotCounted()
    {
        var a = Holding("a");
        a.Stream = ([new ExportAuditResponse { Lines = { "1" } }], null);
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 1);

        var held = fake.Client.Raw.GetKeyAsync(AnyGet).ResponseAsync;
        using var writer = new StringWriter();
        await fake.Client.ExportAuditAsync(writer).WaitAsync(Patience);

        Assert.Equal("1", writer.ToString().Trim());
        a.Hold!.SetResult();
        await held.WaitAsync(Patience);
    }

    [Fact]
    public async Task ManyCallersAtOnce_ExactlyTheBoundSent_TheRestRefused_PlacesAllGivenBack()
    {
        var a = Holding("a");
        using var fake = new FakeClient([a], maxAttempts: 1, maxConcurrentCalls: 3);
        var endpoint = fake.Invoker.Pool.Endpoints.Single();

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
        Assert.Equal(3, ConcurrencyLimit.OnTheWire(endpoint));
        a.Hold!.SetResult();
        await Task.WhenAll(calls.Where(c => !c.IsCompleted)).WaitAsync(Patience);
        Assert.Equal(0, ConcurrencyLimit.OnTheWire(endpoint));
    }

    private static ScriptedEndpoint Holding(string name) =>
        new(name) { Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
}
