using System.Data.Common;
using System.Globalization;
using System.Text.Json;
using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Storage;

/// <summary>The access-control half of the store: tenants, principals, tokens, bindings, key policies, grants.</summary>
public abstract partial class SqlStore
{
    private const string TenantColumns = "id, display_name, state, create_time, delete_time, delete_waiting_ms";
    private const string PrincipalColumns = "name, tenant, display_name, create_time, disabled, delete_time";
    private const string TokenColumns = "id, principal, kind, secret_hash, create_time, expire_time, revoke_time";
    private const string GrantColumns = "grant_id, grantee, operations, context_equals, create_time, revoke_time";

    // The paged lists' statements (internal for the tests of their query plans).
    internal const string ListApiTokensPageSql =
        $"SELECT {TokenColumns} FROM api_tokens WHERE principal = @principal AND create_time <= @after_time AND (create_time < @after_time OR id > @after_id) ORDER BY create_time DESC, id LIMIT @limit";

    internal const string ListRoleBindingsPageSql =
        "SELECT principal, role, tenant, create_time FROM role_bindings WHERE tenant = @tenant AND principal >= @after_principal AND (principal > @after_principal OR role > @after_role) ORDER BY principal, role LIMIT @limit";

    internal const string ListGrantsPageSql =
        $"SELECT {GrantColumns} FROM grants WHERE tenant = @tenant AND key_id = @key_id AND revoke_time IS NULL AND create_time >= @after_time AND (create_time > @after_time OR grant_id > @after_id) ORDER BY create_time, grant_id LIMIT @limit";

    /// <inheritdoc />
    public Task CreateTenantAsync(Tenant tenant, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await InsertAsync(connection, transaction,
                $"INSERT INTO tenants ({TenantColumns}) VALUES (@id, @display_name, @state, @create_time, @delete_time, @delete_waiting_ms)",
                tenant.Id.ResourceName, cancellationToken,
                ("@id", tenant.Id.Value), ("@display_name", tenant.DisplayName), ("@state", (int)tenant.State),
                ("@create_time", tenant.CreateTime.ToUnixTimeMilliseconds()), ("@delete_time", Millis(tenant.DeleteTime)),
                ("@delete_waiting_ms", Millis(tenant.DeleteWaitingPeriod)));
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<Tenant?> GetTenantAsync(TenantId id, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, $"SELECT {TenantColumns} FROM tenants WHERE id = @id", ("@id", id.Value));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken) ? ReadTenant(reader) : null;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<Tenant>> ListTenantsAsync(string? afterId, int limit, CancellationToken cancellationToken) =>
        ReadListAsync($"SELECT {TenantColumns} FROM tenants WHERE id > @after ORDER BY id LIMIT @limit", ReadTenant, cancellationToken,
            ("@after", afterId ?? ""), ("@limit", limit));

    /// <inheritdoc />
    public Task<bool> UpdateTenantAsync(Tenant tenant, CancellationToken cancellationToken) =>
        ExecuteAccessWriteAsync("UPDATE tenants SET state = @state, delete_time = @delete_time, delete_waiting_ms = @delete_waiting_ms WHERE id = @id",
            tenant.Id.ResourceName, cancellationToken,
            ("@state", (int)tenant.State), ("@delete_time", Millis(tenant.DeleteTime)), ("@delete_waiting_ms", Millis(tenant.DeleteWaitingPeriod)), ("@id", tenant.Id.Value));

    /// <inheritdoc />
    public Task CreatePrincipalAsync(Principal principal, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await CreatePrincipalInAsync(connection, transaction, principal, cancellationToken);
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<Principal?> GetPrincipalAsync(PrincipalName name, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadPrincipalInAsync(connection, null, name.ToString(), cancellationToken), cancellationToken);

    /// <inheritdoc />
    /// <remarks>A hot read (kept compiled where the backend can): with no credential cache, every call makes it.</remarks>
    public Task<PrincipalWithTenantState?> GetPrincipalWithTenantStateAsync(PrincipalName name, CancellationToken cancellationToken) =>
        HotReadAsync(
            "SELECT p.name, p.tenant, p.display_name, p.create_time, p.disabled, p.delete_time, t.state FROM principals p LEFT JOIN tenants t ON t.id = p.tenant WHERE p.name = @name",
            reader => new PrincipalWithTenantState(ReadPrincipal(reader), reader.IsDBNull(6) ? null : (TenantState)reader.GetInt32(6)),
            cancellationToken, ("@name", name.ToString()));

    /// <inheritdoc />
    public Task<IReadOnlyList<Principal>> ListPrincipalsAsync(TenantId? tenant, string? afterName, int limit, bool includeDeleted, CancellationToken cancellationToken) =>
        ReadListAsync(
            $"SELECT {PrincipalColumns} FROM principals WHERE tenant IS NOT DISTINCT FROM @tenant AND name > @after AND (@all = 1 OR delete_time IS NULL) ORDER BY name LIMIT @limit",
            ReadPrincipal, cancellationToken,
            ("@tenant", (object?)tenant?.Value ?? NullText), ("@after", afterName ?? ""), ("@all", includeDeleted ? 1 : 0), ("@limit", limit));

    /// <inheritdoc />
    public Task<(Principal Principal, bool Deleted)?> DeletePrincipalAsync(PrincipalName name, DateTimeOffset deleteTime, CancellationToken cancellationToken) =>
        WriteAsync<(Principal Principal, bool Deleted)?>(async (connection, transaction) =>
        {
            var subject = name.ToString();
            var principal = await ReadPrincipalInAsync(connection, transaction, subject, cancellationToken);
            if (principal is null || principal.Deleted)
            {
                return principal is null ? null : (principal, false);
            }

            // Under the write lock, so two deployment admins deleting each other at once cannot
            // both succeed and leave the deployment without one.
            await RefuseLosingTheLastDeploymentAdminAsync(connection, transaction, name, cancellationToken);

            var time = ("@time", (object)deleteTime.ToUnixTimeMilliseconds());
            var who = ("@name", (object)subject);
            // disabled too: a server that knows no delete_time (rolling upgrade) refuses it by that.
            await ExecuteInAsync(connection, transaction, "UPDATE principals SET delete_time = @time, disabled = 1 WHERE name = @name AND delete_time IS NULL",
                cancellationToken, time, who);
            await ExecuteInAsync(connection, transaction, "UPDATE api_tokens SET revoke_time = @time WHERE principal = @name AND revoke_time IS NULL",
                cancellationToken, time, who);
            await ExecuteInAsync(connection, transaction, "DELETE FROM role_bindings WHERE principal = @name", cancellationToken, who);
            await ExecuteInAsync(connection, transaction, "UPDATE grants SET revoke_time = @time WHERE grantee = @name AND revoke_time IS NULL",
                cancellationToken, time, who);
            // Other nodes forget the callers they remember (its tokens, its certificate).
            await RecordChangeAsync(connection, transaction, StoreChangeKind.Access, subject, cancellationToken);
            return (principal with { Disabled = true, DeleteTime = deleteTime }, true);
        }, cancellationToken, changed: result => result is { Deleted: true });

    /// <inheritdoc />
    public Task CreateApiTokenAsync(ApiToken token, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await CreateApiTokenInAsync(connection, transaction, token, cancellationToken);
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<ApiToken?> GetApiTokenAsync(string id, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, $"SELECT {TokenColumns} FROM api_tokens WHERE id = @id", ("@id", id));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken) ? ReadToken(reader) : null;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<ApiToken>> ListApiTokensAsync(PrincipalName principal, CancellationToken cancellationToken) =>
        ReadListAsync($"SELECT {TokenColumns} FROM api_tokens WHERE principal = @principal ORDER BY create_time DESC, id", ReadToken, cancellationToken,
            ("@principal", principal.ToString()));

    /// <inheritdoc />
    /// <remarks>
    /// The bound on create_time comes first and alone, so that it is a range of the index
    /// (principal, create_time DESC, id) rather than a filter: a page is read from where the last
    /// ended, however many tokens (revoked ones pile up) come before it.
    /// </remarks>
    public Task<IReadOnlyList<ApiToken>> ListApiTokensAsync(PrincipalName principal, (DateTimeOffset CreateTime, string Id)? after, int limit, CancellationToken cancellationToken) =>
        ReadListAsync(
            ListApiTokensPageSql,
            ReadToken, cancellationToken,
            ("@principal", principal.ToString()), ("@after_time", after?.CreateTime.ToUnixTimeMilliseconds() ?? long.MaxValue), ("@after_id", after?.Id ?? ""), ("@limit", limit));

    /// <inheritdoc />
    public async Task<bool> RevokeApiTokenAsync(string id, DateTimeOffset revokeTime, CancellationToken cancellationToken) =>
        await ExecuteAccessWriteAsync("UPDATE api_tokens SET revoke_time = coalesce(revoke_time, @time) WHERE id = @id", $"apiTokens/{id}", cancellationToken,
            ("@time", revokeTime.ToUnixTimeMilliseconds()), ("@id", id));

    /// <inheritdoc />
    public Task<bool> ConsumeApiTokenAsync(string id, DateTimeOffset revokeTime, CancellationToken cancellationToken) =>
        ExecuteAccessWriteAsync(ConsumeTokenSql, $"apiTokens/{id}", cancellationToken,
            ("@time", revokeTime.ToUnixTimeMilliseconds()), ("@id", id));

    /// <inheritdoc />
    public Task<bool> RegisterBootstrapAdminAsync(BootstrapRegistration registration, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // The credential first: one already used writes nothing. Whatever fails after it rolls
            // its use back with the rest (and the request's audit event, which rides on this write).
            if (!await ExecuteInAsync(connection, transaction, ConsumeTokenSql, cancellationToken,
                ("@time", registration.Time.ToUnixTimeMilliseconds()), ("@id", registration.CredentialId)))
            {
                return false;
            }

            await RecordChangeAsync(connection, transaction, StoreChangeKind.Access, $"apiTokens/{registration.CredentialId}", cancellationToken);
            if (registration.NewPrincipal is { } principal)
            {
                await CreatePrincipalInAsync(connection, transaction, principal, cancellationToken);
            }

            await SetRoleBindingInAsync(connection, transaction, registration.Binding, cancellationToken);
            if (registration.SessionToken is { } session)
            {
                await CreateApiTokenInAsync(connection, transaction, session, cancellationToken);
            }

            return true;
        }, cancellationToken, changed: registered => registered);

    /// <inheritdoc />
    public Task SetRoleBindingAsync(RoleBinding binding, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await SetRoleBindingInAsync(connection, transaction, binding, cancellationToken);
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> DeleteRoleBindingAsync(PrincipalName principal, Role role, TenantId? tenant, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            if (role == Role.DeploymentAdmin && tenant is null)
            {
                await RefuseLosingTheLastDeploymentAdminAsync(connection, transaction, principal, cancellationToken);
            }

            if (!await ExecuteInAsync(connection, transaction, "DELETE FROM role_bindings WHERE principal = @principal AND role = @role AND tenant = @tenant", cancellationToken,
                ("@principal", principal.ToString()), ("@role", (int)role), ("@tenant", tenant?.Value ?? "")))
            {
                return false;
            }

            await RecordChangeAsync(connection, transaction, StoreChangeKind.Access, principal.ToString(), cancellationToken);
            return true;
        }, cancellationToken, changed: deleted => deleted);

    /// <inheritdoc />
    public Task<IReadOnlyList<RoleBinding>> GetRoleBindingsAsync(PrincipalName principal, CancellationToken cancellationToken) =>
        ReadListAsync("SELECT principal, role, tenant, create_time FROM role_bindings WHERE principal = @principal ORDER BY role, tenant", ReadBinding, cancellationToken,
            ("@principal", principal.ToString()));

    /// <inheritdoc />
    public Task<IReadOnlyList<RoleBinding>> ListRoleBindingsAsync(TenantId? tenant, CancellationToken cancellationToken) =>
        ReadListAsync("SELECT principal, role, tenant, create_time FROM role_bindings WHERE tenant = @tenant ORDER BY principal, role", ReadBinding, cancellationToken,
            ("@tenant", tenant?.Value ?? ""));

    /// <inheritdoc />
    /// <remarks>Read in the order of the index (tenant, principal, role), from where the last page ended.</remarks>
    public Task<IReadOnlyList<RoleBinding>> ListRoleBindingsAsync(TenantId? tenant, (string Principal, Role Role)? after, int limit, CancellationToken cancellationToken) =>
        ReadListAsync(
            ListRoleBindingsPageSql,
            ReadBinding, cancellationToken,
            ("@tenant", tenant?.Value ?? ""), ("@after_principal", after?.Principal ?? ""), ("@after_role", after is { } last ? (int)last.Role : -1), ("@limit", limit));

    /// <inheritdoc />
    public Task SetKeyPolicyAsync(KeyPolicy policy, DateTimeOffset time, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            var key = policy.Key;
            await EnsureKeyExistsAsync(connection, transaction, key, cancellationToken);
            await ExecuteInAsync(connection, transaction, "DELETE FROM key_policies WHERE tenant = @tenant AND key_id = @key_id", cancellationToken,
                ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId));
            foreach (var (principal, operations) in policy.Entries)
            {
                await ExecuteInAsync(connection, transaction,
                    "INSERT INTO key_policies (tenant, key_id, principal, operations) VALUES (@tenant, @key_id, @principal, @operations)", cancellationToken,
                    ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId), ("@principal", principal), ("@operations", (int)operations));
            }

            await ExecuteInAsync(connection, transaction, "UPDATE keys SET restricted = @restricted WHERE tenant = @tenant AND key_id = @key_id", cancellationToken,
                ("@restricted", policy.Restricts ? 1 : 0), ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId));
            if (!policy.Restricts)
            {
                await ExecuteInAsync(connection, transaction, "UPDATE grants SET revoke_time = @time WHERE tenant = @tenant AND key_id = @key_id AND revoke_time IS NULL", cancellationToken,
                    ("@time", time.ToUnixTimeMilliseconds()), ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId));
            }

            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<KeyPolicy> GetKeyPolicyAsync(KeyName key, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, "SELECT principal, operations FROM key_policies WHERE tenant = @tenant AND key_id = @key_id",
                ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var entries = new Dictionary<string, KeyOperations>(StringComparer.Ordinal);
            while (await reader.ReadAsync(cancellationToken))
            {
                entries[reader.GetString(0)] = (KeyOperations)reader.GetInt32(1);
            }

            return new KeyPolicy(key, entries);
        }, cancellationToken);

    /// <inheritdoc />
    public Task CreateGrantAsync(Grant grant, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // Checked again under the write lock: a policy lifted (which revokes the key's grants)
            // or a tenant offboarded since the caller's checks must not get a grant that lies
            // dormant until the next policy revives it; a key whose deletion was scheduled since
            // gets none either.
            await using (var check = Command(connection,
                "SELECT state FROM keys WHERE tenant = @tenant AND key_id = @key_id AND restricted = 1 AND NOT EXISTS (SELECT 1 FROM tenants WHERE id = @tenant AND state <> @active)",
                ("@tenant", grant.Key.Tenant.Value), ("@key_id", grant.Key.KeyId), ("@active", (int)TenantState.Active)))
            {
                check.Transaction = transaction;
                var state = await check.ExecuteScalarAsync(cancellationToken)
                    ?? throw KmsErrors.FailedPrecondition($"key {grant.Key} has no policy any more, or its tenant is being deleted; no grant was made");
                Kms.Core.Services.KeyTransitions.EnsureGrantable(grant.Key, (Kms.Core.Keys.KeyState)Convert.ToInt32(state, CultureInfo.InvariantCulture));
            }

            await RefuseDeletedPrincipalAsync(connection, transaction, grant.Grantee, cancellationToken);

            await InsertAsync(connection, transaction,
                $"INSERT INTO grants (tenant, key_id, {GrantColumns}) VALUES (@tenant, @key_id, @grant_id, @grantee, @operations, @context_equals, @create_time, @revoke_time)",
                grant.Name, cancellationToken,
                ("@tenant", grant.Key.Tenant.Value), ("@key_id", grant.Key.KeyId), ("@grant_id", grant.Id), ("@grantee", grant.Grantee.ToString()),
                ("@operations", (int)grant.Operations), ("@context_equals", JsonSerializer.Serialize(grant.ContextEquals)),
                ("@create_time", grant.CreateTime.ToUnixTimeMilliseconds()), ("@revoke_time", Millis(grant.RevokeTime)));
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<Grant>> ListGrantsAsync(KeyName key, bool includeRevoked, CancellationToken cancellationToken) =>
        ReadListAsync(
            $"SELECT {GrantColumns} FROM grants WHERE tenant = @tenant AND key_id = @key_id AND (@all = 1 OR revoke_time IS NULL) ORDER BY create_time, grant_id",
            reader => ReadGrant(reader, key), cancellationToken,
            ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId), ("@all", includeRevoked ? 1 : 0));

    /// <inheritdoc />
    public Task<IReadOnlyList<Grant>> ListGrantsAsync(KeyName key, (DateTimeOffset CreateTime, string Id)? after, int limit, CancellationToken cancellationToken) =>
        ReadListAsync(
            ListGrantsPageSql,
            reader => ReadGrant(reader, key), cancellationToken,
            ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId), ("@after_time", after?.CreateTime.ToUnixTimeMilliseconds() ?? long.MinValue), ("@after_id", after?.Id ?? ""), ("@limit", limit));

    /// <inheritdoc />
    public Task<bool> RevokeGrantAsync(KeyName key, string grantId, DateTimeOffset revokeTime, CancellationToken cancellationToken) =>
        ExecuteWriteAsync("UPDATE grants SET revoke_time = @time WHERE tenant = @tenant AND key_id = @key_id AND grant_id = @grant_id AND revoke_time IS NULL",
            cancellationToken, ("@time", revokeTime.ToUnixTimeMilliseconds()), ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId), ("@grant_id", grantId));

    private Task<IReadOnlyList<T>> ReadListAsync<T>(string sql, Func<DbDataReader, T> read, CancellationToken cancellationToken, params (string Name, object Value)[] parameters) =>
        ReadAsync<IReadOnlyList<T>>(async connection =>
        {
            await using var command = Command(connection, sql, parameters);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var rows = new List<T>();
            while (await reader.ReadAsync(cancellationToken))
            {
                rows.Add(read(reader));
            }

            return rows;
        }, cancellationToken);

    private Task<bool> ExecuteWriteAsync(string sql, CancellationToken cancellationToken, params (string Name, object Value)[] parameters) =>
        WriteAsync((connection, transaction) => ExecuteInAsync(connection, transaction, sql, cancellationToken, parameters), cancellationToken);

    // One statement revokes the holder's every active token: of two one-time credentials used at
    // once, the second finds its own revoked (PostgreSQL re-checks revoke_time on the rows the
    // first locked; SQLite has one writer) and wins nothing.
    private const string ConsumeTokenSql = """
        UPDATE api_tokens SET revoke_time = @time
        WHERE revoke_time IS NULL AND principal = (SELECT principal FROM api_tokens WHERE id = @id AND revoke_time IS NULL)
        """;

    private static async Task CreatePrincipalInAsync(DbConnection connection, DbTransaction transaction, Principal principal, CancellationToken cancellationToken)
    {
        if (principal.Tenant is { } tenant)
        {
            await RefuseInDeletingTenantAsync(connection, transaction, "@tenant", ("@tenant", tenant.Value), cancellationToken);
        }

        await InsertAsync(connection, transaction,
            $"INSERT INTO principals ({PrincipalColumns}) VALUES (@name, @tenant, @display_name, @create_time, @disabled, @delete_time)",
            principal.Name.ToString(), cancellationToken,
            ("@name", principal.Name.ToString()), ("@tenant", (object?)principal.Tenant?.Value ?? DBNull.Value), ("@display_name", principal.DisplayName),
            ("@create_time", principal.CreateTime.ToUnixTimeMilliseconds()), ("@disabled", principal.Disabled || principal.Deleted ? 1 : 0),
            ("@delete_time", Millis(principal.DeleteTime)));
    }

    private static async Task CreateApiTokenInAsync(DbConnection connection, DbTransaction transaction, ApiToken token, CancellationToken cancellationToken)
    {
        await RefuseInDeletingTenantAsync(connection, transaction, "(SELECT tenant FROM principals WHERE name = @principal)",
            ("@principal", token.Principal.ToString()), cancellationToken);
        await RefuseDeletedPrincipalAsync(connection, transaction, token.Principal, cancellationToken);
        await InsertAsync(connection, transaction,
            $"INSERT INTO api_tokens ({TokenColumns}) VALUES (@id, @principal, @kind, @secret_hash, @create_time, @expire_time, @revoke_time)",
            $"apiTokens/{token.Id}", cancellationToken,
            ("@id", token.Id), ("@principal", token.Principal.ToString()), ("@kind", (int)token.Kind), ("@secret_hash", token.SecretHash),
            ("@create_time", token.CreateTime.ToUnixTimeMilliseconds()), ("@expire_time", token.ExpireTime.ToUnixTimeMilliseconds()),
            ("@revoke_time", Millis(token.RevokeTime)));
    }

    private static async Task SetRoleBindingInAsync(DbConnection connection, DbTransaction transaction, RoleBinding binding, CancellationToken cancellationToken)
    {
        if (binding.Tenant is { } tenant)
        {
            await RefuseInDeletingTenantAsync(connection, transaction, "@tenant", ("@tenant", tenant.Value), cancellationToken);
        }

        await RefuseDeletedPrincipalAsync(connection, transaction, binding.Principal, cancellationToken);
        if (await ExecuteInAsync(connection, transaction,
            "INSERT INTO role_bindings (principal, role, tenant, create_time) VALUES (@principal, @role, @tenant, @create_time) ON CONFLICT DO NOTHING",
            cancellationToken,
            ("@principal", binding.Principal.ToString()), ("@role", (int)binding.Role), ("@tenant", binding.Tenant?.Value ?? ""),
            ("@create_time", binding.CreateTime.ToUnixTimeMilliseconds())))
        {
            await RecordChangeAsync(connection, transaction, StoreChangeKind.Access, binding.Principal.ToString(), cancellationToken);
        }
    }

    /// <summary>
    /// Refuses, under the write lock, a write into a tenant whose deletion has committed
    /// (<paramref name="tenantExpression"/>: the SQL naming the tenant). The services check the
    /// tenant before they write; a DeleteTenant committing in between would otherwise still get a
    /// principal, token or role binding in the tenant it offboards, which a restore brings back.
    /// </summary>
    private static async Task RefuseInDeletingTenantAsync(
        DbConnection connection, DbTransaction transaction, string tenantExpression, (string Name, object Value) parameter, CancellationToken cancellationToken)
    {
        await using var check = Command(connection, $"SELECT id FROM tenants WHERE id = {tenantExpression} AND state <> @active",
            parameter, ("@active", (int)TenantState.Active));
        check.Transaction = transaction;
        if (await check.ExecuteScalarAsync(cancellationToken) is string id)
        {
            throw KmsErrors.TenantDeleting(TenantId.Parse(id).ResourceName);
        }
    }

    /// <summary>
    /// Refuses, under the write lock, a write that takes <paramref name="principal"/>'s
    /// deployment-admin binding away when no other enabled principal holds one: the deployment
    /// would be left with nobody to manage tenants, principals and role bindings (a bootstrap
    /// credential is issued only at a start, and only to whoever can read the node's data
    /// directory). A binding of a missing or disabled principal counts for nothing, as it
    /// authenticates nobody, and removing one is never refused.
    /// </summary>
    /// <remarks>
    /// Inside the removal's own transaction: two admins removing each other at once are two
    /// writes, which the write lock puts one after the other (SQLite: one writer; PostgreSQL: the
    /// advisory lock every write takes first), and the second counts after the first committed.
    /// On PostgreSQL that needs READ COMMITTED, whose every statement sees what committed before
    /// it: under REPEATABLE READ the snapshot would be the lock statement's, taken before it
    /// waited, and both removals would count the other admin still there.
    /// </remarks>
    private static async Task RefuseLosingTheLastDeploymentAdminAsync(DbConnection connection, DbTransaction transaction, PrincipalName principal, CancellationToken cancellationToken)
    {
        await using var count = Command(connection,
            "SELECT count(*), coalesce(sum(CASE WHEN b.principal = @principal THEN 1 ELSE 0 END), 0) "
            + "FROM role_bindings b JOIN principals p ON p.name = b.principal "
            + "WHERE b.role = @role AND b.tenant = '' AND p.disabled = 0",
            ("@principal", principal.ToString()), ("@role", (int)Role.DeploymentAdmin));
        count.Transaction = transaction;
        long all, own;
        await using (var reader = await count.ExecuteReaderAsync(cancellationToken))
        {
            await reader.ReadAsync(cancellationToken);
            (all, own) = (reader.GetInt64(0), reader.GetInt64(1));
        }

        if (own > 0 && all == own)
        {
            throw KmsErrors.LastDeploymentAdmin(principal.ToString());
        }
    }

    /// <summary>
    /// Refuses, under the write lock, a new token, role binding or grant for a deleted principal:
    /// a caller that checked the principal before DeletePrincipal committed would otherwise leave
    /// one behind it (never usable, since a deleted principal does not authenticate, but listed).
    /// </summary>
    private static async Task RefuseDeletedPrincipalAsync(DbConnection connection, DbTransaction transaction, PrincipalName name, CancellationToken cancellationToken)
    {
        if (await CountInAsync(connection, transaction, "SELECT count(*) FROM principals WHERE name = @name AND delete_time IS NOT NULL", cancellationToken,
            ("@name", name.ToString())) > 0)
        {
            throw KmsErrors.PrincipalDeleted(name.ToString());
        }
    }

    private static async Task<long> CountInAsync(DbConnection connection, DbTransaction transaction, string sql, CancellationToken cancellationToken, params (string Name, object Value)[] parameters)
    {
        await using var count = Command(connection, sql, parameters);
        count.Transaction = transaction;
        return Convert.ToInt64(await count.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
    }

    private static async Task<Principal?> ReadPrincipalInAsync(DbConnection connection, DbTransaction? transaction, string name, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, $"SELECT {PrincipalColumns} FROM principals WHERE name = @name", ("@name", name));
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadPrincipal(reader) : null;
    }

    private static async Task<bool> ExecuteInAsync(DbConnection connection, DbTransaction transaction, string sql, CancellationToken cancellationToken, params (string Name, object Value)[] parameters)
    {
        await using var command = Command(connection, sql, parameters);
        command.Transaction = transaction;
        return await command.ExecuteNonQueryAsync(cancellationToken) > 0;
    }

    private static Tenant ReadTenant(DbDataReader reader) =>
        new(TenantId.Parse(reader.GetString(0)), reader.GetString(1), (TenantState)reader.GetInt32(2), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3)))
        {
            DeleteTime = ReadTime(reader, 4),
            DeleteWaitingPeriod = reader.IsDBNull(5) ? null : TimeSpan.FromMilliseconds(reader.GetInt64(5)),
        };

    private static Principal ReadPrincipal(DbDataReader reader) =>
        new(PrincipalName.ParseExisting(reader.GetString(0), "name"), reader.IsDBNull(1) ? null : TenantId.Parse(reader.GetString(1)), reader.GetString(2),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3)))
        {
            Disabled = reader.GetInt64(4) != 0,
            DeleteTime = ReadTime(reader, 5),
        };

    private static ApiToken ReadToken(DbDataReader reader) =>
        new(reader.GetString(0), PrincipalName.ParseExisting(reader.GetString(1), "principal"), (ApiTokenKind)reader.GetInt32(2), (byte[])reader[3],
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(5)))
        {
            RevokeTime = ReadTime(reader, 6),
        };

    private static RoleBinding ReadBinding(DbDataReader reader) =>
        new(PrincipalName.ParseExisting(reader.GetString(0), "principal"), (Role)reader.GetInt32(1),
            reader.GetString(2) is { Length: > 0 } tenant ? TenantId.Parse(tenant) : null, DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3)));

    private static Grant ReadGrant(DbDataReader reader, KeyName key) =>
        new(reader.GetString(0), key, PrincipalName.ParseExisting(reader.GetString(1), "grantee"), (KeyOperations)reader.GetInt32(2),
            JsonSerializer.Deserialize<Dictionary<string, string>>(reader.GetString(3)) ?? [], DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4)))
        {
            RevokeTime = ReadTime(reader, 5),
        };
}
