using Grpc.Core;
using Kms.Client.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests.Failover;

/// <summary>
/// RESOURCE_EXHAUSTED with a <c>google.rpc.RetryInfo</c> delay (a used-up tenant quota or call rate, a
/// client address past its failed authentications): a unary call — a once-only one included, as the
/// server refused it before any of it ran — waits the delay (plus up to a quarter of jitter, capped at
/// <see cref="KmsRetryOptions.MaxRetryInfoDelay"/>) and goes back to the same endpoint, which stays in
/// the rotation; without RetryInfo, past the cap, the deadline or the attempts, the RESOURCE_EXHAUSTED
/// is returned. Each retry is counted (<c>kms.client.quota_retries</c>). A server stream is retried so
/// only if its repeat is harmless (ExportAudit), and only until its first message. Scripted endpoints
/// on a fake clock.
/// </summary>
public sealed class RetryInfoTests
{
    private static readonly GetKeyRequest AnyGet = new() { Name = "tenants/dev/keys/k" };
    // A hang guard in real time, not a bound on how fast (the calls run on a fake clock): the
    // suite's other classes hold thread-pool threads, and under CI's full run 10 s ran out once
    // for a step that needed the pool (DataKeyCacheDisposeTests, 70b7228).
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData(0.0, 300)] // the delay asked, to the tick
    [InlineData(0.5, 337)] // plus up to a quarter of it: 300 + 0.5 · 75 = 337.5
    public async Task Quota_WaitsTheDelayAsked_ThenTheSameEndpoint_NotAnother_NoneTakenOut(double unitRandom, int waitMs)
    {
        var answers = 0;
        var a = new ScriptedEndpoint("a") { Respond = _ => Interlocked.Increment(ref answers) == 1 ? throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(300)) : null };
        var b = new ScriptedEndpoint("b");
        using var sink = new LogSink();
        using var fake = new FakeClient([a, b], unitRandom: unitRandom, logger: sink.CreateLogger("test"));
        using var retries = new QuotaRetryCount();

        var call = fake.Client.GetKeyAsync(AnyGet.Name);
        Assert.Equal((1, 0), (a.Calls, b.Calls));
        fake.Time.Advance(TimeSpan.FromMilliseconds(waitMs - 1));
        await Eventually.StillAsync(() => (a.Calls, b.Calls) == (1, 0), "no attempt anywhere before the delay asked");
        Assert.Equal(0, retries.Value); // counted once the attempt is sent, not when the wait begins
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await call.WaitAsync(Patience);

        Assert.Equal((2, 0), (a.Calls, b.Calls));
        Assert.Equal((1, 0), (retries.Value, retries.Tagged));
        Assert.True(fake.IsUp(a) && fake.IsUp(b));
        Assert.DoesNotContain(sink.Events, e => e.EventId == 3001);
        Assert.Contains(sink.Events, e => e.EventId == 3003);
    }

    [Fact]
    public async Task Quota_JitterCappedAtMaxRetryInfoDelay_NeverBelowTheDelayAsked()
    {
        var answers = 0;
        var a = new ScriptedEndpoint("a") { Respond = _ => Interlocked.Increment(ref answers) == 1 ? throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(300)) : null };
        using var fake = new FakeClient([a], unitRandom: 0.99, maxRetryInfoDelay: TimeSpan.FromMilliseconds(320));

        var call = fake.Client.GetKeyAsync(AnyGet.Name);
        fake.Time.Advance(TimeSpan.FromMilliseconds(319));
        await Eventually.StillAsync(() => a.Calls == 1, "not before the cap (300 + 0.99 · 75 is past it)");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await call.WaitAsync(Patience);
        Assert.Equal(2, a.Calls);

        Assert.Equal(TimeSpan.FromMilliseconds(300), new Backoff(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1), () => 0.99).AtLeast(TimeSpan.FromMilliseconds(300), TimeSpan.FromMilliseconds(300)));
    }

    [Fact]
    public async Task Quota_UsedUpOnEveryAttempt_StopsAtMaxAttempts_TheLastRefusalReturnedWithItsRetryInfo()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(200)) };
        var b = new ScriptedEndpoint("b");
        using var fake = new FakeClient([a, b], maxAttempts: 3);
        using var retries = new QuotaRetryCount();

        var call = fake.Client.GetKeyAsync(AnyGet.Name);
        Assert.Equal(1, a.Calls);

        // The clock moves on until the call ends. An attempt is counted as it reaches the endpoint,
        // before the client has set its timer for the next, so moving it once per attempt could
        // come before that timer and leave it unfired.
        await Eventually.TrueAsync(
            () =>
            {
                if (!call.IsCompleted)
                {
                    fake.Time.Advance(TimeSpan.FromMilliseconds(200));
                }

                return call.IsCompleted;
            },
            "three attempts to a, each after the delay asked");

        var e = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Patience));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal("the crypto-operation quota of tenants/dev is used up", e.Status.Detail);
        Assert.Equal(TimeSpan.FromMilliseconds(200), RetrySafety.RetryInfoDelay(e, TimeSpan.FromSeconds(1)));
        Assert.Equal((3, 0), (a.Calls, b.Calls));
        Assert.True(fake.IsUp(a));
        Assert.Equal(2, retries.Value); // the last refusal is returned, not retried
    }

    public static TheoryData<string, RpcException> ReturnedAtOnce => new()
    {
        { "no RetryInfo", ScriptedEndpoint.QuotaUsedUp(null) },
        { "a delay past MaxRetryInfoDelay (5 s)", ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromSeconds(6)) },
        { "a negative delay", ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(-100)) },
        { "a RESOURCE_EXHAUSTED without a rich status", new RpcException(new Status(StatusCode.ResourceExhausted, "the request's message is too large")) },
    };

    [Theory]
    [MemberData(nameof(ReturnedAtOnce))]
    public async Task ResourceExhausted_WithoutAUsableRetryInfo_ReturnedAtOnce_NoOtherEndpointTried(string what, RpcException refusal)
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw refusal }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);
        using var retries = new QuotaRetryCount();

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience));

        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.True((a.Calls, b.Calls) == (1, 0), what);
        Assert.True(fake.IsUp(a));
        Assert.Equal(0, retries.Value);
    }

    [Fact]
    public async Task OnceOnlyUnaryCall_RetryInfo_WaitedOut_SentAgainToTheSameEndpoint()
    {
        // CreateGrant without a request id is not repeated after a lost answer; a refusal with RetryInfo
        // is made before any of a unary call runs, so it is sent again.
        var answers = 0;
        var a = new ScriptedEndpoint("a") { Respond = _ => Interlocked.Increment(ref answers) == 1 ? throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(10), "the call rate of token:admin, a principal of no tenant, is used up") : null };
        var b = new ScriptedEndpoint("b");
        using var fake = new FakeClient([a, b]);
        using var retries = new QuotaRetryCount();

        var call = fake.Client.CreateGrantAsync("tenants/dev/keys/k", new KeyGrant { Grantee = "token:x" });
        Assert.Equal(1, a.Calls);
        fake.Time.Advance(TimeSpan.FromMilliseconds(10));
        await call.WaitAsync(Patience);

        Assert.Equal((2, 0), (a.Calls, b.Calls));
        Assert.Equal(1, retries.Value);
    }

    [Fact]
    public async Task UnknownMethod_RetryInfo_UnaryWaitedOut_StreamReturnedAtOnce()
    {
        // A method the retry table does not know (a newer server's) is once-only. Unary: refused before
        // any of it ran, sent again. A stream's caller is checked again before each message, after its
        // handler began: refused before its first message, it may have done work, and is returned.
        var marshaller = Marshallers.Create<GetKeyRequest>(Google.Protobuf.MessageExtensions.ToByteArray, GetKeyRequest.Parser.ParseFrom);
        var keys = Marshallers.Create<Key>(Google.Protobuf.MessageExtensions.ToByteArray, Key.Parser.ParseFrom);
        var unary = new Method<GetKeyRequest, Key>(MethodType.Unary, "kms.v1.KeyManagementService", "SomeCallOfTomorrow", marshaller, keys);
        var stream = new Method<GetKeyRequest, Key>(MethodType.ServerStreaming, "kms.v1.KeyManagementService", "SomeStreamOfTomorrow", marshaller, keys);
        Assert.False(RetrySafety.IsRepeatable(unary, AnyGet) || RetrySafety.IsRepeatable(stream, AnyGet));
        var answers = 0;
        var a = new ScriptedEndpoint("a")
        {
            Respond = _ => Interlocked.Increment(ref answers) == 1 ? throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(10)) : null,
            Stream = ([], ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(10))),
        };
        using var fake = new FakeClient([a]);
        using var retries = new QuotaRetryCount();

        var call = fake.Invoker.AsyncUnaryCall(unary, null, default, AnyGet);
        fake.Time.Advance(TimeSpan.FromMilliseconds(10));
        await call.ResponseAsync.WaitAsync(Patience);
        Assert.Equal((2, 1L), (a.Calls, retries.Value));

        using var streamCall = fake.Invoker.AsyncServerStreamingCall(stream, null, default, AnyGet);
        var e = await Assert.ThrowsAsync<RpcException>(() => streamCall.ResponseStream.MoveNext(CancellationToken.None).WaitAsync(Patience));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        fake.Time.Advance(TimeSpan.FromSeconds(1));
        await Eventually.StillAsync(() => a.Calls == 3, "the stream is not sent again");
        Assert.Equal(1, retries.Value);
    }

    [Fact]
    public async Task RetryInfoZero_OnMaxRetryInfoDelayZero_NeverRetried()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.Zero) };
        using var fake = new FakeClient([a], maxRetryInfoDelay: TimeSpan.Zero);

        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience));

        Assert.Equal(1, a.Calls);
    }

    [Fact]
    public async Task Quota_DelayEndsPastTheDeadline_ReturnedWithoutWaiting()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromSeconds(2)) };
        using var fake = new FakeClient([a], callTimeout: TimeSpan.FromSeconds(2));

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name).WaitAsync(Patience));

        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal(1, a.Calls);
    }

    [Fact]
    public async Task Quota_CallerCancelsDuringTheWait_CancelledAtOnce_NotSentAgain()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromSeconds(1)) };
        using var fake = new FakeClient([a]);
        using var stop = new CancellationTokenSource();
        using var retries = new QuotaRetryCount();

        var call = fake.Client.GetKeyAsync(AnyGet.Name, stop.Token);
        Assert.Equal(1, a.Calls);
        await stop.CancelAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Patience));
        Assert.Equal(StatusCode.Cancelled, e.StatusCode);
        fake.Time.Advance(TimeSpan.FromSeconds(2));
        await Eventually.StillAsync(() => a.Calls == 1, "nothing sent after the cancellation");
        Assert.Equal(0, retries.Value);
    }

    [Fact]
    public async Task ServerStream_RefusedForAQuotaBeforeItsFirstMessage_WaitsTheDelay_ThenTheSameEndpoint_EachLineOnce()
    {
        var a = new ScriptedEndpoint("a") { Stream = ([], ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(300), "the call rate of token:officer, a principal of no tenant, is used up")) };
        var b = new ScriptedEndpoint("b") { Stream = ([new ExportAuditResponse { Lines = { "b" } }], null) };
        using var fake = new FakeClient([a, b]);
        using var retries = new QuotaRetryCount();
        using var writer = new StringWriter();

        var export = fake.Client.ExportAuditAsync(writer);
        await Eventually.TrueAsync(() => a.Calls == 1, "the first attempt, refused");
        a.Stream = ([new ExportAuditResponse { Lines = { "1" } }, new ExportAuditResponse { Lines = { "2", "3" } }], null);
        fake.Time.Advance(TimeSpan.FromMilliseconds(299));
        await Eventually.StillAsync(() => (a.Calls, b.Calls) == (1, 0), "no attempt anywhere before the delay asked");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await export.WaitAsync(Patience);

        Assert.Equal(["1", "2", "3"], writer.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal((2, 0), (a.Calls, b.Calls));
        Assert.Equal(1, retries.Value);
        Assert.True(fake.IsUp(a));
    }

    [Fact]
    public async Task ServerStream_RefusedForAQuotaAfterAMessage_RefusalReturned_NotRestarted_NoLineTwice()
    {
        // A server checks a stream's caller again before every message it sends (a credential no longer
        // remembered is looked up again, and its client address may be past its failed authentications):
        // a RESOURCE_EXHAUSTED with RetryInfo can end a stream part way. The caller has the lines so far;
        // a new stream would give them again.
        var a = new ScriptedEndpoint("a") { Stream = ([new ExportAuditResponse { Lines = { "1", "2" } }], ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(300))) };
        var b = new ScriptedEndpoint("b") { Stream = ([new ExportAuditResponse { Lines = { "1", "2" } }, new ExportAuditResponse { Lines = { "3" } }], null) };
        using var fake = new FakeClient([a, b]);
        using var retries = new QuotaRetryCount();
        using var writer = new StringWriter();

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.ExportAuditAsync(writer).WaitAsync(Patience));

        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal(TimeSpan.FromMilliseconds(300), RetrySafety.RetryInfoDelay(e, TimeSpan.FromSeconds(5)));
        fake.Time.Advance(TimeSpan.FromSeconds(1));
        await Eventually.StillAsync(() => (a.Calls, b.Calls) == (1, 0), "the stream is not sent again, here or elsewhere");
        Assert.Equal(["1", "2"], writer.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(0, retries.Value);
        Assert.True(fake.IsUp(a));
    }

    [Fact]
    public void RetryInfoDelay_ReadOnlyFromAResourceExhaustedRichStatusOfTheSameCode()
    {
        var most = TimeSpan.FromSeconds(5);
        Assert.Equal(TimeSpan.FromMilliseconds(1500), RetrySafety.RetryInfoDelay(ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMilliseconds(1500)), most));
        Assert.Equal(TimeSpan.MaxValue, RetrySafety.RetryInfoDelay(ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromDays(3650)), most));
        Assert.Null(RetrySafety.RetryInfoDelay(ScriptedEndpoint.QuotaUsedUp(null), most));

        // A rich status of another code, a trailer that is no status, another status code: not believed.
        var otherCode = new Google.Rpc.Status { Code = (int)StatusCode.Unavailable, Message = "x" };
        otherCode.Details.Add(Google.Protobuf.WellKnownTypes.Any.Pack(new Google.Rpc.RetryInfo { RetryDelay = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromSeconds(1)) }));
        Assert.Null(RetrySafety.RetryInfoDelay(new RpcException(new Status(StatusCode.ResourceExhausted, "x"), new Metadata { { "grpc-status-details-bin", Google.Protobuf.MessageExtensions.ToByteArray(otherCode) } }), most));
        Assert.Null(RetrySafety.RetryInfoDelay(new RpcException(new Status(StatusCode.ResourceExhausted, "x"), new Metadata { { "grpc-status-details-bin", new byte[] { 0xff, 0xff, 0xff } } }), most));
        Assert.Null(RetrySafety.RetryInfoDelay(new RpcException(new Status(StatusCode.Unavailable, "x"), ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromSeconds(1)).Trailers), most));
    }
}
