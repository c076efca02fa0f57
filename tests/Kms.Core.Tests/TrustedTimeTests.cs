using Kms.Core.Access;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>
/// The time credentials are judged by: the node's clock, never behind the floor of evidence read
/// from the store (the lifecycle's record; PostgreSQL's clock), which advances with the monotonic
/// clock; the record's part never moves back, the database's clock counts as last read. The wall clock and the monotonic clock are moved separately, as a
/// clock set back moves one and not the other.
/// </summary>
public sealed class TrustedTimeTests
{
    private static readonly DateTimeOffset Start = new(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);
    private readonly InMemoryStore _store = new();
    private readonly SplitClock _time = new(Start);

    [Fact]
    public async Task NothingRecorded_TheClock()
    {
        var trusted = new TrustedTime(_store, _time, new LifecycleOptions());
        await trusted.RefreshAsync(default);
        Assert.Equal(Start, trusted.GetUtcNow());
    }

    [Fact]
    public async Task ClockSetBackBehindTheRecord_TheRecord_AdvancingWithTheTimeSeenPassing()
    {
        await RecordAsync(Start.AddHours(2));
        var trusted = new TrustedTime(_store, _time, new LifecycleOptions());
        await trusted.RefreshAsync(default);
        Assert.Equal(Start.AddHours(2), trusted.GetUtcNow());

        _time.Pass(TimeSpan.FromMinutes(10));
        Assert.Equal(Start.AddHours(2).AddMinutes(10), trusted.GetUtcNow());

        // Set back further while running: the floor holds.
        _time.Step(-TimeSpan.FromDays(1));
        Assert.Equal(Start.AddHours(2).AddMinutes(10), trusted.GetUtcNow());

        // The clock put right, and past the floor: the clock again.
        _time.Step(TimeSpan.FromDays(2));
        Assert.Equal(Start.AddDays(1).AddMinutes(10), trusted.GetUtcNow());
    }

    [Fact]
    public async Task EarlierEvidence_ALowerRecord_NeverMovesTheFloorBack()
    {
        var trusted = new TrustedTime(_store, _time, new LifecycleOptions());
        trusted.Observe(Start.AddHours(3));
        await RecordAsync(Start.AddHours(1));
        await trusted.RefreshAsync(default);
        trusted.Observe(Start.AddHours(2));
        Assert.Equal(Start.AddHours(3), trusted.GetUtcNow());
    }

    [Fact]
    public async Task DatabaseClockBehindTheNode_HoldsItWhileItIsBehind()
    {
        _store.DatabaseTime = Start.AddHours(1);
        var trusted = new TrustedTime(_store, _time, new LifecycleOptions());
        await trusted.RefreshAsync(default);
        Assert.Equal(Start.AddHours(1), trusted.GetUtcNow());

        _time.Pass(TimeSpan.FromMinutes(5));
        Assert.Equal(Start.AddHours(1).AddMinutes(5), trusted.GetUtcNow());
    }

    [Fact]
    public async Task DatabaseClockSteppedAheadThenPutRight_TheNextReadReleasesTheNode()
    {
        // PostgreSQL's host stepped a year ahead (a wrong NTP source) for one read, then put
        // right: every token and certificate ending within the year must not stay refused on
        // every node until each restarts. A clock is as good as its latest reading; the record,
        // which believes no such jump, is what never moves back.
        _store.DatabaseTime = Start.AddDays(365);
        var trusted = new TrustedTime(_store, _time, new LifecycleOptions());
        await trusted.RefreshAsync(default);
        Assert.Equal(Start.AddDays(365), trusted.GetUtcNow());

        _time.Pass(TimeSpan.FromSeconds(30));
        _store.DatabaseTime = Start.AddSeconds(30);
        await trusted.RefreshAsync(default);
        Assert.Equal(Start.AddSeconds(30), trusted.GetUtcNow());
    }

    [Fact]
    public async Task DatabaseClockPutRight_TheRecordStillHolds()
    {
        await RecordAsync(Start.AddHours(2));
        _store.DatabaseTime = Start.AddHours(3);
        var trusted = new TrustedTime(_store, _time, new LifecycleOptions());
        await trusted.RefreshAsync(default);
        Assert.Equal(Start.AddHours(3), trusted.GetUtcNow());

        _store.DatabaseTime = Start;
        await trusted.RefreshAsync(default);
        Assert.Equal(Start.AddHours(2), trusted.GetUtcNow());
    }

    [Fact]
    public async Task AcceptClock_TheRecordIsNotRead()
    {
        // The operator's word that the clock is right and the record wrong (a year ahead): the
        // record must not lock every credential out until it is replaced.
        await RecordAsync(Start.AddDays(365));
        var trusted = new TrustedTime(_store, _time, new LifecycleOptions { AcceptClock = true });
        await trusted.RefreshAsync(default);
        Assert.Equal(Start, trusted.GetUtcNow());
    }

    [Fact]
    public async Task Authenticator_TokenExpiredByTheRecord_OnANodeWhoseClockIsBefore_Refused()
    {
        using var domain = new DomainHarness();
        var token = await domain.Access.ProvisionAsync(PrincipalName.Token("ops"), TenantId.Parse("dev"), [Role.KeyUser], ApiTokenKind.Session, TimeSpan.FromHours(1), default);
        var authenticator = new Authenticator(domain.AccessStore, domain.Trusted);
        Assert.NotNull(await authenticator.AuthenticateTokenAsync(token, default));

        // The lifecycle recorded two hours seen pass; the node's clock still says now.
        await domain.Store.SetSettingAsync(LifecycleClock.Setting, Millis(domain.Time.GetUtcNow().AddHours(2)), default);
        await domain.Trusted.RefreshAsync(default);
        Assert.Null(await authenticator.AuthenticateTokenAsync(token, default));
    }

    private Task RecordAsync(DateTimeOffset seen) => _store.SetSettingAsync(LifecycleClock.Setting, Millis(seen), default);

    private static string Millis(DateTimeOffset time) => time.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
}
