using Kms.Core.Backup;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Tests;

/// <summary>What a restore re-applies: recorded destructions, from databases and audit lines, onto a snapshot's key.</summary>
public sealed class DestructionReplayTests
{
    private static readonly DateTimeOffset Backup = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private static readonly KeyName Name = KeyName.Parse("tenants/dev/keys/k", "name");

    [Theory]
    [InlineData("{\"event\":{\"seq\":1}}\n{\"event\":{\"seq\":2}}\n", 2, null)]
    [InlineData("{\"event\":{\"seq\":1}}\n{\"event\":{\"se", 1, "{\"event\":{\"se")]
    [InlineData("{\"event\":{\"seq\":1}}\r\n{\"event\":{\"seq\":2}}", 2, null)]
    [InlineData("{\"eve", 0, "{\"eve")]
    [InlineData("", 0, null)]
    public void SplitLines_ATornLastLine_LeftOutAndReturned_AWholeOneWithoutItsLineFeedKept(string text, int lines, string? torn)
    {
        var split = DestructionReplay.SplitLines(text);

        Assert.Equal(lines, split.Lines.Count);
        Assert.Equal(torn, split.TornLastLine);
        Assert.All(split.Lines, l => Assert.StartsWith("{\"event\":{\"seq\":", l, StringComparison.Ordinal));
    }

    [Fact]
    public void SplitLines_ATornLineBeforeTheLast_KeptForEventsOfToRefuse()
    {
        var (lines, torn) = DestructionReplay.SplitLines("{\"event\":{\"se\n{\"event\":{\"seq\":2}}\n");

        Assert.Null(torn);
        Assert.Contains("line 1 is not JSON", Assert.Throws<FormatException>(() => DestructionReplay.EventsOf(lines, "siem.jsonl")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Apply_OneVersion_DestroyedWithTheRecordedTime_OthersUntouched()
    {
        var change = DestructionReplay.Apply(Snapshot(), [new RecordedDestruction(Name, 1, Backup.AddHours(1), "test")]);

        var destroyed = Assert.Single(change.UpdatedVersions);
        Assert.Equal((1, KeyState.Destroyed, Backup.AddHours(1)), (destroyed.Name.Version, destroyed.State, destroyed.DestroyEventTime));
        Assert.Equal(KeyState.Enabled, change.Key.State);
        Assert.False(change.IsNoOp);
    }

    [Fact]
    public void Apply_AlreadyDestroyedInTheSnapshot_NoOp()
    {
        var snapshot = Snapshot(version1: KeyState.Destroyed);
        Assert.True(DestructionReplay.Apply(snapshot, [new RecordedDestruction(Name, 1, Backup.AddHours(1), "test")]).IsNoOp);
    }

    [Fact]
    public void Apply_ThePrimary_KeyDestroyedAsByADeletion()
    {
        var change = DestructionReplay.Apply(Snapshot(), [new RecordedDestruction(Name, 1, Backup, "a"), new RecordedDestruction(Name, 2, Backup, "b")]);

        Assert.Equal(2, change.UpdatedVersions.Count);
        Assert.Equal(KeyState.Destroyed, change.Key.State);
        Assert.Equal(KeyState.Destroyed, change.Key.Primary.State);
    }

    [Fact]
    public void Apply_LifecycleDestruction_DestroysWhatWasScheduledAndDueThen_NotLater()
    {
        var snapshot = Snapshot(version1: KeyState.DestroyScheduled, version1DestroyTime: Backup.AddDays(1));

        Assert.True(DestructionReplay.Apply(snapshot, [new RecordedDestruction(Name, null, Backup.AddHours(1), "early")]).IsNoOp);
        var due = DestructionReplay.Apply(snapshot, [new RecordedDestruction(Name, null, Backup.AddDays(1), "due")]);
        Assert.Equal(1, Assert.Single(due.UpdatedVersions).Name.Version);
    }

    [Fact]
    public void Apply_WholeKey_EveryVersionAndTheKeyDestroyed_ThoughNothingWasScheduledInTheSnapshot()
    {
        var change = DestructionReplay.Apply(Snapshot(), [new RecordedDestruction(Name, null, Backup.AddDays(8), "deleted", WholeKey: true)]);

        Assert.Equal([1, 2], change.UpdatedVersions.Select(v => v.Name.Version));
        Assert.All(change.UpdatedVersions, v => Assert.Equal(KeyState.Destroyed, v.State));
        Assert.Equal(KeyState.Destroyed, change.Key.State);
    }

    [Fact]
    public void FromAuditLines_LifecycleEventsNamingAVersionOrAKeyDeletion_ReadAsSuch()
    {
        string[] lines =
        [
            Event(21, "lifecycle/Destruction", "tenants/dev/keys/k/versions/1", "OK"),
            Event(22, "lifecycle/KeyDestruction", "tenants/dev/keys/gone", "OK"),
            Event(23, "lifecycle/KeyDestruction", "tenants/dev/keys/failed", "UNAVAILABLE"),
        ];

        var found = DestructionReplay.FromAuditLines(lines, afterSequence: 20, "export");

        Assert.Equal(2, found.Count);
        Assert.Equal((Name, (int?)1, false), (found[0].Key, found[0].Version, found[0].WholeKey));
        Assert.Equal((KeyName.Parse("tenants/dev/keys/gone", "name"), (int?)null, true), (found[1].Key, found[1].Version, found[1].WholeKey));
    }

    [Fact]
    public void FromAuditLines_OnlySuccessfulDestructionsAfterTheHead_HeaderAndCheckpointsSkipped()
    {
        string[] lines =
        [
            """{"kms_audit_export":1,"key":"sha256:00","public_key":"","anchor":{"seq":0,"hash":"00"}}""",
            Event(5, "quorum/DESTROY_KEY_VERSION_NOW", "tenants/dev/keys/k/versions/1", "OK"),
            Event(11, "quorum/DESTROY_KEY_VERSION_NOW", "tenants/dev/keys/k/versions/2", "OK"),
            Event(12, "quorum/DESTROY_KEY_VERSION_NOW", "tenants/dev/keys/k/versions/3", "FAILED_PRECONDITION"),
            Event(13, "/kms.v1.KeyManagementService/Decrypt", "tenants/dev/keys/k/versions/4", "OK"),
            """{"checkpoint":{"v":1,"type":"checkpoint","seq":13},"signature":""}""",
            Event(14, "lifecycle/Destruction", "tenants/dev/keys/other", "OK"),
            "",
        ];

        var found = DestructionReplay.FromAuditLines(lines, afterSequence: 10, "stream");

        Assert.Equal(2, found.Count);
        Assert.Equal((Name, (int?)2), (found[0].Key, found[0].Version));
        Assert.Equal((KeyName.Parse("tenants/dev/keys/other", "name"), (int?)null), (found[1].Key, found[1].Version));
        Assert.Throws<FormatException>(() => DestructionReplay.FromAuditLines(["not json"], 0, "stream"));
    }

    private static string Event(long seq, string operation, string resource, string outcome) =>
        $$$"""{"event":{"v":1,"seq":{{{seq}}},"prev":"00","time":"2026-11-29T13:00:00.000Z","request_id":"r","principal":"system:quorum","tenant":null,"operation":"{{{operation}}}","resource":"{{{resource}}}","outcome":"{{{outcome}}}","client":null,"count":1,"last_time":null,"context":{}},"hash":"00"}""";

    private static KeyWithVersions Snapshot(KeyState version1 = KeyState.Enabled, DateTimeOffset? version1DestroyTime = null)
    {
        var v1 = new KeyVersion(Name.Version(1), KeyVersionId.NewId(), version1, KeyAlgorithm.Aes256Gcm, Backup) { DestroyTime = version1DestroyTime };
        var v2 = new KeyVersion(Name.Version(2), KeyVersionId.NewId(), KeyState.Enabled, KeyAlgorithm.Aes256Gcm, Backup);
        return new KeyWithVersions(new Key(Name, KeyPurpose.EncryptDecrypt, KeyState.Enabled, v2, Backup, KeyLabels.Empty), [v1, v2]);
    }
}
