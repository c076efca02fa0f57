using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;

namespace Kms.Core.Tests;

/// <summary>Every transition of the state machine, legal and illegal, on keys with versions 1 (old) and 2 (primary).</summary>
public sealed class KeyTransitionsTests
{
    private static readonly DateTimeOffset Now = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private static readonly KeyName Name = KeyName.Parse("tenants/dev/keys/k", "name");

    public static TheoryData<KeyState, KeyState?> KeyEnable => new()
    {
        { KeyState.Enabled, KeyState.Enabled },
        { KeyState.Disabled, KeyState.Enabled },
        { KeyState.DestroyScheduled, null },
        { KeyState.Destroyed, null },
    };

    public static TheoryData<KeyState, KeyState?> KeyDisable => new()
    {
        { KeyState.Enabled, KeyState.Disabled },
        { KeyState.Disabled, KeyState.Disabled },
        { KeyState.DestroyScheduled, KeyState.DestroyScheduled }, // answered as it is while the waiting period runs
        { KeyState.Destroyed, null },
    };

    public static TheoryData<KeyState, KeyState?> KeySchedule => new()
    {
        { KeyState.Enabled, KeyState.DestroyScheduled },
        { KeyState.Disabled, KeyState.DestroyScheduled },
        { KeyState.DestroyScheduled, null },
        { KeyState.Destroyed, null },
    };

    public static TheoryData<KeyState, KeyState?> KeyCancel => new()
    {
        { KeyState.Enabled, null },
        { KeyState.Disabled, null },
        { KeyState.DestroyScheduled, KeyState.Disabled },
        { KeyState.Destroyed, null },
    };

    [Theory]
    [MemberData(nameof(KeyEnable))]
    public void EnableKey_FromEachState(KeyState from, KeyState? to) => AssertKeyTransition(KeyTransitions.EnableKey, from, to);

    [Theory]
    [MemberData(nameof(KeyDisable))]
    public void DisableKey_FromEachState(KeyState from, KeyState? to) => AssertKeyTransition(k => KeyTransitions.DisableKey(k, Now), from, to);

    [Theory]
    [MemberData(nameof(KeySchedule))]
    public void ScheduleKeyDeletion_FromEachState(KeyState from, KeyState? to)
    {
        AssertKeyTransition(k => KeyTransitions.ScheduleKeyDeletion(k, Now, TimeSpan.FromDays(7)), from, to);
        if (to is not null)
        {
            Assert.Equal(Now.AddDays(7), KeyTransitions.ScheduleKeyDeletion(KeyIn(from), Now, TimeSpan.FromDays(7)).Key.DestroyTime);
        }
    }

    [Theory]
    [MemberData(nameof(KeyCancel))]
    public void CancelKeyDeletion_FromEachState(KeyState from, KeyState? to)
    {
        AssertKeyTransition(k => KeyTransitions.CancelKeyDeletion(k, Now), from, to);
        if (to is not null)
        {
            Assert.Null(KeyTransitions.CancelKeyDeletion(KeyIn(from), Now).Key.DestroyTime);
        }
    }

    public static TheoryData<string, KeyState, KeyState?> VersionTransitions => new()
    {
        { "enable", KeyState.Enabled, KeyState.Enabled },
        { "enable", KeyState.Disabled, KeyState.Enabled },
        { "enable", KeyState.DestroyScheduled, null },
        { "enable", KeyState.Destroyed, null },
        { "disable", KeyState.Enabled, KeyState.Disabled },
        { "disable", KeyState.Disabled, KeyState.Disabled },
        { "disable", KeyState.Destroyed, null },
        { "schedule", KeyState.Enabled, KeyState.DestroyScheduled },
        { "schedule", KeyState.Disabled, KeyState.DestroyScheduled },
        { "schedule", KeyState.DestroyScheduled, null },
        { "schedule", KeyState.Destroyed, null },
        { "restore", KeyState.Enabled, null },
        { "restore", KeyState.Disabled, null },
        { "restore", KeyState.DestroyScheduled, KeyState.Disabled },
        { "restore", KeyState.Destroyed, null },
    };

    [Theory]
    [MemberData(nameof(VersionTransitions))]
    public void VersionTransition_OfNonPrimaryVersion_FromEachState(string transition, KeyState from, KeyState? to)
    {
        var key = KeyIn(KeyState.Enabled, version1: from);
        if (to is null)
        {
            var e = Assert.Throws<KmsException>(() => Apply(transition, key, 1));
            Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
            Assert.Contains(KeyTransitions.StateName(from), e.Message, StringComparison.Ordinal);
            Assert.Contains("versions/1", e.Message, StringComparison.Ordinal);
        }
        else
        {
            var change = Apply(transition, key, 1);
            Assert.Equal(to, Assert.Single(change.UpdatedVersions).State);
            Assert.Equal(2, change.Key.Primary.Name.Version);
        }
    }

    [Fact]
    public void DisableKey_DestroyScheduled_AnsweredAsItIsNothingWritten_WhileTheWaitingPeriodRuns_RefusedOnceItEnded()
    {
        // DisableKey is repeated by the SDK: a disable whose answer was lost, retried after the
        // key's deletion was scheduled. The key is at least as disabled (a cancel brings it back DISABLED).
        var key = KeyIn(KeyState.DestroyScheduled);
        var end = key.Key.DestroyTime!.Value;
        foreach (var now in new[] { Now, end.AddMilliseconds(-1) })
        {
            var change = KeyTransitions.DisableKey(key, now);
            Assert.True(change.IsNoOp);
            Assert.Equal((KeyState.DestroyScheduled, end), (change.Key.State, change.Key.DestroyTime));
            Assert.Same(key.Key, change.Key);
            Assert.Empty(change.UpdatedVersions);
        }

        // Once the period has ended the deletion has taken effect, whether or not the job has run.
        var e = Assert.Throws<KmsException>(() => KeyTransitions.DisableKey(key, end));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("took effect", e.Message, StringComparison.Ordinal);

        // Enabling such a key is still refused; a DESTROYED key still refuses both.
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => KeyTransitions.EnableKey(key)).Code);
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => KeyTransitions.DisableKey(KeyIn(KeyState.Destroyed), Now)).Code);
    }

    [Fact]
    public void DisableVersion_DestroyScheduled_AnsweredAsItIsNothingWritten_WhileTheWaitingPeriodRuns_RefusedOnceItEnded()
    {
        // A version scheduled for destruction comes back DISABLED if restored.
        var key = KeyIn(KeyState.Enabled, version1: KeyState.DestroyScheduled, version1DestroyTime: Now.AddDays(7));
        var change = KeyTransitions.DisableVersion(key, 1, Now.AddDays(7).AddMilliseconds(-1));
        Assert.True(change.IsNoOp);
        Assert.Empty(change.UpdatedVersions);
        Assert.Equal((KeyState.DestroyScheduled, Now.AddDays(7)), (key.Version(1)!.State, key.Version(1)!.DestroyTime));

        var e = Assert.Throws<KmsException>(() => KeyTransitions.DisableVersion(key, 1, Now.AddDays(7)));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("took effect", e.Message, StringComparison.Ordinal);
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => KeyTransitions.EnableVersion(key, 1)).Code);
    }

    [Theory]
    [InlineData(KeyState.Disabled, true)]
    [InlineData(KeyState.DestroyScheduled, true)]
    [InlineData(KeyState.Enabled, false)]
    [InlineData(KeyState.Destroyed, false)]
    public void DisableVersion_OfAKeyDestroyScheduled_AlreadyAtLeastAsDisabled_AnsweredAsItIs_WhileTheKeysPeriodRuns(KeyState version1, bool noOp)
    {
        // A disable of a version retried after its key's deletion was scheduled: the version is
        // DISABLED already (or DESTROY_SCHEDULED); one still ENABLED is refused as before.
        var key = KeyIn(KeyState.DestroyScheduled, version1: version1);
        if (noOp)
        {
            Assert.True(KeyTransitions.DisableVersion(key, 1, Now).IsNoOp);
        }
        else
        {
            Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => KeyTransitions.DisableVersion(key, 1, Now)).Code);
        }

        // Once the key's deletion has taken effect, refused whatever the version's state.
        var e = Assert.Throws<KmsException>(() => KeyTransitions.DisableVersion(key, 1, key.Key.DestroyTime!.Value));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
    }

    [Fact]
    public void DisableVersion_ADestroyedVersionOfAKeyScheduledForDeletion_RefusedNamingTheVersionDestroyed_NotTheCancel()
    {
        // Cancelling the key's deletion would not make a DESTROYED version disableable: the message says what is so.
        var key = KeyIn(KeyState.DestroyScheduled, version1: KeyState.Destroyed);
        var e = Assert.Throws<KmsException>(() => KeyTransitions.DisableVersion(key, 1, Now));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains($"key version {key.Key.Name.Version(1)} is DESTROYED", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("cancel", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DisableVersion_OfADestroyedKey_Refused()
    {
        var key = KeyIn(KeyState.Destroyed, version1: KeyState.Disabled);
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => KeyTransitions.DisableVersion(key, 1, Now)).Code);
    }

    [Fact]
    public void CancelKeyDeletion_AfterTheWaitingPeriodEnded_RefusedEvenBeforeTheJobRan()
    {
        var key = KeyIn(KeyState.DestroyScheduled);
        var e = Assert.Throws<KmsException>(() => KeyTransitions.CancelKeyDeletion(key, key.Key.DestroyTime!.Value));
        Assert.Contains("can no longer be cancelled", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RestoreVersion_AfterTheWaitingPeriodEnded_RefusedEvenBeforeTheJobRan()
    {
        var key = KeyIn(KeyState.Enabled, version1: KeyState.DestroyScheduled, version1DestroyTime: Now.AddDays(7));
        var e = Assert.Throws<KmsException>(() => KeyTransitions.RestoreVersion(key, 1, Now.AddDays(8)));
        Assert.Contains("can no longer be restored", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Rotate_ScheduledWithoutPeriod_EndsTheScheduleInsteadOfStayingDue()
    {
        var key = KeyIn(KeyState.Enabled);
        key = key with { Key = key.Key with { RotationPeriod = null, NextRotationTime = Now.AddDays(-1) } };
        Assert.Null(Rotate(key, scheduled: true).Key.NextRotationTime);
    }

    [Fact]
    public void EnableVersion_DestroyScheduled_MessageSaysRestoreFirst()
    {
        var e = Assert.Throws<KmsException>(() => KeyTransitions.EnableVersion(KeyIn(KeyState.Enabled, version1: KeyState.DestroyScheduled), 1));
        Assert.Equal("key version tenants/dev/keys/k/versions/1 is DESTROY_SCHEDULED; restore it before enabling it", e.Message);
    }

    [Theory]
    [InlineData("disable")]
    [InlineData("schedule")]
    public void VersionTransition_OfPrimary_RefusedNamingThePrimary(string transition)
    {
        var e = Assert.Throws<KmsException>(() => Apply(transition, KeyIn(KeyState.Enabled), 2));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("is the primary version", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("enable")]
    [InlineData("disable")]
    [InlineData("schedule")]
    [InlineData("restore")]
    public void VersionTransition_UnknownVersion_NotFound(string transition)
    {
        Assert.Equal(KmsErrorCode.NotFound, Assert.Throws<KmsException>(() => Apply(transition, KeyIn(KeyState.Enabled), 9)).Code);
    }

    [Theory]
    [InlineData(KeyState.DestroyScheduled)]
    [InlineData(KeyState.Destroyed)]
    public void VersionTransition_OfDeletedKey_Refused(KeyState keyState)
    {
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => Apply("enable", KeyIn(keyState, version1: KeyState.Disabled), 1)).Code);
    }

    [Theory]
    [InlineData(KeyState.Enabled, true)]
    [InlineData(KeyState.Disabled, false)]
    [InlineData(KeyState.DestroyScheduled, false)]
    public void UpdatePrimary_OnlyToAnEnabledVersion(KeyState version1, bool allowed)
    {
        var key = KeyIn(KeyState.Enabled, version1: version1);
        if (allowed)
        {
            Assert.Equal(1, KeyTransitions.UpdatePrimary(key, 1).Key.Primary.Name.Version);
        }
        else
        {
            Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => KeyTransitions.UpdatePrimary(key, 1)).Code);
        }
    }

    [Fact]
    public void UpdatePrimary_BelowMinimumDecryptionVersion_Refused()
    {
        var key = KeyIn(KeyState.Enabled);
        key = key with { Key = key.Key with { MinDecryptionVersion = 2 } };
        var e = Assert.Throws<KmsException>(() => KeyTransitions.UpdatePrimary(key, 1));
        Assert.Contains("below the minimum decryption version 2", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(KeyState.Enabled, true)]
    [InlineData(KeyState.Disabled, false)]
    [InlineData(KeyState.DestroyScheduled, false)]
    [InlineData(KeyState.Destroyed, false)]
    public void Rotate_OnlyAnEnabledKey_AddsNextVersionAsPrimary(KeyState state, bool allowed)
    {
        var key = KeyIn(state);
        if (!allowed)
        {
            Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => Rotate(key, scheduled: false)).Code);
            return;
        }

        var change = Rotate(key, scheduled: false);
        Assert.Equal(3, change.AddedVersion!.Version.Name.Version);
        Assert.Equal(3, change.Key.Primary.Name.Version);
        Assert.Equal(KeyState.Enabled, change.AddedVersion.Version.State);
    }

    [Fact]
    public void Rotate_Scheduled_MovesNextRotationOnePeriodOn_Manual_LeavesIt()
    {
        var key = KeyIn(KeyState.Enabled);
        key = key with { Key = key.Key with { RotationPeriod = TimeSpan.FromDays(90), NextRotationTime = Now } };
        Assert.Equal(Now.AddDays(90), Rotate(key, scheduled: true).Key.NextRotationTime);
        Assert.Equal(Now, Rotate(key, scheduled: false).Key.NextRotationTime);
    }

    [Fact]
    public void DestroyDue_VersionDue_DestroyedWithEventTime_NotDue_Untouched()
    {
        var key = KeyIn(KeyState.Enabled, version1: KeyState.DestroyScheduled, version1DestroyTime: Now.AddSeconds(1));
        Assert.Null(KeyTransitions.DestroyDue(key, Now));

        var change = KeyTransitions.DestroyDue(key, Now.AddSeconds(1))!;
        var destroyed = Assert.Single(change.UpdatedVersions);
        Assert.Equal(KeyState.Destroyed, destroyed.State);
        Assert.Equal(Now.AddSeconds(1), destroyed.DestroyEventTime);
        Assert.Equal(KeyState.Enabled, change.Key.State);
    }

    [Fact]
    public void DestroyDue_KeyDue_KeyAndEveryVersionDestroyed()
    {
        var key = KeyIn(KeyState.Enabled);
        key = key with { Key = key.Key with { State = KeyState.DestroyScheduled, DestroyTime = Now } };
        var change = KeyTransitions.DestroyDue(key, Now)!;
        Assert.Equal(KeyState.Destroyed, change.Key.State);
        Assert.Equal(2, change.UpdatedVersions.Count);
        Assert.All(change.UpdatedVersions, v => Assert.Equal(KeyState.Destroyed, v.State));
        Assert.Equal(KeyState.Destroyed, change.Key.Primary.State);
    }

    private static KeyChange Apply(string transition, KeyWithVersions key, int version) => transition switch
    {
        "enable" => KeyTransitions.EnableVersion(key, version),
        "disable" => KeyTransitions.DisableVersion(key, version, Now),
        "schedule" => KeyTransitions.ScheduleVersionDestruction(key, version, Now, TimeSpan.FromDays(7)),
        "restore" => KeyTransitions.RestoreVersion(key, version, Now),
        _ => throw new ArgumentOutOfRangeException(nameof(transition)),
    };

    private static KeyChange Rotate(KeyWithVersions key, bool scheduled) =>
        KeyTransitions.Rotate(key, KeyVersionId.NewId(), new GeneratedKeyMaterial(new WrappedKeyMaterial(new byte[40]), null), Now, scheduled);

    private static void AssertKeyTransition(Func<KeyWithVersions, KeyChange> transition, KeyState from, KeyState? to)
    {
        if (to is null)
        {
            var e = Assert.Throws<KmsException>(() => transition(KeyIn(from)));
            Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
            Assert.Contains(KeyTransitions.StateName(from), e.Message, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal(to, transition(KeyIn(from)).Key.State);
        }
    }

    private static KeyWithVersions KeyIn(KeyState state, KeyState version1 = KeyState.Enabled, DateTimeOffset? version1DestroyTime = null)
    {
        var v1 = new KeyVersion(Name.Version(1), KeyVersionId.NewId(), version1, KeyAlgorithm.Aes256Gcm, Now)
        {
            DestroyTime = version1 == KeyState.DestroyScheduled ? version1DestroyTime ?? Now.AddDays(7) : null,
        };
        var v2 = new KeyVersion(Name.Version(2), KeyVersionId.NewId(), KeyState.Enabled, KeyAlgorithm.Aes256Gcm, Now);
        var key = new Key(Name, KeyPurpose.EncryptDecrypt, state, v2, Now, KeyLabels.Empty)
        {
            DestroyTime = state == KeyState.DestroyScheduled ? Now.AddDays(7) : null,
        };
        return new KeyWithVersions(key, [v1, v2]);
    }
}
