using Grpc.Core;
using Grpc.Health.V1;
using Kms.Contracts.V1;

namespace Kms.Client.Tests.Failover;

/// <summary>Failover, retries and backoff of every call, against scripted endpoints on a fake clock.</summary>
public sealed class FailoverCallInvokerTests
{
    private static readonly GetKeyRequest AnyGet = new() { Name = "tenants/dev/keys/k" };

    [Fact]
    public async Task Call_FirstEndpointRefusesConnections_FailsOverAtOnceAndSkipsItAfterwards()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        for (var i = 0; i < 10; i++)
        {
            await fake.Client.Raw.GetKeyAsync(AnyGet);
        }

        Assert.Equal(1, a.Calls);
        Assert.Equal(10, b.Calls);
        Assert.False(fake.IsUp(a));
    }

    [Fact]
    public async Task Call_TwoHealthyEndpoints_AlternatesRoundRobin()
    {
        var (a, b) = (new ScriptedEndpoint("a"), new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        var seen = new List<(int A, int B)>();
        for (var i = 0; i < 4; i++)
        {
            await fake.Client.Raw.GetKeyAsync(AnyGet);
            seen.Add((a.Calls, b.Calls));
        }

        Assert.Equal([(1, 0), (1, 1), (2, 1), (2, 2)], seen);
    }

    [Theory]
    [InlineData(StatusCode.NotFound)]
    [InlineData(StatusCode.DeadlineExceeded)]
    [InlineData(StatusCode.ResourceExhausted)]
    [InlineData(StatusCode.PermissionDenied)]
    [InlineData(StatusCode.Unauthenticated)]
    [InlineData(StatusCode.InvalidArgument)]
    [InlineData(StatusCode.FailedPrecondition)]
    [InlineData(StatusCode.Internal)]
    [InlineData(StatusCode.Cancelled)]
    [InlineData(StatusCode.Unknown)]
    public async Task Call_FailsWithOtherThanUnavailable_ReturnedAtOnceAndEndpointKept(StatusCode code)
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw new RpcException(new Status(code, "no")) }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));

        Assert.Equal(code, e.StatusCode);
        Assert.Equal((1, 0), (a.Calls, b.Calls));
        Assert.True(fake.IsUp(a));
    }

    [Fact]
    public async Task Call_ConnectTimedOut_TreatedAsUnavailableAndRetriedElsewhere()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectTimedOut() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        await fake.Client.CreateGrantAsync("tenants/dev/keys/k", new KeyGrant());

        Assert.Equal((1, 1), (a.Calls, b.Calls));
        Assert.False(fake.IsUp(a));
    }

    [Fact]
    public async Task Call_TlsHandshakeFailed_TakenAsUnavailableNeverSentAndRetriedElsewhere()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.UntrustedCertificate() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        // CreateGrant is sent again only when the first attempt never left the client.
        await fake.Client.CreateGrantAsync("tenants/dev/keys/k", new KeyGrant { Grantee = "token:x" });

        Assert.Equal((1, 1), (a.Calls, b.Calls));
        Assert.False(fake.IsUp(a));
    }

    [Fact]
    public async Task Call_TlsHandshakeFailedOnTheOnlyEndpoint_UnavailableNamingTheCause()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.UntrustedCertificate() };
        using var fake = new FakeClient([a], maxAttempts: 2);

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains("UntrustedRoot", e.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(2, a.Calls);
    }

    [Fact]
    public async Task Call_ConnectTimedOutOnTheOnlyEndpoint_Unavailable()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectTimedOut() };
        using var fake = new FakeClient([a], maxAttempts: 2);

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal(2, a.Calls);
    }

    [Fact]
    public async Task Call_EveryAttemptUnavailable_UnavailableAfterMaxAttempts()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() };
        using var fake = new FakeClient([a], maxAttempts: 3);

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal(3, a.Calls);
    }

    [Fact]
    public async Task Call_EveryEndpointDown_StillTriesTheLeastRecentlyFailed()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() }, new ScriptedEndpoint("b") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() });
        using var fake = new FakeClient([a, b], maxAttempts: 1);

        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        fake.Time.Advance(TimeSpan.FromSeconds(1));
        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        Assert.Equal((1, 1), (a.Calls, b.Calls));
        Assert.False(fake.IsUp(a) || fake.IsUp(b));

        fake.Time.Advance(TimeSpan.FromSeconds(1));
        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        Assert.Equal((2, 1), (a.Calls, b.Calls));

        fake.Time.Advance(TimeSpan.FromSeconds(1));
        await Assert.ThrowsAsync<RpcException>(() => fake.Client.GetKeyAsync(AnyGet.Name));
        Assert.Equal((2, 2), (a.Calls, b.Calls));
    }

    [Fact]
    public async Task Call_Retried_WaitsBeforeGoingBackToAFailedEndpointButNotBeforeAFreshOne()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() }, new ScriptedEndpoint("b") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() });
        using var fake = new FakeClient([a, b], maxAttempts: 4, unitRandom: 0.5, baseBackoff: TimeSpan.FromSeconds(1), maxBackoff: TimeSpan.FromSeconds(10));

        var call = fake.Client.GetKeyAsync(AnyGet.Name);

        // a fails, b (fresh) is tried at once; then back to a after 0.5 · 1 s, to b after 0.5 · 2 s.
        Assert.Equal((1, 1), (a.Calls, b.Calls));
        fake.Time.Advance(TimeSpan.FromMilliseconds(499));
        await Eventually.StillAsync(() => a.Calls == 1, "a is not tried again before its backoff");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));
        await Eventually.TrueAsync(() => a.Calls == 2, "a is tried again after 500 ms");

        // a's second attempt is counted as it reaches a, before the client sets its wait for b:
        // the clock moves once that wait is set, or it could pass a wait that did not exist yet.
        await Eventually.TrueAsync(() => fake.Time.Timers == 2, "the wait before going back to b is set");
        fake.Time.Advance(TimeSpan.FromMilliseconds(999));
        await Eventually.StillAsync(() => b.Calls == 1, "b is not tried again before its backoff");
        fake.Time.Advance(TimeSpan.FromMilliseconds(1));

        var e = await Assert.ThrowsAsync<RpcException>(() => call);
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal((2, 2), (a.Calls, b.Calls));
    }

    [Fact]
    public async Task Call_NextWaitWouldOutlastTheDeadline_LastUnavailableReturnedWithoutWaiting()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() };
        using var fake = new FakeClient([a], maxAttempts: 10, unitRandom: 0.99, baseBackoff: TimeSpan.FromSeconds(1), callTimeout: TimeSpan.FromSeconds(1));

        var call = fake.Client.GetKeyAsync(AnyGet.Name);
        fake.Time.Advance(TimeSpan.FromMilliseconds(990));

        // The second wait (1.98 s) would end past the deadline: no third attempt, no waiting for it.
        var e = await Assert.ThrowsAsync<RpcException>(() => call);
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal(2, a.Calls);
    }

    [Fact]
    public async Task Call_WithoutDeadline_GetsCallTimeout_AndOneGivenIsKept()
    {
        var a = new ScriptedEndpoint("a");
        using var fake = new FakeClient([a], callTimeout: TimeSpan.FromSeconds(7));

        await fake.Client.Raw.GetKeyAsync(AnyGet);
        var given = new DateTime(2031, 1, 1, 0, 0, 0, DateTimeKind.Utc);
        await fake.Client.Raw.GetKeyAsync(AnyGet, deadline: given);

        Assert.Equal(fake.Time.GetUtcNow().UtcDateTime + TimeSpan.FromSeconds(7), a.Received[0].Options.Deadline);
        Assert.Equal(given, a.Received[1].Options.Deadline);
    }

    [Fact]
    public async Task RawCall_EmptyRequestId_EveryAttemptCarriesTheSameFreshIdAndTheCallersMessageIsUntouched()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);
        var request = new RotateKeyRequest { Name = "tenants/dev/keys/k" };

        await fake.Client.Raw.RotateKeyAsync(request);
        await fake.Client.Raw.RotateKeyAsync(request);

        var first = ((RotateKeyRequest)a.Received[0].Request).RequestId;
        Assert.NotEmpty(first);
        Assert.Equal(first, ((RotateKeyRequest)b.Received[0].Request).RequestId);
        Assert.NotEqual(first, ((RotateKeyRequest)b.Received[1].Request).RequestId);
        Assert.Empty(request.RequestId);
    }

    [Fact]
    public async Task CreateKeyAsync_Retried_EveryAttemptCarriesTheIdItGeneratedOnce()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        await fake.Client.CreateKeyAsync("tenants/dev", "k");
        await fake.Client.CreateKeyAsync("tenants/dev", "k2");

        var sent = ((CreateKeyRequest)a.Received[0].Request).RequestId;
        Assert.True(Guid.TryParse(sent, out _), sent);
        Assert.Equal(sent, ((CreateKeyRequest)b.Received[0].Request).RequestId);
        Assert.NotEqual(sent, ((CreateKeyRequest)b.Received[1].Request).RequestId);
    }

    [Fact]
    public async Task ScheduleKeyDeletionAsync_GivenRequestId_SentOnEveryAttempt()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        await fake.Client.ScheduleKeyDeletionAsync("tenants/dev/keys/k", TimeSpan.FromDays(7), requestId: "mine");

        Assert.All([a.Received[0], b.Received[0]], c => Assert.Equal("mine", ((ScheduleKeyDeletionRequest)c.Request).RequestId));
        Assert.Equal(TimeSpan.FromDays(7), ((ScheduleKeyDeletionRequest)b.Received[0].Request).WaitingPeriod.ToTimeSpan());
    }

    [Fact]
    public async Task CreateGrantAsync_AnswerLostAfterSending_NotRetried()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.CreateGrantAsync("tenants/dev/keys/k", new KeyGrant { Grantee = "token:x" }));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal((1, 0), (a.Calls, b.Calls));
        Assert.False(fake.IsUp(a));
    }

    [Fact]
    public async Task CancelTenantDeletionAsync_AnswerLostAfterSending_NotRetried_ConnectionRefused_RetriedElsewhere()
    {
        // The first cancel may have been applied; sent again after another admin's later
        // DeleteTenant, it would make the tenant ACTIVE again and undo that deletion.
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() }, new ScriptedEndpoint("b"));
        using (var fake = new FakeClient([a, b]))
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.CancelTenantDeletionAsync("tenants/dev"));

            Assert.Equal(StatusCode.Unavailable, e.StatusCode);
            Assert.Equal((1, 0), (a.Calls, b.Calls));
        }

        // Never sent: nothing of it ran, so it is sent elsewhere.
        var (c, d) = (new ScriptedEndpoint("c") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() }, new ScriptedEndpoint("d"));
        using var refused = new FakeClient([c, d]);
        await refused.Client.CancelTenantDeletionAsync("tenants/dev");
        Assert.Equal((1, 1), (c.Calls, d.Calls));
    }

    public static TheoryData<string> CallsThatGiveAccessBack() =>
        ["EnableKey", "EnableKeyVersion", "SetKeyPolicy", "UpdateKey", "SetRoleBinding"];

    [Theory]
    [MemberData(nameof(CallsThatGiveAccessBack))]
    public async Task CallThatGivesAccessBack_AnswerLostAfterSending_NotRetried_ConnectionRefused_RetriedElsewhere(string call)
    {
        // Applied, its answer lost, then sent again after another admin disabled the key (or
        // narrowed the policy, removed the binding) in an incident: the repeat would undo that.
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() }, new ScriptedEndpoint("b"));
        using (var fake = new FakeClient([a, b]))
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => Send(fake.Client, call));

            Assert.Equal(StatusCode.Unavailable, e.StatusCode);
            Assert.Equal((1, 0), (a.Calls, b.Calls));
        }

        var (c, d) = (new ScriptedEndpoint("c") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() }, new ScriptedEndpoint("d"));
        using var refused = new FakeClient([c, d]);
        await Send(refused.Client, call);
        Assert.Equal((1, 1), (c.Calls, d.Calls));

        static Task Send(KmsClient client, string call) => call switch
        {
            "EnableKey" => client.Raw.EnableKeyAsync(new EnableKeyRequest { Name = "tenants/dev/keys/k" }).ResponseAsync,
            "EnableKeyVersion" => client.Raw.EnableKeyVersionAsync(new EnableKeyVersionRequest { Name = "tenants/dev/keys/k/versions/1" }).ResponseAsync,
            "SetKeyPolicy" => client.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = "tenants/dev/keys/k" }).ResponseAsync,
            "UpdateKey" => client.Raw.UpdateKeyAsync(new UpdateKeyRequest { Key = new Key { Name = "tenants/dev/keys/k" } }).ResponseAsync,
            "SetRoleBinding" => client.Access.SetRoleBindingAsync(new SetRoleBindingRequest()).ResponseAsync,
            _ => throw new ArgumentOutOfRangeException(nameof(call)),
        };
    }

    [Fact]
    public async Task CreateGrantAsync_ConnectionRefused_RetriedElsewhere()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        await fake.Client.CreateGrantAsync("tenants/dev/keys/k", new KeyGrant { Grantee = "token:x" });

        Assert.Equal((1, 1), (a.Calls, b.Calls));
    }

    [Fact]
    public async Task DecryptAsync_AnswerLostAfterSending_RetriedElsewhere()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.LostAnswer() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        using var plaintext = await fake.Client.DecryptAsync(new byte[] { 1, 2, 3 });

        Assert.Equal((1, 1), (a.Calls, b.Calls));
    }

    [Fact]
    public void BlockingCall_FirstEndpointRefusesConnections_AnsweredByTheOther()
    {
        var (a, b) = (new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() }, new ScriptedEndpoint("b"));
        using var fake = new FakeClient([a, b]);

        fake.Client.Raw.GetKey(AnyGet);

        Assert.Equal((1, 1), (a.Calls, b.Calls));
    }

    [Fact]
    public async Task DownEndpoint_ProbedOncePerIntervalWhileInUse_AndBackWhenServing()
    {
        var refuse = true;
        var a = new ScriptedEndpoint("a") { Respond = _ => refuse ? throw ScriptedEndpoint.ConnectionRefused() : null, Health = HealthCheckResponse.Types.ServingStatus.NotServing };
        var b = new ScriptedEndpoint("b");
        using var fake = new FakeClient([a, b], healthCheckInterval: TimeSpan.FromSeconds(5));

        await fake.Client.GetKeyAsync(AnyGet.Name);
        fake.Time.Advance(TimeSpan.FromSeconds(4));
        await fake.Client.GetKeyAsync(AnyGet.Name);
        Assert.Equal(0, a.HealthChecks);

        // Due: one probe, NOT_SERVING, so it stays out even though calls would now work.
        refuse = false;
        fake.Time.Advance(TimeSpan.FromSeconds(1));
        await fake.Client.GetKeyAsync(AnyGet.Name);
        await fake.Client.GetKeyAsync(AnyGet.Name);
        await Eventually.TrueAsync(() => a.HealthChecks == 1, "a is probed");
        Assert.False(fake.IsUp(a));
        Assert.Equal(1, a.Calls);

        a.Health = HealthCheckResponse.Types.ServingStatus.Serving;
        fake.Time.Advance(TimeSpan.FromSeconds(5));
        await fake.Client.GetKeyAsync(AnyGet.Name);
        await Eventually.TrueAsync(() => fake.IsUp(a), "a is back after a SERVING probe");
        Assert.Equal(2, a.HealthChecks);

        var before = (a.Calls, b.Calls);
        await fake.Client.GetKeyAsync(AnyGet.Name);
        await fake.Client.GetKeyAsync(AnyGet.Name);
        Assert.Equal((before.Item1 + 1, before.Item2 + 1), (a.Calls, b.Calls));
    }

    [Fact]
    public async Task ServerStream_FailsBeforeItsFirstMessage_RetriedElsewhere()
    {
        var a = new ScriptedEndpoint("a") { Stream = ([], ScriptedEndpoint.LostAnswer()) };
        var b = new ScriptedEndpoint("b") { Stream = ([new ExportAuditResponse { Lines = { "1" } }, new ExportAuditResponse { Lines = { "2" } }], null) };
        using var fake = new FakeClient([a, b]);

        using var writer = new StringWriter();
        await fake.Client.ExportAuditAsync(writer);

        Assert.Equal(["1", "2"], writer.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal((1, 1), (a.Calls, b.Calls));
    }

    [Fact]
    public async Task ServerStream_FailsAfterItsFirstMessage_ErrorReturnedAndNotRetried()
    {
        var a = new ScriptedEndpoint("a") { Stream = ([new ExportAuditResponse { Lines = { "1" } }], ScriptedEndpoint.LostAnswer()) };
        var b = new ScriptedEndpoint("b") { Stream = ([new ExportAuditResponse { Lines = { "1" } }, new ExportAuditResponse { Lines = { "2" } }], null) };
        using var fake = new FakeClient([a, b]);

        using var writer = new StringWriter();
        var e = await Assert.ThrowsAsync<RpcException>(() => fake.Client.ExportAuditAsync(writer));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal("1", writer.ToString().Trim());
        Assert.Equal((1, 0), (a.Calls, b.Calls));
        Assert.False(fake.IsUp(a));
    }

    [Fact]
    public async Task Call_DisposedWhileWaitingToRetry_Cancelled()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() };
        using var fake = new FakeClient([a], unitRandom: 0.5);

        var call = fake.Client.Raw.GetKeyAsync(AnyGet);
        call.Dispose();

        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
        Assert.Equal(StatusCode.Cancelled, e.StatusCode);
        Assert.Equal(1, a.Calls);
    }

    [Fact]
    public async Task Call_CallerCancelsWhileWaitingToRetry_Cancelled()
    {
        var a = new ScriptedEndpoint("a") { Respond = _ => throw ScriptedEndpoint.ConnectionRefused() };
        using var fake = new FakeClient([a], unitRandom: 0.5);
        using var cancel = new CancellationTokenSource();

        var call = fake.Client.GetKeyAsync(AnyGet.Name, cancel.Token);
        await cancel.CancelAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => call);
        Assert.Equal(StatusCode.Cancelled, e.StatusCode);
        Assert.Equal(1, a.Calls);
    }
}
