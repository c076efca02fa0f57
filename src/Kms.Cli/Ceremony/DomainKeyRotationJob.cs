using Kms.Hsm;
using Kms.Storage;

namespace Kms.Cli.Ceremony;

/// <summary>
/// The database half of an offline domain-key rotation: every wrapped blob of the store is
/// re-wrapped from the old to the new domain key (inside the HSM, <see cref="DomainKeyRewrapper"/>),
/// one row per transaction with a high-water mark, then the new key's check value is pinned.
/// </summary>
/// <remarks>
/// <para>Resumable: a run stopped anywhere (crash, power loss, or a test's stop)
/// left every row either wholly old or wholly new and the mark on the last new one; the next run
/// with the same two keys continues after the mark. A blob is never wrapped twice: rows at or
/// before the mark are not read again, the update only applies to the exact blob that was read,
/// and a blob already under the new key fails the old key's KWP integrity check anyway.</para>
/// <para>Until the run completes, the database holds a rotation record and no server serves it
/// (<see cref="Kms.Core.Services.DomainKeyGuard"/>).</para>
/// </remarks>
public static class DomainKeyRotationJob
{
    /// <summary>Runs (or resumes) the rotation; returns how many blobs this run re-wrapped and whether it completed.</summary>
    /// <param name="stopAfter">Stop (as a crash would) after this many blobs; null: run to the end.</param>
    public static async Task<DomainKeyRotationOutcome> RunAsync(SqlStore store, DomainKeyRewrapper rewrapper, TimeProvider clock, int? stopAfter, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(rewrapper);
        ArgumentNullException.ThrowIfNull(clock);

        // A server holds the serving lock shared (a PostgreSQL advisory lock, a flock beside the
        // SQLite file): the rotation needs it exclusively, for its whole run, so no server can
        // create versions under the old key meanwhile.
        if (!await store.TryHoldMaintenanceLockAsync(cancellationToken))
        {
            throw Kms.Core.Errors.KmsErrors.FailedPrecondition(
                $"a server is serving this {store.Provider} database; stop every server before rotating the domain key (they would keep wrapping new versions under the old key)");
        }

        // Listed before the rotation is recorded: a blob of a kind the rotation cannot move fails
        // here, while the database still serves.
        var existing = await store.GetDomainKeyRotationAsync(cancellationToken);
        var items = await store.ListWrappedItemsAfterAsync(existing?.LastItem, cancellationToken);
        var state = await store.BeginDomainKeyRotationAsync(rewrapper.OldCheckValue, rewrapper.NewCheckValue, clock.GetUtcNow(), cancellationToken);
        var resumedAfter = state.Rewrapped;
        var done = 0;
        foreach (var item in items)
        {
            if (done == stopAfter)
            {
                return new(done, resumedAfter, Completed: false);
            }

            var kind = item.Kind switch
            {
                WrappedItemKind.Aes256 => WrappedKeyKind.Aes256,
                WrappedItemKind.EcP256PrivateKey => WrappedKeyKind.EcP256PrivateKey,
                WrappedItemKind.EcP384PrivateKey => WrappedKeyKind.EcP384PrivateKey,
                WrappedItemKind.RsaPrivateKey => WrappedKeyKind.RsaPrivateKey,
                WrappedItemKind.GenericSecret => WrappedKeyKind.GenericSecret,
                _ => throw new ArgumentOutOfRangeException(nameof(store), item.Kind, "unknown wrapped item kind"),
            };
            state = await store.ReplaceWrappedItemAsync(item, rewrapper.Rewrap(item.Blob, kind), cancellationToken);
            done++;
        }

        // Nothing may be left under the old key when the new one is pinned. Item names are random, so
        // one added meanwhile can sort anywhere, before the high-water mark too: every run together
        // must have moved exactly as many items as the store now holds. (The maintenance lock keeps
        // servers out; this catches whatever else wrote to the database.)
        var present = await store.ListWrappedItemsAfterAsync(null, cancellationToken);
        if (present.Count != state.Rewrapped)
        {
            throw Kms.Core.Errors.KmsErrors.FailedPrecondition(
                $"the database holds {present.Count} wrapped items, but the rotation moved {state.Rewrapped}: something wrote to it during the rotation, " +
                "and items may still be under the old domain key; the new key is not pinned (restore the backup taken before the rotation and rotate again)");
        }

        await store.CompleteDomainKeyRotationAsync(rewrapper.NewCheckValue, cancellationToken);
        return new(done, resumedAfter, Completed: true);
    }
}

/// <summary>What one run of <see cref="DomainKeyRotationJob.RunAsync"/> did.</summary>
/// <param name="Rewrapped">Blobs re-wrapped by this run.</param>
/// <param name="ResumedAfter">Blobs an earlier, interrupted run had re-wrapped already.</param>
/// <param name="Completed">Whether the rotation finished (new check value pinned, record removed).</param>
public sealed record DomainKeyRotationOutcome(long Rewrapped, long ResumedAfter, bool Completed);
