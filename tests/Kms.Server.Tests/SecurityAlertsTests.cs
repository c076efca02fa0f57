using Grpc.Core;
using Kms.Core.Audit;
using Kms.Server.Audit;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>The alert detector with a fake clock: a burst fires once per window; normal traffic and slow trickles do not.</summary>
public sealed class SecurityAlertsTests
{
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private readonly List<SecurityAlert> _raised = [];
    private readonly SecurityAlerts _alerts;

    public SecurityAlertsTests()
    {
        _alerts = new SecurityAlerts(new SecurityAlertOptions { Window = TimeSpan.FromMinutes(1), Refusals = 20, DecryptFailures = 10, Volume = 1000 }, _time, NullLogger<SecurityAlerts>.Instance);
        _alerts.Raised += _raised.Add;
    }

    [Fact]
    public void RefusalsFromThousandsOfAddresses_TwentyAlertsThenOneForTheRest_PerWindow()
    {
        // 2,000 addresses (an IPv6 /48 holds 65,536 /64s), each over the threshold.
        for (var i = 0; i < 2000; i++)
        {
            for (var j = 0; j < 20; j++)
            {
                _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED", client: $"ipv6:[2001:db8:{i:x}::1]:1000"), refused: true);
            }
        }

        Assert.Equal(SecurityAlerts.MaxAnonymousAlertsPerWindow + 1, _raised.Count);
        Assert.Equal(SecurityAlerts.MoreAnonymousAddresses, _raised[^1].Subject);

        // A principal's burst is still its own alert, and the next window starts a new count.
        for (var i = 0; i < 20; i++)
        {
            _alerts.Observe(Entry("token:insider", "PERMISSION_DENIED"), refused: true);
        }

        Assert.Equal("token:insider", _raised[^1].Subject);
        _time.Advance(TimeSpan.FromMinutes(2));
        for (var j = 0; j < 20; j++)
        {
            _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED", client: "ipv6:[2001:db8:ffff::1]:1000"), refused: true);
        }

        Assert.Equal("anonymous@2001:db8:ffff::/64", _raised[^1].Subject);
    }

    [Fact]
    public void RefusalBurst_AlertsAtTheThreshold_OncePerWindow()
    {
        for (var i = 0; i < 19; i++)
        {
            _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED"), refused: true);
        }

        Assert.Empty(_raised);
        _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED"), refused: true);
        var alert = Assert.Single(_raised);
        Assert.Equal(("refusals", "anonymous@10.0.0.7", 20L), (alert.Kind, alert.Subject, alert.Count));

        for (var i = 0; i < 50; i++)
        {
            _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED"), refused: true);
        }

        Assert.Single(_raised);
        _time.Advance(TimeSpan.FromMinutes(1));
        _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED"), refused: true);
        Assert.Single(_raised);
        for (var i = 0; i < 20; i++)
        {
            _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED"), refused: true);
        }

        Assert.Equal(2, _raised.Count);
    }

    [Fact]
    public void SlowTrickle_OfRefusals_NeverFillsTheWindow()
    {
        for (var i = 0; i < 200; i++)
        {
            _alerts.Observe(Entry("token:ci-bot", "PERMISSION_DENIED"), refused: true);
            _time.Advance(TimeSpan.FromSeconds(4));
        }

        Assert.Empty(_raised);
    }

    [Fact]
    public void NormalTraffic_NoAlert_ButFailedDecryptionsAndVolumeDo()
    {
        for (var i = 0; i < 900; i++)
        {
            _alerts.Observe(Entry("token:app", "OK", "/kms.v1.KeyManagementService/Decrypt"), refused: false);
        }

        Assert.Empty(_raised);
        for (var i = 0; i < 10; i++)
        {
            _alerts.Observe(Entry("token:app", "INVALID_ARGUMENT", "/kms.v1.KeyManagementService/Decrypt"), refused: false);
        }

        Assert.Equal(["decrypt-failures"], _raised.Select(a => a.Kind));
        for (var i = 0; i < 100; i++)
        {
            _alerts.Observe(Entry("token:app", "OK", "/kms.v1.KeyManagementService/Encrypt"), refused: false);
        }

        Assert.Equal(["decrypt-failures", "volume"], _raised.Select(a => a.Kind));
        Assert.All(_raised, a => Assert.Equal("token:app", a.Subject));
    }

    [Fact]
    public void BatchCalls_VolumeCountsTheirItems_SingleItemBatchesCountOneEach()
    {
        // Threshold 1,000: ten batches of one item are ten calls; ten of a hundred are a thousand.
        for (var i = 0; i < 10; i++)
        {
            _alerts.Observe(Entry("token:single", "OK", "/kms.v1.KeyManagementService/BatchGenerateDataKey"), refused: false, batchItems: 1);
        }

        for (var i = 0; i < 9; i++)
        {
            _alerts.Observe(Entry("token:bulk", "OK", "/kms.v1.KeyManagementService/BatchGenerateDataKey"), refused: false, batchItems: 100);
        }

        Assert.Empty(_raised);
        _alerts.Observe(Entry("token:bulk", "OK", "/kms.v1.KeyManagementService/BatchEncrypt"), refused: false, batchItems: 100);
        var alert = Assert.Single(_raised);
        Assert.Equal(("volume", "token:bulk", 1000L), (alert.Kind, alert.Subject, alert.Count));
    }

    [Fact]
    public void ManyDistinctSubjects_BoundedTable_ExtraSubjectsShareOneOverflowCounter()
    {
        for (var i = 0; i < 50_000; i++)
        {
            _alerts.Observe(Entry($"token:s{i}", "OK"), refused: false);
        }

        // The table is full and nobody has been quiet for a window: newcomers count as "overflow".
        for (var i = 0; i < 1000; i++)
        {
            _alerts.Observe(Entry($"token:late{i}", "OK"), refused: false);
        }

        Assert.Equal(["volume overflow"], _raised.Select(a => $"{a.Kind} {a.Subject}"));

        // A window later the quiet subjects are forgotten and newcomers get their own counters.
        _time.Advance(TimeSpan.FromMinutes(2));
        for (var i = 0; i < 1000; i++)
        {
            _alerts.Observe(Entry("token:newcomer", "OK"), refused: false);
        }

        Assert.Equal(["volume overflow", "volume token:newcomer"], _raised.Select(a => $"{a.Kind} {a.Subject}"));
    }

    [Fact]
    public void HandlerErrors_AreNotRefusals()
    {
        for (var i = 0; i < 100; i++)
        {
            _alerts.Observe(Entry("token:app", "NOT_FOUND", "/kms.v1.KeyManagementService/GetKey"), refused: false);
        }

        Assert.Empty(_raised);
    }

    [Fact]
    public void PermissionDeniedByAHandler_KeyPolicyOrForgedApproval_CountsAsARefusal()
    {
        for (var i = 0; i < 20; i++)
        {
            _alerts.Observe(Entry("token:insider", "PERMISSION_DENIED", "/kms.v1.KeyManagementService/Encrypt"), refused: false);
        }

        Assert.Equal(["refusals token:insider"], _raised.Select(a => $"{a.Kind} {a.Subject}"));
    }

    [Fact]
    public void FailedAsymmetricDecryptions_AndFailedBatchItems_CountAsFailedDecryptions()
    {
        for (var i = 0; i < 10; i++)
        {
            _alerts.Observe(Entry("token:oracle", "INVALID_ARGUMENT", "/kms.v1.KeyManagementService/AsymmetricDecrypt"), refused: false);
        }

        // One batch answered OK whose items failed: each item counts.
        _alerts.Observe(Entry("token:batcher", "OK", "/kms.v1.KeyManagementService/BatchDecrypt"), refused: false, itemDecryptFailures: 9);
        Assert.Equal(["decrypt-failures token:oracle"], _raised.Select(a => $"{a.Kind} {a.Subject}"));
        _alerts.Observe(Entry("token:batcher", "OK", "/kms.v1.KeyManagementService/BatchReEncrypt"), refused: false, itemDecryptFailures: 1);
        Assert.Equal(["decrypt-failures token:oracle", "decrypt-failures token:batcher"], _raised.Select(a => $"{a.Kind} {a.Subject}"));
    }

    [Fact]
    public void AnonymousCallersFromEverFreshAddresses_CannotHideAPrincipalsBurst()
    {
        // 50,000 addresses (a /48 gives an attacker far more), each refused, kept fresh.
        for (var i = 0; i < 50_000; i++)
        {
            _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED", client: $"ipv4:10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:1000"), refused: true);
        }

        for (var i = 0; i < 20; i++)
        {
            _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED", client: $"ipv4:11.0.0.{i}:1000"), refused: true);
            _alerts.Observe(Entry("token:stolen", "PERMISSION_DENIED"), refused: true);
        }

        Assert.Contains("refusals token:stolen", _raised.Select(a => $"{a.Kind} {a.Subject}"));
        Assert.Contains("refusals anonymous@overflow", _raised.Select(a => $"{a.Kind} {a.Subject}"));
    }

    [Fact]
    public void AnonymousIpv6Callers_CountedPerSlash64()
    {
        for (var i = 0; i < 20; i++)
        {
            _alerts.Observe(Entry("anonymous", "UNAUTHENTICATED", client: $"ipv6:[2001:db8:1:2::{i + 1:x}]:443"), refused: true);
        }

        Assert.Equal(["refusals anonymous@2001:db8:1:2::/64"], _raised.Select(a => $"{a.Kind} {a.Subject}"));
    }

    [Fact]
    public void WallClockSteppedBack_AlertsStillFireInTheNextWindow()
    {
        var clock = new SteppedClock();
        var raised = new List<SecurityAlert>();
        var alerts = new SecurityAlerts(new SecurityAlertOptions { Window = TimeSpan.FromMinutes(1), Refusals = 20 }, clock, NullLogger<SecurityAlerts>.Instance);
        alerts.Raised += raised.Add;
        for (var i = 0; i < 20; i++)
        {
            alerts.Observe(Entry("token:probe", "PERMISSION_DENIED"), refused: true);
        }

        // NTP steps the wall clock back an hour while a minute passes on the monotonic clock.
        clock.Elapsed += TimeSpan.FromMinutes(1);
        clock.Wall -= TimeSpan.FromHours(1);
        for (var i = 0; i < 20; i++)
        {
            alerts.Observe(Entry("token:probe", "PERMISSION_DENIED"), refused: true);
        }

        Assert.Equal(2, raised.Count);
    }

    private sealed class SteppedClock : TimeProvider
    {
        public DateTimeOffset Wall { get; set; } = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);

        public TimeSpan Elapsed { get; set; }

        public override DateTimeOffset GetUtcNow() => Wall;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => Elapsed.Ticks;
    }

    [Theory]
    [InlineData(false, false, StatusCode.Cancelled, true)] // cancelled while its unknown token was looked up
    [InlineData(false, false, StatusCode.DeadlineExceeded, true)]
    [InlineData(true, false, StatusCode.Unauthenticated, true)]
    [InlineData(false, false, StatusCode.OK, false)] // a public call that succeeded
    [InlineData(false, true, StatusCode.Cancelled, false)] // an authenticated caller's own event
    [InlineData(true, true, StatusCode.PermissionDenied, true)]
    public void CallsEndedBeforeAnyoneWasAuthenticated_AreAggregatedLikeRefusals(bool refusedByAuthorization, bool authenticated, StatusCode status, bool aggregated)
    {
        var caller = authenticated ? new Kms.Core.Services.Caller("token:app", null, new HashSet<Kms.Core.Access.Role>()) : null;
        Assert.Equal(aggregated, AuditInterceptor.AggregatedAsRefusal(refusedByAuthorization, caller, status));
    }

    private AuditEntry Entry(string principal, string outcome, string operation = "/kms.v1.KeyManagementService/GenerateRandom", string client = "ipv4:10.0.0.7:51234") => new()
    {
        Time = _time.GetUtcNow(),
        RequestId = "r",
        Principal = principal,
        Operation = operation,
        Outcome = outcome,
        Client = client,
    };
}
