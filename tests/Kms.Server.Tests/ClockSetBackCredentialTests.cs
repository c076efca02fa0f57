using System.Security.Cryptography.X509Certificates;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A node whose clock is set back (a wrong NTP source, a VM restored from a snapshot) while it
/// runs or across a restart: an API token, a client certificate or a client CRL that has ended by
/// the time the deployment recorded as seen is refused (UNAUTHENTICATED), and an import job that
/// has ended is shown EXPIRED, although by the node's clock each is still good. The wall clock is
/// set back without the monotonic clock, as a stepped system clock is.
/// </summary>
public sealed class ClockSetBackCredentialTests : IAsyncLifetime, IDisposable
{
    // The real time, to the second: certificates are presented by clients on the real clock.
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds());
    private readonly SetBackClock _time = new(Start);
    private readonly TestPki _pki = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-clock-").FullName;
    private KmsTestServer? _server;

    private KmsTestServer Server => _server ?? throw new InvalidOperationException("no server started");

    private string CaPath => Path.Combine(_dir, "client-ca.crt");

    private string CrlPath => Path.Combine(_dir, "clients.crl");

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }

    public void Dispose()
    {
        _pki.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task Token_ExpiredByTheTimeRecordedAsSeen_ClockSetBackWhileRunning_Unauthenticated()
    {
        await StartAsync();
        var token = await IssueTokenAsync("set-back-running", TimeSpan.FromHours(1));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(token));

        await PassAsync(TimeSpan.FromHours(2));
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(token));

        // By the node's clock the token has half an hour left.
        _time.SetBack(TimeSpan.FromMinutes(90));
        Assert.Equal(Start.AddMinutes(30), _time.GetUtcNow());
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(token));

        // A token issued now lives its hour by the time the deployment has seen, not expired
        // from the start (its life counted from the node's clock would have ended already).
        var fresh = await IssueTokenAsync("issued-set-back", TimeSpan.FromHours(1));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(fresh));
    }

    [Fact]
    public async Task Token_ExpiredByTheTimeRecordedAsSeen_NodeRestartedWithItsClockSetBack_Unauthenticated()
    {
        await StartAsync();
        var token = await IssueTokenAsync("set-back-restart", TimeSpan.FromHours(1));
        await PassAsync(TimeSpan.FromHours(2));

        // A VM restored, or a reboot with a wrong clock: the record in the database is all this
        // node has to go by when it starts, before any lifecycle pass.
        await RestartWithTheClockSetBackAsync(TimeSpan.FromMinutes(90));
        Assert.Equal(Start.AddMinutes(30), _time.GetUtcNow());
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(token));
    }

    [Fact]
    public async Task Token_RevokedThroughAnotherNode_FeedNotRead_ClockAheadThenPutRight_RememberedNoLongerThanTheCacheTime()
    {
        // While a node cannot read the change feed, the credential cache time (5 s here) is how
        // late another node's revocation reaches it. A node whose clock ran an hour ahead (and
        // was then put right) remembered a caller it authenticated meanwhile until its clock
        // came back to that hour: an entry's age was judged on the wall clock, which the step
        // set back, so the revoked token was served for an hour more.
        await StartAsync("--Storage:ChangeFeed:PollInterval=00:05:00"); // the feed is read at the start only
        await WaitForTheFirstFeedReadAsync();
        using var admin = Server.DeploymentAdmin();
        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:elsewhere", Tenant = "tenants/dev" });
        await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "token:elsewhere", Role = "key-user", Tenant = "tenants/dev" });
        var issued = await admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:elsewhere", Kind = "SESSION", Lifetime = Duration.FromTimeSpan(TimeSpan.FromHours(8)) });

        _time.SetBack(TimeSpan.FromHours(-1)); // stepped an hour ahead
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(issued.Secret)); // authenticated, remembered

        // Revoked as another node revokes: in the database and its feed, which this node does not read.
        await Server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().RevokeApiTokenAsync(issued.Token.Id, _time.GetUtcNow(), default);
        _time.SetBack(TimeSpan.FromHours(1)); // put right
        _time.Advance(TimeSpan.FromSeconds(6)); // past the cache time, on both clocks

        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(issued.Secret));
    }

    [Fact]
    public async Task ClientCertificate_ExpiredByTheTimeRecordedAsSeen_ClockSetBack_Unauthenticated()
    {
        await StartAsync();
        using var certificate = _pki.Issue("alice", notBefore: Start.AddHours(-1), notAfter: Start.AddHours(1));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(certificate));

        await PassAsync(TimeSpan.FromHours(2));
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(certificate));

        _time.SetBack(TimeSpan.FromMinutes(90));
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(certificate));
        using var current = _pki.Issue("alice", notBefore: Start.AddHours(-1), notAfter: Start.AddDays(1));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(current));
    }

    [Fact]
    public async Task ClientCrl_PastItsNextUpdateByTheTimeRecordedAsSeen_ClockSetBack_EveryCertificateRefused()
    {
        await StartAsync(crlNextUpdate: Start.AddHours(1));
        using var certificate = _pki.Issue("alice", notBefore: Start.AddHours(-1), notAfter: Start.AddDays(1));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(certificate));

        await PassAsync(TimeSpan.FromHours(2));
        _time.SetBack(TimeSpan.FromMinutes(90));
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(certificate));
        Assert.Contains("every client certificate is refused until a fresh CRL is installed", Server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ImportJob_ExpiredByTheTimeRecordedAsSeen_ClockSetBack_ShownExpired()
    {
        await StartAsync();
        using var client = Server.CreateClient();
        var job = await client.CreateImportJobAsync("tenants/dev", "set-back", ImportMethod.RsaOaep3072Sha1Aes256);
        Assert.Equal(ImportJobState.Active, job.State);

        await PassAsync(Kms.Core.Keys.ImportJob.Lifetime + TimeSpan.FromHours(1));
        _time.SetBack(TimeSpan.FromHours(2));
        Assert.True(_time.GetUtcNow() < job.ExpireTime.ToDateTimeOffset());
        Assert.Equal(ImportJobState.Expired, (await client.GetImportJobAsync(job.Name)).State);
    }

    private Task StartAsync(params string[] arguments) => StartAsync(null, arguments);

    private async Task StartAsync(DateTimeOffset? crlNextUpdate, params string[] arguments)
    {
        _pki.WriteCa(CaPath);
        _pki.WriteCrl(CrlPath, crlNextUpdate ?? Start.AddDays(7));
        _server = await KmsTestServer.StartAsync(null, null, "dev", UseClock, [$"--Kms:ClientCaPath={CaPath}", $"--Kms:ClientCrlPath={CrlPath}", .. arguments]);
        using var admin = _server.DeploymentAdmin();
        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:alice", Tenant = "tenants/dev" });
        await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "cn:alice", Role = "key-user", Tenant = "tenants/dev" });
    }

    // The change-feed reader's first pass, which forgets every remembered caller, is over.
    private async Task WaitForTheFirstFeedReadAsync()
    {
        var worker = Server.Services.GetRequiredService<Hosting.ClusterCoherenceWorker>();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (worker.Completed == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the change feed was not read within 30 s of the start");
            await Task.Delay(20);
        }
    }

    // Stops the server, sets its clock back while it is down, starts it on the same data.
    private async Task RestartWithTheClockSetBackAsync(TimeSpan by)
    {
        var stopped = Server;
        await stopped.DisposeAsync();
        _server = null;
        _time.SetBack(by);
        _server = await KmsTestServer.StartAsync(stopped.Token, stopped.DataDir, "dev", UseClock, $"--Kms:ClientCaPath={CaPath}", $"--Kms:ClientCrlPath={CrlPath}");
    }

    // Time passes on both clocks; then a lifecycle pass records it as seen.
    private async Task PassAsync(TimeSpan by)
    {
        _time.Advance(by);
        await Server.Services.GetRequiredService<Hosting.LifecycleWorker>().RunOnceAsync(default);
    }

    private async Task<string> IssueTokenAsync(string principal, TimeSpan lifetime)
    {
        using var admin = Server.DeploymentAdmin();
        var name = $"token:{principal}";
        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = "tenants/dev" });
        await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = name, Role = "key-user", Tenant = "tenants/dev" });
        return (await admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = name, Kind = "SESSION", Lifetime = Duration.FromTimeSpan(lifetime) })).Secret;
    }

    private async Task<StatusCode> GenerateRandomAsync(string token)
    {
        using var client = Server.CreateClient(token);
        return await StatusOfAsync(client);
    }

    private async Task<StatusCode> GenerateRandomAsync(X509Certificate2 certificate)
    {
        // A fresh connection per call: the certificate is presented at the handshake.
        using var client = new KmsClient(new KmsClientOptions { Endpoint = Server.Address, CaCertificatePath = Server.CaCertificatePath, ClientCertificate = certificate });
        return await StatusOfAsync(client);
    }

    private static async Task<StatusCode> StatusOfAsync(KmsClient client)
    {
        try
        {
            await client.GenerateRandomAsync(8);
            return StatusCode.OK;
        }
        catch (RpcException e)
        {
            return e.StatusCode;
        }
    }

    private void UseClock(IServiceCollection services) => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(_time));

    /// <summary>A fake clock whose wall time can be set back while its monotonic clock and timers go on.</summary>
    private sealed class SetBackClock(DateTimeOffset start) : TimeProvider
    {
        private readonly FakeTimeProvider _inner = new(start);
        private TimeSpan _setBack;

        public override DateTimeOffset GetUtcNow() => _inner.GetUtcNow() - _setBack;

        public override long GetTimestamp() => _inner.GetTimestamp();

        public override long TimestampFrequency => _inner.TimestampFrequency;

        public override TimeZoneInfo LocalTimeZone => _inner.LocalTimeZone;

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) => _inner.CreateTimer(callback, state, dueTime, period);

        public void Advance(TimeSpan by) => _inner.Advance(by);

        public void SetBack(TimeSpan by) => _setBack += by;
    }
}
