using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>Aliases: names that point at keys of the same tenant and can be re-pointed.</summary>
public sealed class AliasService(IKeyStore store, IAccessStore access, TimeProvider time)
{
    private const string CreateAliasOperation = "CreateAlias";
    private const string DeleteAliasOperation = "DeleteAlias";
    private readonly RequestIds _requests = new(store);

    /// <summary>Creates an alias for a key of the same tenant.</summary>
    public async Task<KeyAlias> CreateAliasAsync(Caller caller, TenantId parent, string? aliasId, KeyName key, string? requestId, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(parent, parent.ResourceName);
        var name = AliasName.Create(parent, aliasId);
        Audit.AuditScope.SetResource(name.ToString());
        if (key.Tenant != parent)
        {
            throw KmsErrors.InvalidArgument("alias.key", "must be a key of the alias's tenant");
        }

        requestId = RequestIds.Validate(requestId);
        var fingerprint = RequestIds.Fingerprint(CreateAliasOperation, name, key);
        if (await _requests.FindReplayAsync(parent, requestId, CreateAliasOperation, fingerprint, cancellationToken) is not null)
        {
            return await GetAliasAsync(caller, name, cancellationToken);
        }

        await TenantGate.EnsureActiveAsync(access, parent, cancellationToken);
        var now = Clock.Now(time);
        var alias = new KeyAlias(name, key, now, now);

        // The key's state (not DESTROY_SCHEDULED nor DESTROYED) and the tenant's are judged again
        // by the store, in the write: a deletion scheduled after any check here is seen there.
        var request = requestId is null ? null : new RequestRecord(parent, requestId, CreateAliasOperation, fingerprint, name.ToString(), now);
        try
        {
            await store.CreateAliasAsync(alias, request, cancellationToken);
            return alias;
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.AlreadyExists && requestId is not null)
        {
            // A concurrent retry with the same request id may have won the race.
            if (await _requests.FindReplayAsync(parent, requestId, CreateAliasOperation, fingerprint, cancellationToken) is null)
            {
                throw;
            }

            return await GetAliasAsync(caller, name, cancellationToken);
        }
    }

    /// <summary>An alias.</summary>
    public async Task<KeyAlias> GetAliasAsync(Caller caller, AliasName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        return await store.GetAliasAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
    }

    /// <summary>Points an alias at another key of its tenant.</summary>
    public async Task<KeyAlias> UpdateAliasAsync(Caller caller, AliasName name, KeyName key, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        if (key.Tenant != name.Tenant)
        {
            throw KmsErrors.InvalidArgument("key", "must be a key of the alias's tenant");
        }

        // An alias's callers do not see which key it names: a key-manager (who may import but
        // not decrypt) must not swap it, in one step, onto a key holding material they imported.
        // Decided in the store's write, on fresh state: read before it (and from this node's
        // remembered aliases), a move made meanwhile — by a concurrent call, or through another
        // node within its change feed's poll — would let an ordinary key's alias onto such a key.
        // The store refuses, in the same write and before asking this check, a new key that is
        // DESTROY_SCHEDULED or DESTROYED or whose tenant is being deleted; moving away from one is not refused.
        // An alias that names the key already is answered as it is, with nothing written, whatever
        // the key's state: UpdateAlias is repeated by the SDK (RetrySafety), and a retry whose first
        // attempt moved the alias must not be told it did not once the key's deletion is scheduled.
        return await store.UpdateAliasAsync(name, key, Clock.Now(time), (current, target) =>
        {
            if (target.AllowImport && current is { AllowImport: false })
            {
                throw KmsErrors.FailedPrecondition($"{key} was created with allow_import and {current.Name} was not: an alias is not moved onto a key that takes imported material (create a new alias for it)");
            }
        }, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
    }

    /// <summary>Deletes an alias; the key is unaffected. With a request id, a retry of a delete that succeeded succeeds.</summary>
    public async Task DeleteAliasAsync(Caller caller, AliasName name, string? requestId, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        requestId = RequestIds.Validate(requestId);
        var fingerprint = RequestIds.Fingerprint(DeleteAliasOperation, name);
        if (await _requests.FindReplayAsync(name.Tenant, requestId, DeleteAliasOperation, fingerprint, cancellationToken) is not null)
        {
            return;
        }

        var request = requestId is null ? null : new RequestRecord(name.Tenant, requestId, DeleteAliasOperation, fingerprint, name.ToString(), Clock.Now(time));
        bool deleted;
        try
        {
            deleted = await store.DeleteAliasAsync(name, request, cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.AlreadyExists && requestId is not null)
        {
            // A concurrent retry with the same request id deleted it.
            if (await _requests.FindReplayAsync(name.Tenant, requestId, DeleteAliasOperation, fingerprint, cancellationToken) is null)
            {
                throw;
            }

            return;
        }

        if (!deleted)
        {
            throw KmsErrors.NotFound(name.ToString());
        }
    }

    /// <summary>One page of a tenant's aliases, in alias-id order.</summary>
    public async Task<Page<KeyAlias>> ListAliasesAsync(Caller caller, TenantId parent, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(parent, parent.ResourceName);
        var size = PageToken.Size(pageSize);
        var scope = parent.ResourceName + "/aliases";
        var rows = await store.ListAliasesAsync(parent, PageToken.Decode(scope, pageToken), size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<KeyAlias>(page, rows.Count > size ? PageToken.Encode(scope, page[^1].Name.AliasId) : null);
    }
}

/// <summary>One page of a list and the token of the next page (null on the last).</summary>
public sealed record Page<T>(IReadOnlyList<T> Items, string? NextPageToken);

/// <summary>Time as the store keeps it.</summary>
internal static class Clock
{
    // Stored with millisecond precision: truncate now, so what a call returns equals what is read back.
    public static DateTimeOffset Now(TimeProvider time) => DateTimeOffset.FromUnixTimeMilliseconds(time.GetUtcNow().ToUnixTimeMilliseconds());

    // The latest time this deployment has evidence of: the later of this node's clock, the
    // database server's (PostgreSQL's, another machine's) and the observed time the lifecycle
    // recorded (LifecycleClock's; on SQLite the only other evidence). Where a waiting period
    // starts, and by which a request's or a job's life has ended: a node whose clock is behind
    // (days behind, set back, a VM restored without NTP) would otherwise write a destroy time
    // that is due already by every other clock, or once the clock is put right, so the leader
    // destroys with no waiting period; or let an approval or an import in after the end.
    public static async Task<DateTimeOffset> LatestAsync(DateTimeOffset now, Ports.IKeyStore store, CancellationToken cancellationToken)
    {
        var latest = Later(now, await store.GetDatabaseTimeAsync(cancellationToken));
        latest = Later(latest, await LifecycleClock.RecordedAsync(store, cancellationToken));
        return DateTimeOffset.FromUnixTimeMilliseconds(latest.ToUnixTimeMilliseconds());
    }

    // Where the life of an import job or a quorum request starts, the life that an import or an
    // approval is then judged against by the latest time: the database server's clock where there
    // is one (PostgreSQL's; a node whose clock is ahead or behind neither stretches nor shortens
    // the life), else this node's; in both cases never before the observed time the lifecycle
    // recorded. A node whose clock was set back (on SQLite, or a database server's set back)
    // would otherwise create a job or request that has spent part of its life, or all of it,
    // before it begins by every other clock.
    public static async Task<DateTimeOffset> StartOfLifeAsync(TimeProvider time, Ports.IKeyStore store, CancellationToken cancellationToken)
    {
        var start = await store.GetDatabaseTimeAsync(cancellationToken) ?? time.GetUtcNow();
        start = Later(start, await LifecycleClock.RecordedAsync(store, cancellationToken));
        return DateTimeOffset.FromUnixTimeMilliseconds(start.ToUnixTimeMilliseconds());
    }

    // How far the latest time is ahead of this node's clock (zero when it is not): for a decision
    // taken under the store's write lock, whose callback reads the node's clock there and cannot
    // ask the store (a call that waited for the lock must not decide early).
    public static async Task<TimeSpan> LeadAsync(TimeProvider time, Ports.IKeyStore store, CancellationToken cancellationToken)
    {
        var node = Now(time);
        return await LatestAsync(node, store, cancellationToken) - node;
    }

    // Whether a waiting period has ended, for cancel and restore: the returned function reads the
    // clock when it is called (under the write lock). By the later of the database server's clock
    // and this node's as the lifecycle believes it: never behind the observed time recorded, and
    // not believed at all when it is ahead of that by more than the allowance (LifecycleClock's
    // rule at a start). A node whose clock is behind brings back nothing whose period ended by the
    // database's clock or the record; one whose clock jumped ahead still cancels what the
    // lifecycle, which runs by the time seen pass, has not destroyed.
    public static async Task<Func<DateTimeOffset>> WaitingEndClockAsync(TimeProvider time, Ports.IKeyStore store, TimeSpan allowance, CancellationToken cancellationToken)
    {
        var node = Now(time);
        var database = await store.GetDatabaseTimeAsync(cancellationToken) - node;
        var recorded = await LifecycleClock.RecordedAsync(store, cancellationToken);
        return () =>
        {
            var now = Now(time);
            var believed = recorded is not { } seen ? now : now - seen <= allowance ? Later(now, seen) : seen;
            return database is { } offset ? Later(believed, DateTimeOffset.FromUnixTimeMilliseconds((now + offset).ToUnixTimeMilliseconds())) : believed;
        };
    }

    private static DateTimeOffset Later(DateTimeOffset a, DateTimeOffset? b) => b is { } other && other > a ? other : a;
}
