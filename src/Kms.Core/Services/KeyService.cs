using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Keys and their versions: creation, rotation, the primary version, lifecycle transitions,
/// and the background work that rotates and destroys on schedule. Material is generated in
/// the HSM; only its wrapped form is stored.
/// </summary>
/// <remarks>
/// Every change goes through <see cref="IKeyStore.UpdateKeyAsync"/>: the rules in
/// <see cref="KeyTransitions"/> run on fresh state inside the store's transaction, so
/// concurrent changes of one key are serialised (two rotations give consecutive versions,
/// never two primaries). HSM work happens before the transaction: a rotation whose store
/// write fails leaves wrapped material that was never stored and no version without material.
/// </remarks>
public sealed partial class KeyService(IHsm hsm, IKeyStore store, IAccessStore access, TimeProvider time, LifecycleOptions lifecycle, UsageLimitOptions limits, UsageCounter usage)
{
    private const string CreateKeyOperation = "CreateKey";
    private const string RotateKeyOperation = "RotateKey";
    private const string ScheduleKeyDeletionOperation = "ScheduleKeyDeletion";
    private const string ScheduleVersionDestructionOperation = "ScheduleKeyVersionDestruction";
    private const string CancelKeyDeletionOperation = "CancelKeyDeletion";
    private const string RestoreKeyVersionOperation = "RestoreKeyVersion";
    private const int DueBatch = 100;

    /// <summary>How long a key whose scheduled rotation failed is left out of the next passes.</summary>
    public static readonly TimeSpan FailedRotationRetryDelay = TimeSpan.FromMinutes(15);

    /// <summary>How long a due destruction that failed once is left out of the next passes (doubled at each further failure).</summary>
    public static readonly TimeSpan DestructionRetryFirstDelay = TimeSpan.FromMinutes(1);

    /// <summary>The longest a due destruction that keeps failing waits between two attempts.</summary>
    public static readonly TimeSpan DestructionRetryMaxDelay = TimeSpan.FromHours(1);

    private readonly RequestIds _requests = new(store);
    private readonly KeyResolver _resolver = new(store);

    // Keys whose scheduled rotation failed, and when to try them again: keys that keep failing
    // (an algorithm the HSM profile no longer allows) would otherwise fill every pass's batch
    // from the head of the due list, and no other key's schedule would ever run.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<KeyName, DateTimeOffset> _rotationRetry = new();

    // Due destructions that failed and whose back-off the store could not record (or whose reads
    // failed), by what they destroy (a key's name for its deletion, a version's for its own): the
    // back-off holds on this node meanwhile. The others are recorded in the store (DestroyDueAsync).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, DestructionFailure> _unrecorded = new(StringComparer.Ordinal);

    // FailingDestructions, as of the last pass.
    private int _failingDestructions;

    /// <summary>
    /// Creates a key and its version 1 (primary). With a request id, a retry of the same
    /// request returns the key the first call created instead of failing.
    /// </summary>
    /// <exception cref="KmsException">
    /// InvalidArgument (bad id, labels, settings, or a request id reused for another request),
    /// NotFound (parent outside the caller's tenant), AlreadyExists (key id taken).
    /// </exception>
    public async Task<CreateKeyResult> CreateKeyAsync(Caller caller, CreateKeyCommand command, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(command.Parent, command.Parent.ResourceName);
        var name = KeyName.Create(command.Parent, command.KeyId);
        Audit.AuditScope.SetResource(name.ToString());
        var requestId = RequestIds.Validate(command.RequestId);
        ValidateRotationPeriod(command.RotationPeriod, "key.rotation_period");
        if (command.NextRotationTime is not null && command.RotationPeriod is null)
        {
            throw KmsErrors.InvalidArgument("key.next_rotation_time", "needs key.rotation_period (a one-off rotation is RotateKey)");
        }

        if (command.MinDecryptionVersion is < 0 or > 1)
        {
            throw KmsErrors.InvalidArgument("key.min_decryption_version", "a new key has only version 1: leave it unset or 1");
        }

        if (KeyAlgorithms.Of(command.Algorithm).Purpose != command.Purpose)
        {
            throw KmsErrors.InvalidArgument("key.algorithm", $"{KeyAlgorithms.Of(command.Algorithm).Name} does not serve purpose {KeyAlgorithms.PurposeName(command.Purpose)}");
        }

        if (command.Residency is { } residency && !Residency.IsValid(residency))
        {
            throw KmsErrors.InvalidArgument("key.residency", "a residency region is 1 to 32 lowercase letters, digits and '-', starting with a letter (e.g. eu)");
        }

        // Fields added later join the fingerprint only when set, so earlier requests' records still match.
        object?[] fields = [name, (int)command.Purpose, (int)command.Algorithm, command.Labels, command.RotationPeriod?.Ticks, command.NextRotationTime?.UtcTicks];
        if (command.Residency is not null || command.AllowImport)
        {
            fields = [.. fields, command.Residency];
        }

        if (command.AllowImport)
        {
            fields = [.. fields, "allow_import"];
        }

        var fingerprint = RequestIds.Fingerprint(CreateKeyOperation, fields);
        if (await _requests.FindReplayAsync(name.Tenant, requestId, CreateKeyOperation, fingerprint, cancellationToken) is { } replay)
        {
            return new CreateKeyResult(await GetRecordedKeyAsync(replay, cancellationToken), Replayed: true);
        }

        await TenantGate.EnsureActiveAsync(access, command.Parent, cancellationToken);
        var now = Clock.Now(time);
        var material = await GenerateAsync(command.Algorithm, command.Residency, cancellationToken);
        var primary = KeyTransitions.NewVersion(name.Version(1), KeyVersionId.NewId(), command.Algorithm, material, now);
        var key = new Key(name, command.Purpose, KeyState.Enabled, primary, now, command.Labels)
        {
            RotationPeriod = command.RotationPeriod,
            NextRotationTime = command.RotationPeriod is { } period ? command.NextRotationTime ?? now + period : command.NextRotationTime,
            Residency = command.Residency,
            AllowImport = command.AllowImport,
        };
        var request = requestId is null ? null : new RequestRecord(name.Tenant, requestId, CreateKeyOperation, fingerprint, name.ToString(), now);

        try
        {
            await store.CreateKeyAsync(key, material.Wrapped, request, cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.AlreadyExists && requestId is not null)
        {
            // A concurrent retry with the same request id may have won the race.
            if (await _requests.FindReplayAsync(name.Tenant, requestId, CreateKeyOperation, fingerprint, cancellationToken) is { } raced)
            {
                return new CreateKeyResult(await GetRecordedKeyAsync(raced, cancellationToken), Replayed: true);
            }

            throw;
        }

        return new CreateKeyResult(key, Replayed: false);
    }

    /// <summary>A key's metadata.</summary>
    /// <exception cref="KmsException">NotFound, also for a key of another tenant.</exception>
    public async Task<Key> GetKeyAsync(Caller caller, KeyName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        return await store.GetKeyAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
    }

    /// <summary>One page of a tenant's keys, in key-id order.</summary>
    public async Task<Page<Key>> ListKeysAsync(Caller caller, TenantId parent, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(parent, parent.ResourceName);
        var size = PageToken.Size(pageSize);
        var scope = parent.ResourceName;

        // One extra row tells whether another page follows, without a second query.
        var rows = await store.ListKeysAsync(parent, PageToken.Decode(scope, pageToken), size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<Key>(page, rows.Count > size ? PageToken.Encode(scope, page[^1].Name.KeyId) : null);
    }

    /// <summary>Updates labels, rotation settings or the minimum decryption version.</summary>
    public async Task<Key> UpdateKeyAsync(Caller caller, KeyName name, KeyUpdate update, CancellationToken cancellationToken)
    {
        if (update.RotationPeriod is { } setPeriod)
        {
            ValidateRotationPeriod(setPeriod.Value, "key.rotation_period");
        }

        if (update.MinDecryptionVersion is < 1)
        {
            throw KmsErrors.InvalidArgument("key.min_decryption_version", "must be at least 1");
        }

        var now = Clock.Now(time);
        var result = await MutateAsync(caller, name, null, null, current =>
        {
            var key = current.Key;
            if (key.State == KeyState.Destroyed)
            {
                throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROYED");
            }

            // A key scheduled for deletion serves nothing and is not rotated: a rotation schedule
            // or a minimum decryption version set now means nothing, and a cancel brings the key
            // back DISABLED, when they can be set before it serves again (AWS KMS refuses
            // UpdateKeyDescription and EnableKeyRotation on a key pending deletion). Labels describe
            // the key and change nothing it does: an operator may still note why it is going.
            // Decided here, on the key as the store's write reads it (a scheduling that committed
            // after the call began is seen).
            if (key.State == KeyState.DestroyScheduled && (update.RotationPeriod is not null || update.NextRotationTime is not null || update.MinDecryptionVersion is not null))
            {
                throw KmsErrors.FailedPrecondition(
                    $"key {key.Name} is DESTROY_SCHEDULED; cancel the deletion before changing its rotation schedule or minimum decryption version (its labels can still be changed)");
            }

            if (update.Labels is not null)
            {
                key = key with { Labels = update.Labels };
            }

            if (update.RotationPeriod is { } period)
            {
                key = key with { RotationPeriod = period.Value, NextRotationTime = period.Value is { } p ? key.NextRotationTime ?? now + p : null };
            }

            if (update.NextRotationTime is { } next)
            {
                if (next.Value is not null && key.RotationPeriod is null)
                {
                    throw KmsErrors.InvalidArgument("key.next_rotation_time", "needs a rotation_period (set both in one update, or use RotateKey)");
                }

                // A key with a period always has a next time (the due query needs one): clearing
                // it, or masking it without a value, starts the period again from now.
                key = key with { NextRotationTime = next.Value ?? now + key.RotationPeriod };
            }

            if (update.MinDecryptionVersion is { } min)
            {
                if (min > key.Primary.Name.Version)
                {
                    throw KmsErrors.FailedPrecondition(
                        $"minimum decryption version of {min} is greater than the primary version {key.Primary.Name.Version} of key {key.Name}");
                }

                key = key with { MinDecryptionVersion = min };
            }

            return new KeyChange(key);
        }, cancellationToken);
        return result.Key;
    }

    /// <summary>Creates version n+1 in the HSM and makes it the primary.</summary>
    public async Task<Key> RotateKeyAsync(Caller caller, KeyReference reference, string? requestId, CancellationToken cancellationToken)
    {
        var name = await _resolver.ResolveAsync(caller, reference, cancellationToken);
        requestId = RequestIds.Validate(requestId);
        var fingerprint = RequestIds.Fingerprint(RotateKeyOperation, name);
        if (await FindRotationReplayAsync(reference, name, requestId, fingerprint, cancellationToken) is not null)
        {
            return await GetKeyAsync(caller, name, cancellationToken);
        }

        // Named as the caller named it: an alias's key is not the caller's to learn from an error.
        var current = await store.GetKeyAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(reference.ToString());

        // Refused before the HSM generates anything: an RSA-4096 pair takes an HSM session for seconds.
        KeyTransitions.EnsureRotatable(current);
        var material = await GenerateAsync(current.Primary.Algorithm, current.Residency, cancellationToken);
        var id = KeyVersionId.NewId();
        var now = Clock.Now(time);
        KeyWithVersions result;
        try
        {
            result = await MutateAsync(caller, name, requestId, fingerprint,
                current => KeyTransitions.Rotate(current, id, material, now, scheduled: false),
                cancellationToken, RotateKeyOperation);
        }
        catch (KmsException e) when (e is { Code: KmsErrorCode.InvalidArgument, Field: "request_id" })
        {
            // The first attempt committed while this retry rotated: on the key the alias named then?
            await FindRotationReplayAsync(reference, name, requestId, fingerprint, cancellationToken);
            throw;
        }

        return result.Key;
    }

    /// <summary>
    /// <see cref="RequestIds.FindReplayAsync"/> for a RotateKey. A retry by alias whose first
    /// attempt rotated the key the alias named then, the alias moved to another key since, is
    /// FAILED_PRECONDITION: it resolves to the other key, so its fingerprint is not the first
    /// attempt's, yet its request is the same — not a request id reused for another request
    /// (INVALID_ARGUMENT says the request is malformed). The other key is not rotated, and the
    /// answer does not name the first key: which key an alias named is not the caller's to learn
    /// from an error. The retry is not repeated by the SDK (only UNAVAILABLE is).
    /// </summary>
    private async Task<RequestRecord?> FindRotationReplayAsync(KeyReference reference, KeyName name, string? requestId, byte[] fingerprint, CancellationToken cancellationToken)
    {
        try
        {
            return await _requests.FindReplayAsync(name.Tenant, requestId, RotateKeyOperation, fingerprint, cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.InvalidArgument && reference is KeyReference.ToAlias alias)
        {
            if (await store.FindRequestAsync(name.Tenant, requestId!, cancellationToken) is { Operation: RotateKeyOperation } recorded
                && KeyVersionName.Parse(recorded.Resource, "request_id").Key is var rotated && rotated != name
                && System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(recorded.Fingerprint, RequestIds.Fingerprint(RotateKeyOperation, rotated)))
            {
                throw KmsErrors.FailedPrecondition(
                    $"request_id {requestId} was used for a RotateKey that rotated another key: the one {alias.Name} named then, if the alias has been moved since " +
                    "(or a call that named that key). That rotation stands; this retry is not applied, and the key the alias names now is not rotated");
            }

            throw;
        }
    }

    /// <summary>One page of a key's versions, in version order.</summary>
    public async Task<Page<KeyVersion>> ListKeyVersionsAsync(Caller caller, KeyName key, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(key.Tenant, key.ToString());
        var size = PageToken.Size(pageSize);
        var scope = key.ToString();
        var after = PageToken.Decode(scope, pageToken) is not { } text ? 0
            : int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n > 0 ? n
            : throw PageToken.Invalid();
        var rows = await store.ListVersionsAsync(key, after, size + 1, cancellationToken);
        if (rows.Count == 0 && after == 0 && await store.GetKeyAsync(key, cancellationToken) is null)
        {
            throw KmsErrors.NotFound(key.ToString());
        }

        var page = rows.Take(size).Select(WithLiveUsage).ToList();
        return new Page<KeyVersion>(page, rows.Count > size ? PageToken.Encode(scope, page[^1].Name.Version.ToString(System.Globalization.CultureInfo.InvariantCulture)) : null);
    }

    /// <summary>One version, with its usage (including what this node has not written yet).</summary>
    public async Task<KeyVersion> GetKeyVersionAsync(Caller caller, KeyVersionName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Key.Tenant, name.ToString());
        var version = await store.GetVersionAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
        return WithLiveUsage(version);
    }

    /// <summary>Makes an ENABLED version the primary.</summary>
    public async Task<Key> UpdatePrimaryVersionAsync(Caller caller, KeyName name, int version, CancellationToken cancellationToken)
    {
        if (version < 1)
        {
            throw KmsErrors.InvalidArgument("version", "must be a version number from 1");
        }

        return (await MutateAsync(caller, name, null, null, current => KeyTransitions.UpdatePrimary(current, version), cancellationToken)).Key;
    }

    /// <summary>DISABLED → ENABLED.</summary>
    public async Task<Key> EnableKeyAsync(Caller caller, KeyName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        await TenantGate.EnsureActiveAsync(access, name.Tenant, cancellationToken);
        return (await MutateAsync(caller, name, null, null, KeyTransitions.EnableKey, cancellationToken)).Key;
    }

    /// <summary>
    /// ENABLED → DISABLED; a key DESTROY_SCHEDULED is answered as it is, nothing written, while its
    /// waiting period runs (see <see cref="KeyTransitions.DisableKey"/>).
    /// </summary>
    public async Task<Key> DisableKeyAsync(Caller caller, KeyName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());

        // Whether the waiting period has ended: by the clock CancelKeyDeletion judges it by, read
        // under the write lock, so OK is answered exactly while a cancel would bring the key back DISABLED.
        var end = await Clock.WaitingEndClockAsync(time, store, lifecycle.ClockJumpAllowance, cancellationToken);
        return (await MutateAsync(caller, name, null, null, current => KeyTransitions.DisableKey(current, end()), cancellationToken)).Key;
    }

    /// <summary>Schedules the key's deletion after a waiting period (7 to 30 days, default 30).</summary>
    public async Task<Key> ScheduleKeyDeletionAsync(Caller caller, KeyName name, TimeSpan? waitingPeriod, string? requestId, CancellationToken cancellationToken)
    {
        var waiting = ValidateWaitingPeriod(waitingPeriod);
        requestId = RequestIds.Validate(requestId);
        var fingerprint = RequestIds.Fingerprint(ScheduleKeyDeletionOperation, name, waiting.Ticks);
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        if (await _requests.FindReplayAsync(name.Tenant, requestId, ScheduleKeyDeletionOperation, fingerprint, cancellationToken) is not null)
        {
            return await GetKeyAsync(caller, name, cancellationToken);
        }

        var now = await Clock.LatestAsync(Clock.Now(time), store, cancellationToken);
        return (await MutateAsync(caller, name, requestId, fingerprint,
            current => KeyTransitions.ScheduleKeyDeletion(current, now, waiting), cancellationToken, ScheduleKeyDeletionOperation)).Key;
    }

    /// <summary>DESTROY_SCHEDULED → DISABLED, while the waiting period runs.</summary>
    public async Task<Key> CancelKeyDeletionAsync(Caller caller, KeyName name, string? requestId, CancellationToken cancellationToken)
    {
        requestId = RequestIds.Validate(requestId);
        var fingerprint = RequestIds.Fingerprint(CancelKeyDeletionOperation, name);
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        if (await _requests.FindReplayAsync(name.Tenant, requestId, CancelKeyDeletionOperation, fingerprint, cancellationToken) is not null)
        {
            return await GetKeyAsync(caller, name, cancellationToken);
        }

        // Offboarding is not undone key by key by the tenant's own principals.
        await TenantGate.EnsureActiveAsync(access, name.Tenant, cancellationToken);

        // Whether the waiting period has ended: by the later clock too, as it was started by it
        // (a node days behind would otherwise bring back a key whose period is over everywhere else),
        // but by the node's clock only as far as the lifecycle believes it (one that jumped ahead
        // would refuse while the worker has not destroyed the key); read once the write lock is
        // held — a call that waited for it past the end is too late.
        var end = await Clock.WaitingEndClockAsync(time, store, lifecycle.ClockJumpAllowance, cancellationToken);
        return (await MutateAsync(caller, name, requestId, fingerprint,
            current => KeyTransitions.CancelKeyDeletion(current, end()) with { RefusedWhileTenantDeleting = true }, cancellationToken, CancelKeyDeletionOperation)).Key;
    }

    /// <summary>DISABLED → ENABLED, for one version.</summary>
    public async Task<KeyVersion> EnableKeyVersionAsync(Caller caller, KeyVersionName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Key.Tenant, name.ToString());
        await TenantGate.EnsureActiveAsync(access, name.Key.Tenant, cancellationToken);
        return await MutateVersionAsync(caller, name, null, null, current => KeyTransitions.EnableVersion(current, name.Version), cancellationToken);
    }

    /// <summary>
    /// ENABLED → DISABLED, for one version (not the primary); a version DESTROY_SCHEDULED is answered
    /// as it is, nothing written, while its waiting period runs (see <see cref="KeyTransitions.DisableVersion"/>).
    /// </summary>
    public async Task<KeyVersion> DisableKeyVersionAsync(Caller caller, KeyVersionName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Key.Tenant, name.ToString());

        // By RestoreKeyVersion's clock (and CancelKeyDeletion's), read under the write lock.
        var end = await Clock.WaitingEndClockAsync(time, store, lifecycle.ClockJumpAllowance, cancellationToken);
        return await MutateVersionAsync(caller, name, null, null, current => KeyTransitions.DisableVersion(current, name.Version, end()), cancellationToken);
    }

    /// <summary>Schedules one version's destruction after a waiting period (7 to 30 days, default 30).</summary>
    public async Task<KeyVersion> ScheduleKeyVersionDestructionAsync(Caller caller, KeyVersionName name, TimeSpan? waitingPeriod, string? requestId, CancellationToken cancellationToken)
    {
        var waiting = ValidateWaitingPeriod(waitingPeriod);
        requestId = RequestIds.Validate(requestId);
        var fingerprint = RequestIds.Fingerprint(ScheduleVersionDestructionOperation, name, waiting.Ticks);
        caller.EnsureSameTenant(name.Key.Tenant, name.ToString());
        if (await _requests.FindReplayAsync(name.Key.Tenant, requestId, ScheduleVersionDestructionOperation, fingerprint, cancellationToken) is not null)
        {
            return await GetKeyVersionAsync(caller, name, cancellationToken);
        }

        var now = await Clock.LatestAsync(Clock.Now(time), store, cancellationToken);
        return await MutateVersionAsync(caller, name, requestId, fingerprint,
            current => KeyTransitions.ScheduleVersionDestruction(current, name.Version, now, waiting), cancellationToken, ScheduleVersionDestructionOperation);
    }

    /// <summary>DESTROY_SCHEDULED → DISABLED, for one version, while the waiting period runs.</summary>
    public async Task<KeyVersion> RestoreKeyVersionAsync(Caller caller, KeyVersionName name, string? requestId, CancellationToken cancellationToken)
    {
        requestId = RequestIds.Validate(requestId);
        var fingerprint = RequestIds.Fingerprint(RestoreKeyVersionOperation, name);
        caller.EnsureSameTenant(name.Key.Tenant, name.ToString());
        if (await _requests.FindReplayAsync(name.Key.Tenant, requestId, RestoreKeyVersionOperation, fingerprint, cancellationToken) is not null)
        {
            return await GetKeyVersionAsync(caller, name, cancellationToken);
        }

        await TenantGate.EnsureActiveAsync(access, name.Key.Tenant, cancellationToken);
        var end = await Clock.WaitingEndClockAsync(time, store, lifecycle.ClockJumpAllowance, cancellationToken);
        return await MutateVersionAsync(caller, name, requestId, fingerprint,
            current => KeyTransitions.RestoreVersion(current, name.Version, end()), cancellationToken, RestoreKeyVersionOperation);
    }

    /// <summary>
    /// Background: rotates every enabled key whose next scheduled rotation is due (at most 100
    /// a pass; a key whose rotation failed other than for an outage waits
    /// <see cref="FailedRotationRetryDelay"/> before it is tried again, so the rest go on).
    /// Returns how many were rotated.
    /// </summary>
    /// <param name="now">
    /// The lifecycle's trusted time (<see cref="LifecycleClock"/>), not the bare clock: what is due,
    /// and where each rotated key's next rotation is put (now + its period). By a clock that jumped
    /// ahead a year every key would be rotated at once and its next rotation put a year and a
    /// period out — once the clock was put right, none would rotate on schedule for that year.
    /// </param>
    /// <param name="cancellationToken">Stops the pass between keys.</param>
    public async Task<int> RotateDueKeysAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        now = DateTimeOffset.FromUnixTimeMilliseconds(now.ToUnixTimeMilliseconds());
        foreach (var (name, retry) in _rotationRetry)
        {
            if (retry <= now)
            {
                _rotationRetry.TryRemove(name, out _);
            }
        }

        var due = (await store.ListKeysDueForRotationAsync(now, DueBatch + _rotationRetry.Count, hsm.Regions, cancellationToken))
            .Where(name => !_rotationRetry.ContainsKey(name)).Take(DueBatch).ToList();
        var rotated = 0;
        await ForEachDueKeyAsync("lifecycle/ScheduledRotation", due, async name =>
        {
            try
            {
                var done = await RotateIfStillDueAsync(name, key => key.State == KeyState.Enabled && key.NextRotationTime <= now, scheduled: true, now, cancellationToken);
                rotated += done ? 1 : 0;
            }
            catch (Exception e) when (e is not (OperationCanceledException or KmsException { Code: KmsErrorCode.Unavailable }))
            {
                // Not an outage (tried again next pass) but this key's own problem.
                _rotationRetry[name] = now + FailedRotationRetryDelay;
                throw;
            }
        });
        return rotated;
    }

    /// <summary>
    /// Background: rotates a key whose primary version reached the soft usage bound (no-op if
    /// it has been rotated since). Returns whether it rotated.
    /// </summary>
    public async Task<bool> RotateForUsageAsync(KeyName name, CancellationToken cancellationToken)
    {
        var current = await store.GetKeyAsync(name, cancellationToken);
        if (current is null || current.State != KeyState.Enabled || current.Primary.Usage.EncryptCount < limits.SoftBound)
        {
            return false;
        }

        using (SystemScope("lifecycle/UsageRotation", name.ToString()))
        {
            return await RotateIfStillDueAsync(name, key => key.State == KeyState.Enabled && key.Primary.Usage.EncryptCount >= limits.SoftBound,
                scheduled: false, Clock.Now(time), cancellationToken);
        }
    }

    /// <summary>
    /// Background: destroys what is due — keys whose deletion waiting period ended (with all
    /// their versions) and versions whose destruction waiting period ended. Their wrapped
    /// material is erased from the store and their unwrapped copies dropped from the HSM.
    /// Returns how many versions were destroyed.
    /// </summary>
    /// <remarks>
    /// <para>Each destruction is its own transaction with its own audit event naming what it
    /// destroyed: <c>lifecycle/KeyDestruction</c> with the key (every version), or
    /// <c>lifecycle/Destruction</c> with the version — so a restore from a backup and an audit
    /// export alone can re-apply it (<see cref="Backup.DestructionReplay"/>).</para>
    /// <para>A destruction that fails (a key's deletion, or one version's) is left out of the
    /// following passes for <see cref="DestructionRetryDelay"/> of its failures in a row, and the
    /// others go on: another version of the same key, and keys after it. The failures are
    /// thrown together after the pass, each naming what failed, how often and when it is tried
    /// again; <see cref="FailingDestructions"/> counts them. The back-off is recorded in the store
    /// with the key or version (<see cref="IKeyStore.RecordDestructionFailureAsync"/>, a write of
    /// its own that carries no audit event), so a restart or another node taking over the
    /// lifecycle goes on with it; the destruction's own write clears it. Times are
    /// <paramref name="now"/>'s, the lifecycle's trusted time. A failure the store cannot record
    /// either (its writes failing too), or of reading what of a key is due, is backed off in this
    /// object's memory only. Held back, a destruction due still refuses every use (its state is
    /// DESTROY_SCHEDULED and its period ended); only the erasure of its material waits.</para>
    /// </remarks>
    /// <param name="now">The lifecycle's trusted time (<see cref="LifecycleClock"/>), not the bare clock.</param>
    /// <param name="cancellationToken">Stops the pass between keys.</param>
    public async Task<int> DestroyDueAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        // The deployment's recorded failures, and those only this node holds (more recent, or the
        // store refused to record them): the store leaves out of the due list the ones it recorded
        // as waiting, this node those it holds alone, for which the list is widened.
        var failing = new Dictionary<string, DestructionFailure>(StringComparer.Ordinal);
        foreach (var recorded in await store.ListDestructionFailuresAsync(cancellationToken))
        {
            failing[recorded.Resource] = recorded;
        }

        foreach (var (resource, held) in _unrecorded)
        {
            if (failing.TryGetValue(resource, out var recorded) && recorded.Failures >= held.Failures)
            {
                _unrecorded.TryRemove(resource, out _); // recorded since (by another node, or a later write)
            }
            else
            {
                failing[resource] = held;
            }
        }

        var waitingHere = _unrecorded.Values.Where(f => f.RetryTime > now).Select(f => f.Key).ToHashSet();
        var limit = DueBatch + waitingHere.Count;
        var due = await store.ListKeysDueForDestructionAsync(now, limit, cancellationToken);
        if (due.Count < limit)
        {
            // The list is whole: a failure held here for a key no longer in it, and not recorded in
            // the store, is no longer due (cancelled, restored, or destroyed by another node).
            var listed = due.ToHashSet();
            foreach (var (resource, held) in _unrecorded)
            {
                if (!listed.Contains(held.Key))
                {
                    _unrecorded.TryRemove(resource, out _);
                    failing.Remove(resource);
                }
            }
        }

        var destroyed = 0;
        List<Exception>? failures = null;
        try
        {
            foreach (var name in due)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var keyResource = name.ToString();
                if (IsWaiting(failing, keyResource, now))
                {
                    continue;
                }

                List<(int Number, string Resource)> versions = [];
                var keyDue = false;
                var read = await AttemptDestructionAsync(failing, name, null, now, () => keyDue, async () =>
                {
                    if (await store.GetKeyAsync(name, cancellationToken) is not { } key)
                    {
                        return 0;
                    }

                    keyDue = KeyTransitions.DestructionDue(key, now);
                    if (!keyDue)
                    {
                        versions = [.. (await DueVersionsAsync(name, now, cancellationToken)).Select(n => (n, name.Version(n).ToString()))];
                        return 0;
                    }

                    using (SystemScope(Backup.DestructionReplay.KeyDestructionOperation, keyResource))
                    {
                        return await DestroyAsync(name, current => KeyTransitions.DestroyDue(current, now), cancellationToken);
                    }
                }, cancellationToken);
                destroyed += read.Destroyed;
                if (read.Failure is not null)
                {
                    (failures ??= []).Add(read.Failure);
                    continue;
                }

                if (keyDue)
                {
                    continue;
                }

                // A version's failure held here and no longer due (restored) is forgotten.
                foreach (var (resource, held) in _unrecorded)
                {
                    if (held.Key == name && resource != keyResource && !versions.Exists(v => v.Resource == resource))
                    {
                        _unrecorded.TryRemove(resource, out _);
                        failing.Remove(resource);
                    }
                }

                foreach (var (number, resource) in versions)
                {
                    if (IsWaiting(failing, resource, now))
                    {
                        continue;
                    }

                    var attempt = await AttemptDestructionAsync(failing, name, number, now, () => true, async () =>
                    {
                        using (SystemScope(Backup.DestructionReplay.LifecycleOperation, resource))
                        {
                            return await DestroyAsync(name, current => KeyTransitions.DestroyDueVersion(current, number, now), cancellationToken);
                        }
                    }, cancellationToken);
                    destroyed += attempt.Destroyed;
                    if (attempt.Failure is not null)
                    {
                        (failures ??= []).Add(attempt.Failure);
                    }
                }
            }
        }
        finally
        {
            Volatile.Write(ref _failingDestructions, failing.Count);
        }

        if (failures is not null)
        {
            throw new AggregateException($"{failures.Count} due destructions failed; each is tried again after a back-off (the others went on)", failures);
        }

        return destroyed;
    }

    /// <summary>
    /// Due destructions (a key's deletion, or one version's) whose last attempt failed, as this
    /// node's last lifecycle pass saw them: the deployment's recorded ones, and those only this
    /// node holds; each waits out <see cref="DestructionRetryDelay"/> before the next. 0 before the
    /// first pass and after <see cref="StopReportingDestructions"/>.
    /// </summary>
    public int FailingDestructions => Volatile.Read(ref _failingDestructions);

    /// <summary>
    /// This node no longer runs the lifecycle (another node holds the leader lease): it reports no
    /// failing destruction — the leader reports the deployment's, recorded in the store — and
    /// forgets those only it held, until its next <see cref="DestroyDueAsync"/>.
    /// </summary>
    public void StopReportingDestructions()
    {
        _unrecorded.Clear();
        Volatile.Write(ref _failingDestructions, 0);
    }

    /// <summary>
    /// How long a destruction that failed <paramref name="failures"/> times in a row is left out
    /// of the lifecycle's passes: <see cref="DestructionRetryFirstDelay"/>, doubled at each further
    /// failure, at most <see cref="DestructionRetryMaxDelay"/>.
    /// </summary>
    public static TimeSpan DestructionRetryDelay(int failures) =>
        failures <= 1 ? DestructionRetryFirstDelay
        : failures > 12 ? DestructionRetryMaxDelay
        : TimeSpan.FromTicks(Math.Min(DestructionRetryMaxDelay.Ticks, DestructionRetryFirstDelay.Ticks << (failures - 1)));

    private static bool IsWaiting(Dictionary<string, DestructionFailure> failing, string resource, DateTimeOffset now) =>
        failing.TryGetValue(resource, out var failed) && failed.RetryTime > now;

    // One destruction (or the reads that find what of a key is due), its failure returned, named,
    // for the pass to report, with the back-off it earns recorded in the store when RECORDABLE says
    // the failure is the destruction's (not of the reads before it), else held here. A success
    // forgets earlier ones (the store's record went with the destruction's write).
    private async Task<(int Destroyed, Exception? Failure)> AttemptDestructionAsync(
        Dictionary<string, DestructionFailure> failing, KeyName key, int? version, DateTimeOffset now, Func<bool> recordable, Func<Task<int>> destroy, CancellationToken cancellationToken)
    {
        var resource = version is { } number ? key.Version(number).ToString() : key.ToString();
        try
        {
            var destroyed = await destroy();
            failing.Remove(resource);
            _unrecorded.TryRemove(resource, out _);
            return (destroyed, null);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            var failed = failing.TryGetValue(resource, out var earlier)
                ? earlier with { Failures = earlier.Failures + 1, RetryTime = now + DestructionRetryDelay(earlier.Failures + 1) }
                : new DestructionFailure(key, version, 1, now, now + DestructionRetryDelay(1));
            failing[resource] = failed;
            var where = "";
            if (recordable())
            {
                try
                {
                    // Outside the destruction's audit scope, and a write that carries none anyway.
                    await store.RecordDestructionFailureAsync(failed, cancellationToken);
                    _unrecorded.TryRemove(resource, out _);
                }
                catch (Exception r) when (r is not OperationCanceledException)
                {
                    _unrecorded[resource] = failed;
                    where = $" (backed off on this node only: the store did not record it either: {r.Message})";
                }
            }
            else
            {
                _unrecorded[resource] = failed;
            }

            var message = $"destroying {resource} failed ({failed.Failures} in a row since {failed.Since:O}); tried again at {failed.RetryTime:O} at the earliest{where}: {e.Message}";
            return (0, new InvalidOperationException(message, e));
        }
    }

    // One destruction: the store change (a no-op when it is no longer due), then the HSM's copies.
    private async Task<int> DestroyAsync(KeyName name, Func<KeyWithVersions, KeyChange?> decide, CancellationToken cancellationToken)
    {
        IReadOnlyList<KeyVersion> erased = [];
        await store.UpdateKeyAsync(name, current =>
        {
            var change = decide(current);
            erased = change?.UpdatedVersions ?? [];
            return change ?? new KeyChange(current.Key) { IsNoOp = true };
        }, cancellationToken);
        foreach (var version in erased)
        {
            hsm.EvictKey(version.Id);
        }

        return erased.Count;
    }

    private async Task<List<int>> DueVersionsAsync(KeyName name, DateTimeOffset now, CancellationToken cancellationToken)
    {
        var due = new List<int>();
        var after = 0;
        while (true)
        {
            var page = await store.ListVersionsAsync(name, after, DueBatch, cancellationToken);
            due.AddRange(page.Where(v => KeyTransitions.DestructionDue(v, now)).Select(v => v.Name.Version));
            if (page.Count < DueBatch)
            {
                return due;
            }

            after = page[^1].Name.Version;
        }
    }

    /// <summary>Background: finishes erasing destroyed material from the store's files if an earlier pass could not.</summary>
    /// <exception cref="KmsException">Unavailable while it still cannot (retried on the next pass).</exception>
    public async Task CompleteErasureAsync(CancellationToken cancellationToken)
    {
        if (!await store.CompleteErasureAsync(cancellationToken))
        {
            throw KmsErrors.Unavailable("destroyed key material is erased from the database but not yet from its write-ahead log (a reader holds an old snapshot); retrying at the next pass");
        }
    }

    // One key's failure does not stop the others; the failures are reported together after.
    // Each key's change is audited as the lifecycle's own (system:lifecycle), committed with it:
    // under OPERATION naming the key, or (null) under the scopes the work enters itself.
    private async Task ForEachDueKeyAsync(string? operation, List<KeyName> names, Func<KeyName, Task> work)
    {
        List<Exception>? failures = null;
        foreach (var name in names)
        {
            try
            {
                using (operation is null ? null : SystemScope(operation, name.ToString()))
                {
                    await work(name);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                (failures ??= []).Add(e);
            }
        }

        if (failures is not null)
        {
            throw new AggregateException($"{failures.Count} of {names.Count} due keys failed", failures);
        }
    }

    /// <summary>The audit operation of the background erasure of expired import jobs' private keys.</summary>
    public const string ImportJobExpiryOperation = "lifecycle/ImportJobExpiry";

    private IDisposable SystemScope(string operation, string? resource) => Audit.AuditScope.EnterSystem(operation, resource, time);

    private KeyVersion WithLiveUsage(KeyVersion version) => version with { Usage = usage.Observe(version) };

    // Background rotation: the HSM work first (outside the transaction), then the rotation only
    // if it is still due on fresh state — a concurrent rotation, disable or schedule change wins.
    private async Task<bool> RotateIfStillDueAsync(KeyName name, Func<Key, bool> stillDue, bool scheduled, DateTimeOffset now, CancellationToken cancellationToken)
    {
        if (await store.GetKeyAsync(name, cancellationToken) is not { } key || !stillDue(key))
        {
            return false;
        }

        var material = await GenerateAsync(key.Primary.Algorithm, key.Residency, cancellationToken);
        var id = KeyVersionId.NewId();
        var done = false;
        await store.UpdateKeyAsync(name, current =>
        {
            if (!stillDue(current.Key))
            {
                return new KeyChange(current.Key) { IsNoOp = true };
            }

            done = true;
            return KeyTransitions.Rotate(current, id, material, now, scheduled);
        }, cancellationToken);
        return done;
    }

    // The HSM's profile decides which algorithms it can hold: asking first gives the caller the
    // profile's reason rather than a vendor error from half-way through a generation.
    // A key with a residency gets material wrapped under its region's domain key; a node outside
    // the region refuses before generating anything.
    private async Task<GeneratedKeyMaterial> GenerateAsync(KeyAlgorithm algorithm, string? residency, CancellationToken cancellationToken) =>
        hsm.UnsupportedReason(algorithm) is { } reason
            ? throw KmsErrors.FailedPrecondition($"this HSM cannot hold {KeyAlgorithms.Of(algorithm).Name} keys: {reason}")
            : await hsm.For(residency).GenerateKeyVersionAsync(algorithm, cancellationToken);

    private async Task<KeyWithVersions> MutateAsync(
        Caller caller,
        KeyName name,
        string? requestId,
        byte[]? fingerprint,
        Func<KeyWithVersions, KeyChange> decide,
        CancellationToken cancellationToken,
        string? operation = null)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        var now = Clock.Now(time);
        try
        {
            return await store.UpdateKeyAsync(name, current =>
            {
                var change = decide(current);
                return requestId is null
                    ? change
                    : change with { Request = new RequestRecord(name.Tenant, requestId, operation!, fingerprint!, ResourceOf(change), now) };
            }, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
        }
        catch (KmsException e) when (e.Code is KmsErrorCode.AlreadyExists or KmsErrorCode.FailedPrecondition && requestId is not null)
        {
            // A concurrent retry with the same request id may have applied it first: its record
            // (ALREADY_EXISTS), or the state it left, which this attempt's decision refuses
            // (FAILED_PRECONDITION: "DESTROY_SCHEDULED already") when it looked for the record
            // before the first attempt had committed.
            if (await _requests.FindReplayAsync(name.Tenant, requestId, operation!, fingerprint!, cancellationToken) is null)
            {
                throw;
            }

            return await store.UpdateKeyAsync(name, current => new KeyChange(current.Key) { IsNoOp = true }, cancellationToken)
                ?? throw KmsErrors.NotFound(name.ToString());
        }
    }

    private async Task<KeyVersion> MutateVersionAsync(
        Caller caller,
        KeyVersionName name,
        string? requestId,
        byte[]? fingerprint,
        Func<KeyWithVersions, KeyChange> decide,
        CancellationToken cancellationToken,
        string? operation = null)
    {
        var result = await MutateAsync(caller, name.Key, requestId, fingerprint, decide, cancellationToken, operation);
        return WithLiveUsage(result.Version(name.Version) ?? throw KmsErrors.NotFound(name.ToString()));
    }

    private static string ResourceOf(KeyChange change) =>
        change.AddedVersion?.Version.Name.ToString() ?? (change.UpdatedVersions.Count > 0 ? change.UpdatedVersions[0].Name.ToString() : change.Key.Name.ToString());

    private async Task<Key> GetRecordedKeyAsync(RequestRecord recorded, CancellationToken cancellationToken)
    {
        var name = KeyName.Parse(recorded.Resource, "request_id");
        return await store.GetKeyAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(recorded.Resource);
    }

    private void ValidateRotationPeriod(TimeSpan? period, string field)
    {
        if (period is { } value && (value < lifecycle.MinRotationPeriod || value > lifecycle.MaxRotationPeriod))
        {
            throw KmsErrors.InvalidArgument(field, $"must be from {lifecycle.MinRotationPeriod.TotalDays:0.##} to {lifecycle.MaxRotationPeriod.TotalDays:0} days");
        }
    }

    private TimeSpan ValidateWaitingPeriod(TimeSpan? waitingPeriod)
    {
        var waiting = waitingPeriod ?? lifecycle.DefaultWaitingPeriod;
        if (waiting < lifecycle.MinWaitingPeriod || waiting > lifecycle.MaxWaitingPeriod)
        {
            throw KmsErrors.InvalidArgument("waiting_period", $"must be from {lifecycle.MinWaitingPeriod.TotalDays:0.##} to {lifecycle.MaxWaitingPeriod.TotalDays:0.##} days");
        }

        return waiting;
    }
}

/// <summary>What CreateKey needs, validated except for the key id (validated with the tenant).</summary>
public sealed record CreateKeyCommand(TenantId Parent, string KeyId, KeyPurpose Purpose, KeyLabels Labels, string? RequestId)
{
    /// <summary>The algorithm of every version; must serve <see cref="Purpose"/> (see <see cref="KeyAlgorithms.Choose"/>).</summary>
    public KeyAlgorithm Algorithm { get; init; } = KeyAlgorithm.Aes256Gcm;

    /// <summary>Scheduled rotation period; null for none.</summary>
    public TimeSpan? RotationPeriod { get; init; }

    /// <summary>First scheduled rotation; defaults to creation + period.</summary>
    public DateTimeOffset? NextRotationTime { get; init; }

    /// <summary>0 or 1 (a new key has only version 1).</summary>
    public int MinDecryptionVersion { get; init; }

    /// <summary>The residency region whose domain key wraps the key's versions; null: the deployment's.</summary>
    public string? Residency { get; init; }

    /// <summary>Whether the key takes imported versions (<see cref="Key.AllowImport"/>).</summary>
    public bool AllowImport { get; init; }
}

/// <summary>The created key, and whether it was created by an earlier call with the same request id.</summary>
public sealed record CreateKeyResult(Key Key, bool Replayed);

/// <summary>
/// An UpdateKey: each field set (non-null) is applied; <see cref="Optional{T}"/> distinguishes
/// "set to null" (clear) from "leave alone".
/// </summary>
public sealed record KeyUpdate
{
    /// <summary>New labels, replacing all.</summary>
    public KeyLabels? Labels { get; init; }

    /// <summary>New rotation period (its value null: no scheduled rotation).</summary>
    public Optional<TimeSpan?>? RotationPeriod { get; init; }

    /// <summary>New next rotation time (its value null: none scheduled).</summary>
    public Optional<DateTimeOffset?>? NextRotationTime { get; init; }

    /// <summary>New minimum decryption version.</summary>
    public int? MinDecryptionVersion { get; init; }
}

/// <summary>A value that is present, possibly null.</summary>
public readonly record struct Optional<T>(T Value);
