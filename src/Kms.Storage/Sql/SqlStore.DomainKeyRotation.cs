using System.Data.Common;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Services;

namespace Kms.Storage;

/// <summary>What a stored wrapped blob holds (it decides how the HSM unwraps it).</summary>
public enum WrappedItemKind
{
    /// <summary>An AES-256 secret key.</summary>
    Aes256,

    /// <summary>A P-256 private key (PKCS#8).</summary>
    EcP256PrivateKey,

    /// <summary>A P-384 private key (PKCS#8).</summary>
    EcP384PrivateKey,

    /// <summary>An RSA private key (PKCS#8): signing, OAEP and import-job keys.</summary>
    RsaPrivateKey,

    /// <summary>A generic secret (HMAC keys).</summary>
    GenericSecret,
}

/// <summary>One blob wrapped under the domain key, named so a rotation can resume after it.</summary>
/// <param name="Name">Stable, ordinal-sortable name: <c>import_job:HEX</c>, <c>key_version:HEX</c> or <c>setting:NAME</c>.</param>
public sealed record WrappedItem(string Name, WrappedItemKind Kind, byte[] Blob);

/// <summary>A domain-key rotation in progress, as recorded in the database.</summary>
/// <param name="LastItem">The last item re-wrapped (items are processed in ordinal name order); null before the first.</param>
/// <param name="NewKeyMac">
/// HMAC-SHA256 of the new key under the old one (hex), written by the run that chose the new key:
/// a resumed run accepts new shares only if they rebuild a key with this MAC, which nobody
/// without the old domain key can compute — so a record written into the database by hand
/// cannot choose the key either.
/// </param>
public sealed record DomainKeyRotationState(string OldCheckValue, string NewCheckValue, DateTimeOffset Started, string? LastItem, long Rewrapped, string? NewKeyMac = null);

/// <summary>
/// The offline domain-key rotation's view of the store: every wrapped blob (key versions'
/// material, the audit signing and context keys), replaced one per transaction together with a
/// high-water mark, so a rotation stopped anywhere resumes exactly where it stopped.
/// </summary>
/// <remarks>
/// While <see cref="DomainKeyRotationSetting"/> exists, <see cref="DomainKeyGuard"/> refuses to serve.
/// </remarks>
public abstract partial class SqlStore
{
    /// <summary>The setting that records a rotation in progress (JSON).</summary>
    public const string DomainKeyRotationSetting = DomainKeyGuard.RotationSetting;

    private const string AuditSigningKeySetting = "audit.signing-key.v1";
    private const string AuditContextKeySetting = "audit.context-key.v1";

    // How a key version's blob is unwrapped follows from its algorithm's key family.
    private static WrappedItemKind KindOf(KeyAlgorithm algorithm)
    {
        var spec = Enum.IsDefined(algorithm)
            ? KeyAlgorithms.Of(algorithm)
            : throw KmsErrors.Internal($"a key version of algorithm {algorithm} has no known wrapped form; the rotation does not know how to move it");
        return spec.Family switch
        {
            KeyFamily.Aes => WrappedItemKind.Aes256,
            KeyFamily.Hmac => WrappedItemKind.GenericSecret,
            KeyFamily.Rsa => WrappedItemKind.RsaPrivateKey,
            KeyFamily.Ec when spec.Curve == Kms.Core.Ports.EcCurve.P256 => WrappedItemKind.EcP256PrivateKey,
            KeyFamily.Ec => WrappedItemKind.EcP384PrivateKey,
            _ => throw KmsErrors.Internal($"key versions of {spec.Name} cannot be moved by a domain-key rotation on this HSM"),
        };
    }

    /// <summary>The rotation in progress, or null.</summary>
    public async Task<DomainKeyRotationState?> GetDomainKeyRotationAsync(CancellationToken cancellationToken) =>
        await GetSettingAsync(DomainKeyRotationSetting, cancellationToken) is { } json ? ParseRotation(json) : null;

    /// <summary>
    /// Records the start of a rotation from <paramref name="oldCheckValue"/> (must be the pinned
    /// domain key) to <paramref name="newCheckValue"/>, or returns the one already in progress.
    /// </summary>
    /// <param name="replaceUnstarted">Replace a rotation to another key that has moved no blob yet (nothing depends on its key).</param>
    /// <exception cref="Kms.Core.Errors.KmsException">FailedPrecondition: the pin is another key, or another rotation is in progress.</exception>
    /// <param name="newKeyMac">The new key's MAC under the old key (<see cref="DomainKeyRotationState.NewKeyMac"/>), for a new record.</param>
    public Task<DomainKeyRotationState> BeginDomainKeyRotationAsync(string oldCheckValue, string newCheckValue, DateTimeOffset now, CancellationToken cancellationToken, bool replaceUnstarted = false, string? newKeyMac = null) =>
        WriteAsync(async (connection, transaction) =>
        {
            var pinned = await SettingInAsync(connection, transaction, DomainKeyGuard.CheckValueSetting, cancellationToken);
            if (!string.Equals(pinned, oldCheckValue, StringComparison.OrdinalIgnoreCase))
            {
                throw KmsErrors.FailedPrecondition($"this database is pinned to domain key {pinned ?? "(none)"}, not {oldCheckValue}");
            }

            if (await SettingInAsync(connection, transaction, DomainKeyRotationSetting, cancellationToken) is { } existing)
            {
                var state = ParseRotation(existing);
                if (string.Equals(state.NewCheckValue, newCheckValue, StringComparison.OrdinalIgnoreCase))
                {
                    return state;
                }

                if (!replaceUnstarted || state.Rewrapped > 0 || state.LastItem is not null)
                {
                    throw KmsErrors.FailedPrecondition($"a rotation to domain key {state.NewCheckValue} is in progress; resume it with that key's shares");
                }
            }

            var started = new DomainKeyRotationState(oldCheckValue, newCheckValue, now, null, 0, newKeyMac);
            await UpsertSettingAsync(connection, transaction, DomainKeyRotationSetting, RenderRotation(started), cancellationToken);
            return started;
        }, cancellationToken);

    /// <summary>
    /// Every blob under the deployment's domain key not yet re-wrapped by the rotation in progress, in
    /// processing order. Versions of keys with a residency are under their region's domain key and are not moved.
    /// </summary>
    public Task<IReadOnlyList<WrappedItem>> ListWrappedItemsAfterAsync(string? lastItem, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<WrappedItem>>(async connection =>
        {
            var items = new List<WrappedItem>();
            await using (var versions = Command(connection, """
                SELECT v.version_id, v.algorithm, v.material FROM key_versions v
                JOIN keys k ON k.tenant = v.tenant AND k.key_id = v.key_id
                WHERE v.material IS NOT NULL AND k.residency IS NULL
                """))
            {
                await using var reader = await versions.ExecuteReaderAsync(cancellationToken);
                while (await reader.ReadAsync(cancellationToken))
                {
                    var algorithm = (KeyAlgorithm)reader.GetInt64(1);
                    items.Add(new("key_version:" + Convert.ToHexStringLower((byte[])reader.GetValue(0)), KindOf(algorithm), (byte[])reader.GetValue(2)));
                }
            }

            await using (var jobs = Command(connection, "SELECT material_id, material FROM import_jobs WHERE material IS NOT NULL"))
            {
                await using var reader = await jobs.ExecuteReaderAsync(cancellationToken);
                while (await reader.ReadAsync(cancellationToken))
                {
                    items.Add(new("import_job:" + Convert.ToHexStringLower((byte[])reader.GetValue(0)), WrappedItemKind.RsaPrivateKey, (byte[])reader.GetValue(1)));
                }
            }

            if (await SettingAsync(connection, AuditContextKeySetting, cancellationToken) is { } context)
            {
                items.Add(new("setting:" + AuditContextKeySetting, WrappedItemKind.Aes256, Convert.FromBase64String(context)));
            }

            if (await SettingAsync(connection, AuditSigningKeySetting, cancellationToken) is { } signing)
            {
                var wrapped = JsonNode.Parse(signing)?["Wrapped"]?.GetValue<string>()
                    ?? throw KmsErrors.Internal($"setting {AuditSigningKeySetting} has no wrapped key");
                items.Add(new("setting:" + AuditSigningKeySetting, WrappedItemKind.EcP256PrivateKey, Convert.FromBase64String(wrapped)));
            }

            return [.. items.Where(i => lastItem is null || string.CompareOrdinal(i.Name, lastItem) > 0).OrderBy(i => i.Name, StringComparer.Ordinal)];
        }, cancellationToken);

    /// <summary>
    /// In one transaction: replaces <paramref name="item"/>'s blob by <paramref name="rewrapped"/>
    /// (only if it still holds the blob that was read) and moves the high-water mark to it.
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">FailedPrecondition: no rotation in progress, the item is out of order, or its blob changed.</exception>
    public Task<DomainKeyRotationState> ReplaceWrappedItemAsync(WrappedItem item, byte[] rewrapped, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            var state = await SettingInAsync(connection, transaction, DomainKeyRotationSetting, cancellationToken) is { } json
                ? ParseRotation(json)
                : throw KmsErrors.FailedPrecondition("no domain-key rotation is in progress");
            if (state.LastItem is not null && string.CompareOrdinal(item.Name, state.LastItem) <= 0)
            {
                throw KmsErrors.FailedPrecondition($"{item.Name} is at or before the rotation's high-water mark {state.LastItem}");
            }

            int changed;
            if (item.Name.StartsWith("import_job:", StringComparison.Ordinal))
            {
                await using var update = Command(connection, "UPDATE import_jobs SET material = @new WHERE material_id = @id AND material = @old",
                    ("@new", rewrapped), ("@id", Convert.FromHexString(item.Name["import_job:".Length..])), ("@old", item.Blob));
                update.Transaction = transaction;
                changed = await update.ExecuteNonQueryAsync(cancellationToken);
            }
            else if (item.Name.StartsWith("key_version:", StringComparison.Ordinal))
            {
                await using var update = Command(connection, "UPDATE key_versions SET material = @new WHERE version_id = @id AND material = @old",
                    ("@new", rewrapped), ("@id", Convert.FromHexString(item.Name["key_version:".Length..])), ("@old", item.Blob));
                update.Transaction = transaction;
                changed = await update.ExecuteNonQueryAsync(cancellationToken);
            }
            else
            {
                var name = item.Name["setting:".Length..];
                var current = await SettingInAsync(connection, transaction, name, cancellationToken);
                string? value = null;
                if (name == AuditContextKeySetting && current == Convert.ToBase64String(item.Blob))
                {
                    value = Convert.ToBase64String(rewrapped);
                }
                else if (name == AuditSigningKeySetting && current is not null && JsonNode.Parse(current) is JsonObject pair
                    && pair["Wrapped"]?.GetValue<string>() == Convert.ToBase64String(item.Blob))
                {
                    // Only the wrapped private key changes; the public key stays as it was pinned.
                    pair["Wrapped"] = Convert.ToBase64String(rewrapped);
                    value = pair.ToJsonString();
                }

                changed = value is null ? 0 : await UpsertSettingAsync(connection, transaction, name, value, cancellationToken);
            }

            if (changed != 1)
            {
                throw KmsErrors.FailedPrecondition($"{item.Name} changed since it was read; is a server running on this database?");
            }

            var next = state with { LastItem = item.Name, Rewrapped = state.Rewrapped + 1 };
            await UpsertSettingAsync(connection, transaction, DomainKeyRotationSetting, RenderRotation(next), cancellationToken);
            return next;
        }, cancellationToken);

    /// <summary>
    /// Ends the rotation in one transaction: pins the new domain key's check value and removes
    /// the rotation record; then has the backend erase the old blobs from its files (SQLite:
    /// checkpoints and truncates the WAL, so they are in neither the database file nor its <c>-wal</c>).
    /// </summary>
    public async Task CompleteDomainKeyRotationAsync(string newCheckValue, CancellationToken cancellationToken)
    {
        await WriteAsync(async (connection, transaction) =>
        {
            var state = await SettingInAsync(connection, transaction, DomainKeyRotationSetting, cancellationToken) is { } json
                ? ParseRotation(json)
                : throw KmsErrors.FailedPrecondition("no domain-key rotation is in progress");
            if (!string.Equals(state.NewCheckValue, newCheckValue, StringComparison.OrdinalIgnoreCase))
            {
                throw KmsErrors.FailedPrecondition($"the rotation in progress is to {state.NewCheckValue}, not {newCheckValue}");
            }

            await UpsertSettingAsync(connection, transaction, DomainKeyGuard.CheckValueSetting, state.NewCheckValue, cancellationToken);
            await using var delete = Command(connection, "DELETE FROM settings WHERE name = @name", ("@name", DomainKeyRotationSetting));
            delete.Transaction = transaction;
            await delete.ExecuteNonQueryAsync(cancellationToken);
            return 0;
        }, cancellationToken);
        await ReadAsync(connection => EraseFromFilesAsync(connection, "rotation", cancellationToken), cancellationToken);
    }

    private protected static async Task<string?> SettingInAsync(DbConnection connection, DbTransaction transaction, string name, CancellationToken cancellationToken)
    {
        await using var select = Command(connection, "SELECT value FROM settings WHERE name = @name", ("@name", name));
        select.Transaction = transaction;
        return await select.ExecuteScalarAsync(cancellationToken) as string;
    }

    private static async Task<string?> SettingAsync(DbConnection connection, string name, CancellationToken cancellationToken)
    {
        await using var select = Command(connection, "SELECT value FROM settings WHERE name = @name", ("@name", name));
        return await select.ExecuteScalarAsync(cancellationToken) as string;
    }

    private protected static async Task<int> UpsertSettingAsync(DbConnection connection, DbTransaction transaction, string name, string value, CancellationToken cancellationToken)
    {
        await using var upsert = Command(connection, "INSERT INTO settings (name, value) VALUES (@name, @value) ON CONFLICT (name) DO UPDATE SET value = excluded.value", ("@name", name), ("@value", value));
        upsert.Transaction = transaction;
        return await upsert.ExecuteNonQueryAsync(cancellationToken);
    }

    private static string RenderRotation(DomainKeyRotationState state) => new JsonObject
    {
        ["old_check_value"] = state.OldCheckValue,
        ["new_check_value"] = state.NewCheckValue,
        ["started"] = state.Started.ToString("O", CultureInfo.InvariantCulture),
        ["last_item"] = state.LastItem,
        ["rewrapped"] = state.Rewrapped,
        ["new_key_mac"] = state.NewKeyMac,
    }.ToJsonString();

    /// <summary>
    /// Removes the rotation to <paramref name="newCheckValue"/> if it has moved no blob yet (a
    /// first run that failed before its first blob): the database serves again under the old key.
    /// </summary>
    /// <returns>Whether a record was removed.</returns>
    public Task<bool> AbandonUnstartedDomainKeyRotationAsync(string newCheckValue, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            if (await SettingInAsync(connection, transaction, DomainKeyRotationSetting, cancellationToken) is not { } json
                || ParseRotation(json) is not { Rewrapped: 0, LastItem: null } state
                || !string.Equals(state.NewCheckValue, newCheckValue, StringComparison.OrdinalIgnoreCase))
            {
                return false;
            }

            await using var delete = Command(connection, "DELETE FROM settings WHERE name = @name", ("@name", DomainKeyRotationSetting));
            delete.Transaction = transaction;
            return await delete.ExecuteNonQueryAsync(cancellationToken) == 1;
        }, cancellationToken);

    private static DomainKeyRotationState ParseRotation(string json)
    {
        var node = JsonNode.Parse(json) ?? throw new JsonException("empty rotation record");
        return new DomainKeyRotationState(
            node["old_check_value"]!.GetValue<string>(),
            node["new_check_value"]!.GetValue<string>(),
            DateTimeOffset.Parse(node["started"]!.GetValue<string>(), CultureInfo.InvariantCulture),
            node["last_item"]?.GetValue<string>(),
            node["rewrapped"]!.GetValue<long>(),
            node["new_key_mac"]?.GetValue<string>());
    }
}
