using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The lifecycle worker of a node that loses the leader lease, on a real server (SQLite) whose
/// lease and clock the test switches: what it reports of the deployment's failing destructions.
/// </summary>
public sealed class LifecycleLeaseLossTests : IAsyncLifetime
{
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private readonly SwitchedLease _lease = new();
    private KmsTestServer _server = null!;

    public async Task InitializeAsync() =>
        // The worker's own timer does not tick over the test's one move of the clock (a day apart,
        // the longest allowed; the move a minute; its pass at start ran before): the passes are the test's.
        _server = await KmsTestServer.StartAsync(null, null, "dev", services =>
        {
            services.Replace(ServiceDescriptor.Singleton<TimeProvider>(_time));
            services.Replace(ServiceDescriptor.Singleton<ILeaderLease>(_lease));
        }, "--Lifecycle:JobInterval=1.00:00:00", "--Lifecycle:MinWaitingPeriod=00:00:01");

    public async Task DisposeAsync() => await _server.DisposeAsync();

    // kms_lifecycle_destructions_failing is KeyService.FailingDestructions summed over the key
    // services of the process (KmsMetrics.LifecycleDestructionsFailing): this node's value is
    // read directly, since other servers of the test process report into the same gauge.
    // Before 99a5b1b a node that lost the lease went on reporting the failures its last pass as
    // leader saw, so two nodes counted the same ones (the leader's record in the database).
    [Fact]
    public async Task LeaseLost_NodeReportsNoFailingDestruction_TheFailureStaysRecorded_LeaseRegained_ReportedAgain()
    {
        var keys = _server.Services.GetRequiredService<KeyService>();
        var worker = _server.Services.GetRequiredService<Hosting.LifecycleWorker>();
        var store = _server.Services.GetRequiredService<IKeyStore>();
        using (var client = _server.CreateClient())
        {
            var key = await client.CreateKeyAsync("tenants/dev", "stuck");
            await client.ScheduleKeyDeletionAsync(key.Name, TimeSpan.FromMinutes(1));
        }

        await worker.RunOnceAsync(default); // records the time seen

        // The destruction's write fails (its material never goes), every time it is tried.
        RawSqlite.Execute(_server.DatabasePath, """
            CREATE TRIGGER refuse_destruction BEFORE UPDATE OF material ON key_versions
            WHEN NEW.material IS NULL AND OLD.material IS NOT NULL
            BEGIN SELECT RAISE(ABORT, 'injected by the test'); END
            """);
        _time.Advance(TimeSpan.FromMinutes(1) + TimeSpan.FromSeconds(1));

        // The leader: its pass fails the due destruction and reports it.
        await worker.RunOnceAsync(default);
        Assert.Equal(1, keys.FailingDestructions);
        Assert.Single(await store.ListDestructionFailuresAsync(default));

        // Another node took the lease: this one's next pass reports none, the record stays for the leader.
        _lease.Held = false;
        await worker.RunOnceAsync(default);
        Assert.Equal(0, keys.FailingDestructions);
        Assert.Single(await store.ListDestructionFailuresAsync(default));

        // The lease back: the pass reports the recorded failure again (waiting out its back-off).
        _lease.Held = true;
        await worker.RunOnceAsync(default);
        Assert.Equal(1, keys.FailingDestructions);
    }

    // The lease as the test sets it: held, or another node's.
    private sealed class SwitchedLease : ILeaderLease
    {
        private volatile bool _held = true;

        public bool Held
        {
            get => _held;
            set => _held = value;
        }

        public Task<bool> HoldAsync(bool standAside, CancellationToken cancellationToken) => Task.FromResult(_held);
    }
}
