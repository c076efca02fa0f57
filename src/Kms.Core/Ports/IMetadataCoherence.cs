namespace Kms.Core.Ports;

/// <summary>
/// What keeps a store's remembered hot-path metadata (a key's primary version and material, a
/// version found by id, an alias) true to the database. The store forgets it itself after its own
/// writes; for writes made elsewhere (another node, the CLI) the change-feed reader tells it.
/// </summary>
/// <remarks>
/// Remembered metadata is used only while the change feed has been read recently
/// (<see cref="ConfirmCoherent"/>): a store nobody confirms — a CLI, a test, a node whose feed
/// cannot be read — reads the database on every call, as before.
/// </remarks>
public interface IMetadataCoherence
{
    /// <summary>Something changed in the database (seen in the change feed): forget everything remembered.</summary>
    void InvalidateMetadata();

    /// <summary>
    /// Every change committed before this call's feed read has been applied: remembered metadata
    /// may be used for <paramref name="validFor"/> from now, unless a newer confirmation extends it.
    /// </summary>
    void ConfirmCoherent(TimeSpan validFor);
}
