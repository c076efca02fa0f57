using Grpc.Core;
using Kms.Contracts.V1;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Tests.Failover;

/// <summary>
/// A full KMS node sheds a call with UNAVAILABLE and a <c>kms-shed</c> trailer before doing any of
/// it. The SDK keeps the node in the rotation (it is up, only full), sends the call at once to
/// another endpoint believed up or after a backoff of which half is certain and which is at least
/// the server's pushback, and may send any method again — a once-only creation included. Against
/// scripted endpoints on a fake clock.
/// </summary>
public sealed class ServerShedTests
{
    private static readonly GetKeyRequest AnyGet = new() { Name = "tenants/dev/keys/k" };
    // A hang guard in real time, not a bound on how fast (the calls run on a fake clock): the
    // suite's other classes hold thread-pool threads, and under CI's full run 10 s ran out once
    // for a step that needed the pool (DataKeyCacheDisposeTests, 70b7228).
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Call_ShedByOneEndpoint_SentAtOnceToAnother_ItIsPassedOverForItsPushbackOnly_NeitherTakenOut()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.Shed(pushbackMs: "100") };
        var b = new ScriptedEndpoint("b");
        using var sink = new LogSink();
        using var fake = new FakeClient([a, b], logger: sink.CreateLogger("test"));

        // a sheds the first call, which goes to b at once; for 100 ms a is passed over.
        for (var i = 0; i < 4; i++)
        {
            await fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience);
        }

        Assert.Equal((1, 4), (a.Calls, b.Calls));
        fake.Time.Advance(TimeSpan.FromMilliseconds(99));
        await fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience);
        Assert.Equal((1, 5), (a.Calls, b.Calls));

        // Then it is offered calls again: it was never out of the rotation.
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience);
        Assert.Equal((2, 6), (a.Calls, b.Calls));
        Assert.True(fake.IsUp(a) && fake.IsUp(b));
        Assert.DoesNotContain(sink.Events, e => e.EventId == 3001);
        var shedLog = sink.Events.First(e => e.EventId == 3006);
        Assert.Equal(LogLevel.Warning, shedLog.Level);
        Assert.Contains("1 attempts shed by full KMS nodes", shedLog.Message, StringComparison.Ordinal);
        Assert.Contains("/kms.v1.KeyManagementService/GetKey on https://a.test:8443/, capacity", shedLog.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Call_EveryEndpointFull_TheRetryWaits_NotSentRoundTheFullNodesAtOnce()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.Shed(pushbackMs: "300") };
        var b = new ScriptedEndpoint("b") { Respond = _ => throw ScriptedEndpoint.Shed(pushbackMs: "300") };
        var c = new ScriptedEndpoint("c") { Respond = _ => throw ScriptedEndpoint.Shed(pushbackMs: "300") };
        using var fake = new FakeClient([a, b, c], maxAttempts: 5, unitRandom: 0, baseBackoff: TimeSpan.FromMilliseconds(100));

        // Each endpoint once, at once (none was known to be full); then the retry waits the pushback.
        using var stop = new CancellationTokenSource();
        var first = fake.Client.Raw.GetKeyAsync(AnyGet, cancellationToken: stop.Token).ResponseAsync;
        await Eventually.TrueAsync(() => a.Calls + b.Calls + c.Calls == 3, "each endpoint tried once");
        await Eventually.StillAsync(() => a.Calls + b.Calls + c.Calls == 3, "no fourth attempt before the pushback");

        // A new call meanwhile: every endpoint is full, so it is sent to one (its first attempt), and waits after.
        var second = fake.Client.Raw.GetKeyAsync(AnyGet, cancellationToken: stop.Token).ResponseAsync;
        await Eventually.TrueAsync(() => a.Calls + b.Calls + c.Calls == 4, "the new call's first attempt");
        await Eventually.StillAsync(() => a.Calls + b.Calls + c.Calls == 4, "its retry waits too");

        fake.Time.Advance(TimeSpan.FromMilliseconds(300));
        // After it, the first call's retry (a, full again) and the second's (b, full again, then c at
        // once: c's pushback is over and this call has not tried it).
        await Eventually.TrueAsync(() => (a.Calls, b.Calls, c.Calls) == (3, 2, 2), "both retried after the pushback");
        await Eventually.StillAsync(() => a.Calls + b.Calls + c.Calls == 7, "and then wait again");
        Assert.True(fake.IsUp(a) && fake.IsUp(b) && fake.IsUp(c));
        await stop.CancelAsync();
        Assert.Equal(StatusCode.Cancelled, (await Assert.ThrowsAsync<RpcException>(() => first.WaitAsync(Patience))).StatusCode);
        Assert.Equal(StatusCode.Cancelled, (await Assert.ThrowsAsync<RpcException>(() => second.WaitAsync(Patience))).StatusCode);
    }

    [Fact]
    public async Task Call_EveryEndpointFull_NewCallGoesToTheOneWhosePushbackEndsFirst()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.Shed(pushbackMs: "300") };
        var b = new ScriptedEndpoint("b") { Respond = _ => throw ScriptedEndpoint.Shed(pushbackMs: "100") };
        using var fake = new FakeClient([a, b], maxAttempts: 2);

        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience)); // a, then b at once
        Assert.Equal((1, 1), (a.Calls, b.Calls));

        // Both full: not always the first endpoint, but b, free again sooner.
        using var stop = new CancellationTokenSource();
        var next = fake.Client.Raw.GetKeyAsync(AnyGet, cancellationToken: stop.Token).ResponseAsync;
        await Eventually.TrueAsync(() => b.Calls == 2, "the new call's first attempt goes to b");
        await Eventually.StillAsync(() => a.Calls == 1, "its retry, to a, waits for the pushback");
        await stop.CancelAsync();
        Assert.Equal(StatusCode.Cancelled, (await Assert.ThrowsAsync<RpcException>(() => next.WaitAsync(Patience))).StatusCode);
    }

    [Fact]
    public async Task Call_PlainUnavailable_StillTakesTheEndpointOut()
    {
        // The contrast: without the trailer nothing says the node is up.
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() };
        var b = new ScriptedEndpoint("b");
        using var fake = new FakeClient([a, b]);

        for (var i = 0; i < 4; i++)
        {
            await fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience);
        }

        Assert.Equal((1, 4), (a.Calls, b.Calls));
        Assert.False(fake.IsUp(a));
    }

    [Fact]
    public async Task CreateGrant_ShedByTheServer_SentAgainThoughOnceOnly()
    {
        // A lost answer to CreateGrant is not retried (FailoverCallInvokerTests); a shed one did nothing.
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.Shed() };
        var b = new ScriptedEndpoint("b");
        using var fake = new FakeClient([a, b]);

        await fake.Client.CreateGrantAsync("tenants/dev/keys/k", new KeyGrant { Grantee = "token:x" }).WaitAsync(Patience);

        Assert.Equal((1, 1), (a.Calls, b.Calls));
        Assert.True(fake.IsUp(a));
    }

    [Theory]
    [InlineData("800", 800)] // the pushback is longer than half the ceiling (500 ms): it is waited
    [InlineData("100", 500)] // shorter: half the ceiling is
    [InlineData("60000", 2_000)] // capped at the longest backoff
    [InlineData(null, 500)]
    [InlineData("-1", 500)]
    public async Task Call_ShedByTheOnlyEndpoint_RetriedAfterHalfTheCeilingOrThePushback_WhicheverIsLonger(string? pushbackMs, int waitMs)
    {
        var answers = 0;
        var a = new ScriptedEndpoint("a") { Respond = _ => Interlocked.Increment(ref answers) == 1 ? throw ScriptedEndpoint.Shed("queue_delay", pushbackMs) : null };
        using var fake = new FakeClient([a], unitRandom: 0, baseBackoff: TimeSpan.FromSeconds(1), maxBackoff: TimeSpan.FromSeconds(2));

        var call = fake.Client.GetKeyAsync(AnyGet.Name);
        await Eventually.TrueAsync(() => a.Calls == 1, "the first attempt is sent");
        fake.Time.Advance(TimeSpan.FromMilliseconds(waitMs - 1));
        await Eventually.StillAsync(() => a.Calls == 1, "no second attempt before the wait");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await call.WaitAsync(Patience);

        Assert.Equal(2, a.Calls);
        Assert.True(fake.IsUp(a));
    }

    [Fact]
    public async Task Call_ShedOnEveryAttempt_UnavailableWithTheServersMessage_EndpointUp_EachShedCounted()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.Shed(pushbackMs: "300") };
        using var fake = new FakeClient([a], maxAttempts: 3, unitRandom: 0, baseBackoff: TimeSpan.FromMilliseconds(100));
        using var shed = new ShedCount("server");

        var call = fake.Client.GetKeyAsync(AnyGet.Name);
        for (var sent = 1; sent < 3; sent++)
        {
            // An attempt is counted as it reaches a, before the client sets its timer for the next
            // (the second on another thread, once the first wait ended): the clock moves once that
            // timer is set, or it could pass a wait that did not exist yet and leave it unfired.
            await Eventually.TrueAsync(() => fake.Time.Timers == sent, $"the wait after attempt {sent} is set");
            Assert.Equal(sent, a.Calls);
            fake.Time.Advance(TimeSpan.FromMilliseconds(299));
            await Eventually.StillAsync(() => a.Calls == sent, "no attempt before the pushback (300 ms; half the ceiling is 50 or 100)");
            fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        }

        var e = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Patience));
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal("the server is at capacity; retry with backoff", e.Status.Detail);
        Assert.Equal(3, a.Calls);
        Assert.Equal(3, shed.Value);
        Assert.True(fake.IsUp(a));
    }
}
