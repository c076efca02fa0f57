using Kms.Core.Errors;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Pins the domain key: the first start records its check value (KCV) in the store; every
/// later start refuses to serve if the HSM's domain key has another KCV, because every
/// stored wrapped key would be unreadable (or, worse, a different key would be trusted).
/// </summary>
public static class DomainKeyGuard
{
    /// <summary>Setting that holds the pinned KCV.</summary>
    public const string CheckValueSetting = "domain_key.check_value";

    /// <summary>The setting pinning a residency region's domain key check value.</summary>
    public static string RegionCheckValueSetting(string region) => $"{CheckValueSetting}.region.{region}";

    /// <summary>
    /// The setting holding a key wrapped under a residency region's domain key when it was
    /// pinned: it unwraps only under that very key, where the 3-byte check value can be matched
    /// by another key in seconds (the deployment's key has the audit signing key for this).
    /// </summary>
    public static string RegionWitnessSetting(string region) => $"domain_key.witness.region.{region}";

    /// <summary>Setting that says whether the pinned domain key is a dev-mode one.</summary>
    public const string OriginSetting = "domain_key.origin";

    /// <summary>
    /// Setting present while an offline domain-key rotation is under way (<c>kms ceremony
    /// rotate-domain</c>): some blobs are under the old key, some under the new; nothing serves.
    /// </summary>
    public const string RotationSetting = "domain_key.rotation";

    // A rotation recorded but not started (no blob moved: a first run stopped before its first)
    // leaves every blob under the old key, which the server's token holds: it may serve, and a
    // later run lists every blob afresh (the job's count check sees any made meanwhile).
    private static bool IsUnstarted(string rotation)
    {
        try
        {
            return System.Text.Json.Nodes.JsonNode.Parse(rotation) is System.Text.Json.Nodes.JsonObject record
                && record["rewrapped"] is System.Text.Json.Nodes.JsonValue moved && moved.TryGetValue<long>(out var count) && count == 0
                && record["last_item"] is null;
        }
        catch (System.Text.Json.JsonException)
        {
            return false;
        }
    }

    /// <summary>Verifies (or, on first start, pins) the HSM's domain key against the store.</summary>
    /// <param name="devMode">Whether the server runs in dev mode; a dev-mode domain key is refused outside it.</param>
    /// <exception cref="KmsException">FailedPrecondition when the domain key is not the pinned one.</exception>
    public static async Task<DomainKeyPin> VerifyAsync(IHsm hsm, IKeyStore store, bool devMode, CancellationToken cancellationToken)
    {
        if (await store.GetSettingAsync(RotationSetting, cancellationToken) is { } rotation && !IsUnstarted(rotation))
        {
            throw KmsErrors.FailedPrecondition(
                "a domain-key rotation is in progress on this database (kms ceremony rotate-domain); run it again to finish it before serving");
        }

        var origin = devMode ? "dev" : "ceremony";
        var pinnedOrigin = await store.SetSettingIfAbsentAsync(OriginSetting, origin, cancellationToken);
        if (pinnedOrigin == "dev" && !devMode)
        {
            throw KmsErrors.FailedPrecondition(
                "this database was created with a dev-mode domain key, which cannot be backed up as custodian shares; it is refused outside dev mode");
        }

        var current = hsm.DomainKeyCheckValue;
        var pinned = await store.SetSettingIfAbsentAsync(CheckValueSetting, current, cancellationToken);
        if (!string.Equals(pinned, current, StringComparison.OrdinalIgnoreCase))
        {
            throw KmsErrors.FailedPrecondition(
                $"the HSM's domain key has check value {current}, but this database was created under the domain key with check value {pinned}; refusing to serve");
        }

        // Each residency region's domain key is pinned by the first node of the region to start.
        foreach (var region in hsm.Regions)
        {
            var regional = hsm.ForRegion(region).DomainKeyCheckValue;
            var pinnedRegional = await store.SetSettingIfAbsentAsync(RegionCheckValueSetting(region), regional, cancellationToken);
            if (!string.Equals(pinnedRegional, regional, StringComparison.OrdinalIgnoreCase))
            {
                throw KmsErrors.FailedPrecondition(
                    $"the HSM's domain key of region {region} has check value {regional}, but this database's keys of that region are under check value {pinnedRegional}; refusing to serve");
            }

            await ProveRegionalKeyAsync(hsm.ForRegion(region), region, store, cancellationToken);
        }

        return new DomainKeyPin(pinned, FirstStart: pinned == current && pinnedOrigin == origin);
    }

    // The witness is made by the first node of the region to start with this check (a database
    // pinned before it gets one then), and must unwrap under the region's key at every start.
    private static async Task ProveRegionalKeyAsync(IHsm regional, string region, IKeyStore store, CancellationToken cancellationToken)
    {
        var setting = RegionWitnessSetting(region);
        if (await store.GetSettingAsync(setting, cancellationToken) is not { } witness)
        {
            var generated = await regional.GenerateAes256KeyAsync(cancellationToken);
            witness = await store.SetSettingIfAbsentAsync(setting, Convert.ToBase64String(generated.Bytes.Span), cancellationToken);
        }

        var id = Keys.KeyVersionId.FromBytes(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(setting)).AsSpan(0, Keys.KeyVersionId.Length));
        try
        {
            await regional.EncryptAesGcmAsync(new KeyMaterialRef(id, new Crypto.WrappedKeyMaterial(Convert.FromBase64String(witness))), new byte[12], [], new byte[16], cancellationToken);
        }
        catch (KmsException e) when (e.Code != KmsErrorCode.Unavailable)
        {
            throw KmsErrors.FailedPrecondition(
                $"the HSM's domain key of region {region} has the pinned check value but cannot unwrap the key wrapped under the region's pinned domain key: it is another key with the same check value; refusing to serve");
        }
        finally
        {
            regional.EvictKey(id);
        }
    }
}

/// <summary>The pinned domain key check value.</summary>
public sealed record DomainKeyPin(string CheckValue, bool FirstStart);
