using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>GetKeyAttestation over the fake HSM: what a statement may be made about.</summary>
public sealed class AttestationServiceTests : IAsyncLifetime, IDisposable
{
    private readonly DomainHarness _domain = new();
    private AttestationService _attestation = null!;

    public async Task InitializeAsync()
    {
        var audit = new AuditLog((Kms.Core.Ports.IAuditStore)_domain.Store, _domain.Store, _domain.Hsm, _domain.Time, new AuditOptions());
        await audit.InitializeAsync(default);
        _attestation = new AttestationService(_domain.Hsm, _domain.Store, audit, _domain.Time);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    public void Dispose() => _domain.Dispose();

    [Fact]
    public async Task KeyWhoseDeletionTookEffect_BeforeTheJobErasedIt_NoStatement()
    {
        var key = await _domain.CreateKeyAsync("leaving");
        Assert.Equal("ENABLED", (await _attestation.GetKeyAttestationAsync(DomainHarness.Dev, key.Name.ToString(), default)).Attestation.State);

        await _domain.Keys.ScheduleKeyDeletionAsync(DomainHarness.Dev, key.Name, TimeSpan.FromDays(7), null, default);
        Assert.Equal("ENABLED", (await _attestation.GetKeyAttestationAsync(DomainHarness.Dev, key.Name.ToString(), default)).Attestation.State);

        // The waiting period is over; the destruction job has not run. Every other call treats
        // the key as gone: no statement may say its version is ENABLED.
        _domain.Time.Advance(TimeSpan.FromDays(7));
        var refused = await Assert.ThrowsAsync<KmsException>(() => _attestation.GetKeyAttestationAsync(DomainHarness.Dev, key.Name.Version(1).ToString(), default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("has taken effect", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task VersionWhoseDestructionTookEffect_NoStatement_ItsSuccessorStillAttested()
    {
        var key = await _domain.CreateKeyAsync("rotated");
        await _domain.Keys.RotateKeyAsync(DomainHarness.Dev, key.Name, null, default);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(DomainHarness.Dev, key.Name.Version(1), TimeSpan.FromDays(7), null, default);
        _domain.Time.Advance(TimeSpan.FromDays(7));

        var refused = await Assert.ThrowsAsync<KmsException>(() => _attestation.GetKeyAttestationAsync(DomainHarness.Dev, key.Name.Version(1).ToString(), default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Equal("ENABLED", (await _attestation.GetKeyAttestationAsync(DomainHarness.Dev, key.Name.Version(2).ToString(), default)).Attestation.State);
    }

    [Fact]
    public async Task OnANodeWhoseClockWasSetBack_DestructionTakenEffectByTheTimeRecordedAsSeen_NoStatement()
    {
        var key = await _domain.CreateKeyAsync("set-back");
        await _domain.Keys.RotateKeyAsync(DomainHarness.Dev, key.Name, null, default);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(DomainHarness.Dev, key.Name.Version(1), TimeSpan.FromDays(7), null, default);

        // The lifecycle recorded eight days seen pass; this node's clock was set back to one day
        // after the schedule. SQLite has no other clock to hold it to.
        var seen = _domain.Time.GetUtcNow().AddDays(8);
        await _domain.Store.SetSettingAsync(LifecycleClock.Setting, seen.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture), default);
        _domain.Time.Advance(TimeSpan.FromDays(1));

        var refused = await Assert.ThrowsAsync<KmsException>(() => _attestation.GetKeyAttestationAsync(DomainHarness.Dev, key.Name.Version(1).ToString(), default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("has taken effect", refused.Message, StringComparison.Ordinal);

        // A statement made now says the time it was made by that reckoning, not the clock's.
        var successor = await _attestation.GetKeyAttestationAsync(DomainHarness.Dev, key.Name.Version(2).ToString(), default);
        Assert.Equal(KeyAttestation.Time(DateTimeOffset.FromUnixTimeMilliseconds(seen.ToUnixTimeMilliseconds())), successor.Attestation.IssueTime);
    }
}
