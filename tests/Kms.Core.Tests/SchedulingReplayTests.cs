using Kms.Core.Backup;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Tests;

/// <summary>What a restore schedules or disables again: the lifecycle transitions still in force at the end of the audit logs, onto a snapshot's key.</summary>
public sealed class SchedulingReplayTests
{
    private const string Keys = "/kms.v1.KeyManagementService/";
    private static readonly DateTimeOffset Backup = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private static readonly KeyName Name = KeyName.Parse("tenants/dev/keys/k", "name");

    [Fact]
    public void InForce_TakenInLogOrder_ARestoreOrCancelUndoesTheSchedulingButLeavesItDisabled_AnEnableUndoesADisable()
    {
        string[] lines =
        [
            Event(21, Keys + "ScheduleKeyVersionDestruction", "tenants/dev/keys/k/versions/1", "OK"),
            Event(22, Keys + "RestoreKeyVersion", "tenants/dev/keys/k/versions/1", "OK"),
            Event(23, Keys + "ScheduleKeyVersionDestruction", "tenants/dev/keys/k/versions/1", "OK"),
            Event(24, Keys + "ScheduleKeyVersionDestruction", "tenants/dev/keys/k/versions/3", "OK"),
            Event(25, Keys + "RestoreKeyVersion", "tenants/dev/keys/k/versions/3", "OK"),
            Event(26, Keys + "ScheduleKeyDeletion", "tenants/dev/keys/cancelled", "OK"),
            Event(27, Keys + "CancelKeyDeletion", "tenants/dev/keys/cancelled", "OK"),
            Event(28, Keys + "DisableKey", "tenants/dev/keys/resumed", "OK"),
            Event(29, Keys + "EnableKey", "tenants/dev/keys/resumed", "OK"),
            Event(30, Keys + "ScheduleKeyDeletion", "tenants/dev/keys/refused", "FAILED_PRECONDITION"),
            Event(31, SchedulingReplay.ReapplyOperation, "tenants/dev/keys/deleted", "OK"),
            Event(32, SchedulingReplay.ReapplyOperation, "tenants/dev/keys/k/versions/4", "OK"),
            Event(33, SchedulingReplay.ReapplyDisableOperation, "tenants/dev/keys/suspended", "OK"),
            Event(34, Keys + "Decrypt", "tenants/dev/keys/k/versions/2", "OK"),
        ];

        // As a verified export's events are (an unverified restoration or enabling lifts nothing).
        var inForce = SchedulingReplay.InForce(DestructionReplay.EventsOf(lines, "export").Select(e => e.Transition).OfType<RecordedTransition>().Select(t => t with { Verified = true }));

        Assert.Equal(
            [
                ("tenants/dev/keys/cancelled", true),
                ("tenants/dev/keys/deleted", false),
                ("tenants/dev/keys/k/versions/1", false),
                ("tenants/dev/keys/k/versions/3", true),
                ("tenants/dev/keys/k/versions/4", false),
                ("tenants/dev/keys/suspended", true),
            ],
            inForce.Select(s => (s.Version is { } v ? $"{s.Key}/versions/{v}" : s.Key.ToString(), s.Disable)).OrderBy(s => s.Item1, StringComparer.Ordinal));
        Assert.Equal("export event 23 (" + Keys + "ScheduleKeyVersionDestruction)", inForce.Single(s => s.Version == 1).Source);
    }

    [Fact]
    public void Apply_FromAnEvent_ScheduledAtItsTimePlusTheWaitingPeriodAndADay_NeverSoonerThanAWeekAfterTheRestore_NeverDestroyed()
    {
        var restore = Backup.AddDays(3);
        var recent = new RecordedScheduling(Name, 1, Disable: false, Backup.AddDays(2), null, "export event 23");
        var (change, reapplied) = SchedulingReplay.Apply(Snapshot(), [recent], restore, TimeSpan.FromDays(30));
        var version = Assert.Single(change.UpdatedVersions);
        Assert.Equal((KeyState.DestroyScheduled, Backup.AddDays(2 + 30 + 1)), (version.State, version.DestroyTime));
        Assert.Equal(new ReappliedScheduling("tenants/dev/keys/k/versions/1", KeyState.DestroyScheduled, Backup.AddDays(33), "export event 23"), Assert.Single(reapplied));

        // Its waiting period long over (restored two months on): a week from the restore, reversible.
        var late = SchedulingReplay.Apply(Snapshot(), [recent], Backup.AddDays(60), TimeSpan.FromDays(30)).Change;
        Assert.Equal(Backup.AddDays(67), Assert.Single(late.UpdatedVersions).DestroyTime);

        // The replaced database's destroy time is the intended one: kept (but floored the same way).
        var known = recent with { DestroyTime = Backup.AddDays(20) };
        Assert.Equal(Backup.AddDays(20), Assert.Single(SchedulingReplay.Apply(Snapshot(), [known], restore, TimeSpan.FromDays(30)).Change.UpdatedVersions).DestroyTime);
        Assert.Equal(Backup.AddDays(10), Assert.Single(SchedulingReplay.Apply(Snapshot(), [known with { DestroyTime = Backup.AddDays(4) }], restore, TimeSpan.FromDays(30)).Change.UpdatedVersions).DestroyTime);
    }

    [Fact]
    public void Apply_DestroyedOrAlreadyScheduledOrUnknown_Untouched_UnlessScheduledAgainLater_ADeletionWinsOverADisable()
    {
        var scheduling = new RecordedScheduling(Name, 1, Disable: false, Backup, null, "s");
        Assert.True(SchedulingReplay.Apply(Snapshot(version1: KeyState.Destroyed), [scheduling], Backup, TimeSpan.FromDays(30)).Change.IsNoOp);
        var scheduledBefore = Snapshot(version1: KeyState.DestroyScheduled, version1DestroyTime: Backup.AddDays(40));
        Assert.True(SchedulingReplay.Apply(scheduledBefore, [scheduling], Backup, TimeSpan.FromDays(30)).Change.IsNoOp);

        // Scheduled before the backup, restored and scheduled again after it: the later time.
        // (restored the day after: an event's time is never taken as later than the restore's).
        var again = SchedulingReplay.Apply(scheduledBefore, [scheduling with { Time = Backup.AddDays(20) }], Backup.AddDays(21), TimeSpan.FromDays(30)).Change;
        Assert.Equal(Backup.AddDays(51), Assert.Single(again.UpdatedVersions).DestroyTime);
        Assert.True(SchedulingReplay.Apply(Snapshot(), [scheduling with { Version = 9 }], Backup, TimeSpan.FromDays(30)).Change.IsNoOp);
        var snapshot = Snapshot();
        var destroyedKey = snapshot with { Key = snapshot.Key with { State = KeyState.Destroyed } };
        Assert.True(SchedulingReplay.Apply(destroyedKey, [scheduling with { Version = null }], Backup, TimeSpan.FromDays(30)).Change.IsNoOp);

        var (change, reapplied) = SchedulingReplay.Apply(Snapshot(), [scheduling with { Version = null, Disable = true }, scheduling with { Version = null }], Backup, TimeSpan.FromDays(30));
        Assert.Equal((KeyState.DestroyScheduled, Backup.AddDays(31)), (change.Key.State, change.Key.DestroyTime));
        Assert.Equal(KeyState.DestroyScheduled, Assert.Single(reapplied).State);
    }

    [Fact]
    public void Apply_ThePrimaryOfTheSnapshot_ScheduledAllTheSame_TheKeyRefusesToEncryptUntilRotated()
    {
        // Version 2 is the snapshot's primary; the lost site had rotated past it before scheduling it.
        var (change, _) = SchedulingReplay.Apply(Snapshot(), [new RecordedScheduling(Name, 2, Disable: false, Backup, null, "s")], Backup, TimeSpan.FromDays(30));
        Assert.Equal((KeyState.Enabled, KeyState.DestroyScheduled), (change.Key.State, change.Key.Primary.State));
        var disabled = SchedulingReplay.Apply(Snapshot(), [new RecordedScheduling(Name, 2, Disable: true, Backup, null, "s")], Backup, TimeSpan.FromDays(30)).Change;
        Assert.Equal(KeyState.Disabled, disabled.Key.Primary.State);
    }

    [Fact]
    public void Apply_AnEventFromTheFuture_CountsFromTheRestore_NotFromItsTime()
    {
        // An unverified log can say anything, a time near the end of the calendar too: counted
        // from then it would put the destruction off for ever, or overflow and fail the restore.
        var restore = Backup.AddDays(3);
        foreach (var time in new[] { DateTimeOffset.MaxValue.AddDays(-2), Backup.AddYears(50) })
        {
            var (change, _) = SchedulingReplay.Apply(Snapshot(), [new RecordedScheduling(Name, 1, Disable: false, time, null, "stream event 40")], restore, TimeSpan.FromDays(30));
            Assert.Equal((KeyState.DestroyScheduled, restore.AddDays(31)), (Assert.Single(change.UpdatedVersions).State, Assert.Single(change.UpdatedVersions).DestroyTime));
        }
    }

    [Fact]
    public void InForce_AnUnverifiedRestoreOrEnable_LiftsNothing_AnUnverifiedSchedulingDoesNotPutTheSnapshotsDestructionOff_KeptSaysWhy()
    {
        var transitions = new[]
        {
            new RecordedTransition(Name, 1, TransitionKind.ScheduleDestruction, Backup.AddDays(1), "export event 21"),
            new RecordedTransition(Name, 1, TransitionKind.CancelDestruction, Backup.AddDays(2), "stream event 22", Verified: false),
            new RecordedTransition(Name, null, TransitionKind.Disable, Backup.AddDays(1), "export event 23"),
            new RecordedTransition(Name, null, TransitionKind.Enable, Backup.AddDays(2), "stream event 24", Verified: false),
            new RecordedTransition(Name, 2, TransitionKind.Enable, Backup.AddDays(2), "export event 25"),
        };
        var inForce = SchedulingReplay.InForce(transitions);
        Assert.Equal([(1, false), (null, true)], inForce.Select(s => (s.Version, s.Disable)));

        var snapshot = Snapshot();
        var heldVersion2 = snapshot with { Versions = [snapshot.Versions[0], snapshot.Versions[1] with { State = KeyState.Disabled }] };
        var (change, _) = SchedulingReplay.Apply(heldVersion2, inForce, Backup.AddDays(3), TimeSpan.FromDays(30));
        var after = heldVersion2 with { Key = change.Key, Versions = [.. heldVersion2.Versions.Select(v => change.UpdatedVersions.FirstOrDefault(u => u.Name.Version == v.Name.Version) ?? v)] };
        var kept = SchedulingReplay.Kept(after, SchedulingReplay.LastLiftings(transitions));
        Assert.Equal(
            [("tenants/dev/keys/k", KeyState.Disabled, false), ("tenants/dev/keys/k/versions/1", KeyState.DestroyScheduled, false), ("tenants/dev/keys/k/versions/2", KeyState.Disabled, true)],
            kept.Select(k => (k.Resource, k.State, k.Reason.Contains("never their lifting", StringComparison.Ordinal))).OrderBy(k => k.Resource, StringComparer.Ordinal));

        // Scheduled at 40 days before the backup: an unverified scheduling again does not move it; a verified one does.
        var scheduledBefore = Snapshot(version1: KeyState.DestroyScheduled, version1DestroyTime: Backup.AddDays(8));
        var unverified = new RecordedScheduling(Name, 1, Disable: false, Backup.AddDays(2), null, "stream event 30", Verified: false);
        Assert.True(SchedulingReplay.Apply(scheduledBefore, [unverified], Backup.AddDays(3), TimeSpan.FromDays(30)).Change.IsNoOp);
        Assert.Equal(Backup.AddDays(33), Assert.Single(SchedulingReplay.Apply(scheduledBefore, [unverified with { Verified = true }], Backup.AddDays(3), TimeSpan.FromDays(30)).Change.UpdatedVersions).DestroyTime);
    }

    private static string Event(long seq, string operation, string resource, string outcome) =>
        $$$"""{"event":{"v":1,"seq":{{{seq}}},"prev":"00","time":"2026-11-29T13:00:00.000Z","request_id":"r","principal":"token:dev","tenant":"dev","operation":"{{{operation}}}","resource":"{{{resource}}}","outcome":"{{{outcome}}}","client":null,"count":1,"last_time":null,"context":{}},"hash":"00"}""";

    private static KeyWithVersions Snapshot(KeyState version1 = KeyState.Enabled, DateTimeOffset? version1DestroyTime = null)
    {
        var v1 = new KeyVersion(Name.Version(1), KeyVersionId.NewId(), version1, KeyAlgorithm.Aes256Gcm, Backup) { DestroyTime = version1DestroyTime };
        var v2 = new KeyVersion(Name.Version(2), KeyVersionId.NewId(), KeyState.Enabled, KeyAlgorithm.Aes256Gcm, Backup);
        return new KeyWithVersions(new Key(Name, KeyPurpose.EncryptDecrypt, KeyState.Enabled, v2, Backup, KeyLabels.Empty), [v1, v2]);
    }
}
