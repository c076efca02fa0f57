namespace Kms.Storage.Postgres;

/// <summary>
/// The PostgreSQL schema's forward-only migrations (<see cref="SchemaMigration"/>), numbered on
/// their own: migration 1 is the SQLite schema as of its migration 7, in PostgreSQL's types
/// (<c>BIGINT</c> for SQLite's 64-bit <c>INTEGER</c>, <c>BYTEA</c> for <c>BLOB</c>), so one set of
/// statements serves both. Times are Unix milliseconds, UTC.
/// </summary>
internal static class PostgresSchema
{
    public static IReadOnlyList<SchemaMigration> Migrations { get; } =
    [
        new(1, """
            CREATE TABLE settings (
                name  TEXT PRIMARY KEY,
                value TEXT NOT NULL
            );

            CREATE TABLE keys (
                tenant                 TEXT   NOT NULL,
                key_id                 TEXT   NOT NULL,
                purpose                BIGINT NOT NULL,
                state                  BIGINT NOT NULL,
                primary_version        BIGINT NOT NULL,
                create_time            BIGINT NOT NULL,
                labels                 TEXT   NOT NULL, -- JSON object, keys sorted
                rotation_period_ms     BIGINT,
                next_rotation_time     BIGINT,
                min_decryption_version BIGINT NOT NULL DEFAULT 1,
                destroy_time           BIGINT,
                restricted             BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (tenant, key_id)
            );
            CREATE INDEX keys_due_rotation ON keys (next_rotation_time) WHERE next_rotation_time IS NOT NULL;
            CREATE INDEX keys_due_deletion ON keys (destroy_time) WHERE destroy_time IS NOT NULL;

            CREATE TABLE key_versions (
                tenant             TEXT   NOT NULL,
                key_id             TEXT   NOT NULL,
                version            BIGINT NOT NULL,
                version_id         BYTEA  NOT NULL UNIQUE, -- 16 random bytes, written into every ciphertext
                algorithm          BIGINT NOT NULL,
                state              BIGINT NOT NULL,
                material           BYTEA,                  -- wrapped under the domain key; NULL once destroyed
                create_time        BIGINT NOT NULL,
                destroy_time       BIGINT,
                destroy_event_time BIGINT,
                encrypt_count      BIGINT NOT NULL DEFAULT 0,  -- reserved: durable upper bound
                decrypt_count      BIGINT NOT NULL DEFAULT 0,
                last_encrypt_time  BIGINT,
                last_decrypt_time  BIGINT,
                origin             BIGINT NOT NULL DEFAULT 1,  -- 1 GENERATED in the HSM, 2 IMPORTED
                import_job         TEXT,
                public_key         BYTEA,
                create_request     TEXT,
                PRIMARY KEY (tenant, key_id, version),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            );
            CREATE INDEX key_versions_due_destruction ON key_versions (destroy_time) WHERE destroy_time IS NOT NULL AND material IS NOT NULL;

            CREATE TABLE request_ids (
                tenant      TEXT   NOT NULL,
                request_id  TEXT   NOT NULL,
                operation   TEXT   NOT NULL,
                fingerprint BYTEA  NOT NULL,
                resource    TEXT   NOT NULL,
                create_time BIGINT NOT NULL,
                PRIMARY KEY (tenant, request_id)
            );

            CREATE TABLE aliases (
                tenant      TEXT   NOT NULL,
                alias_id    TEXT   NOT NULL,
                key_id      TEXT   NOT NULL,
                create_time BIGINT NOT NULL,
                update_time BIGINT NOT NULL,
                PRIMARY KEY (tenant, alias_id),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            );

            CREATE TABLE tenants (
                id           TEXT   PRIMARY KEY,
                display_name TEXT   NOT NULL,
                state        BIGINT NOT NULL,
                create_time  BIGINT NOT NULL,
                delete_time  BIGINT
            );

            CREATE TABLE principals (
                name         TEXT   PRIMARY KEY,
                tenant       TEXT,
                display_name TEXT   NOT NULL,
                create_time  BIGINT NOT NULL,
                disabled     BIGINT NOT NULL DEFAULT 0
            );
            CREATE INDEX principals_by_tenant ON principals (tenant, name);

            CREATE TABLE api_tokens (
                id          TEXT   PRIMARY KEY,
                principal   TEXT   NOT NULL,
                kind        BIGINT NOT NULL,
                secret_hash BYTEA  NOT NULL,  -- SHA-256 of the secret; the secret is never stored
                create_time BIGINT NOT NULL,
                expire_time BIGINT NOT NULL,
                revoke_time BIGINT
            );
            CREATE INDEX api_tokens_by_principal ON api_tokens (principal);

            CREATE TABLE role_bindings (
                principal   TEXT   NOT NULL,
                role        BIGINT NOT NULL,
                tenant      TEXT   NOT NULL,  -- '': deployment-wide
                create_time BIGINT NOT NULL,
                PRIMARY KEY (principal, role, tenant)
            );
            CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant);

            CREATE TABLE key_policies (
                tenant     TEXT   NOT NULL,
                key_id     TEXT   NOT NULL,
                principal  TEXT   NOT NULL,
                operations BIGINT NOT NULL,
                PRIMARY KEY (tenant, key_id, principal),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            );

            CREATE TABLE grants (
                tenant         TEXT   NOT NULL,
                key_id         TEXT   NOT NULL,
                grant_id       TEXT   NOT NULL,
                grantee        TEXT   NOT NULL,
                operations     BIGINT NOT NULL,
                context_equals TEXT   NOT NULL,
                create_time    BIGINT NOT NULL,
                revoke_time    BIGINT,
                PRIMARY KEY (tenant, key_id, grant_id),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            );

            -- The audit chain (docs/audit-format.md): one gap-free chain for every node, seq
            -- assigned under the store's write lock.
            CREATE TABLE audit_events (
                seq       BIGINT PRIMARY KEY,
                time      BIGINT NOT NULL,
                principal TEXT   NOT NULL,
                tenant    TEXT,
                operation TEXT   NOT NULL,
                resource  TEXT,
                outcome   TEXT   NOT NULL,
                body      TEXT   NOT NULL,
                hash      TEXT   NOT NULL
            );
            CREATE INDEX audit_events_by_principal ON audit_events (principal, seq);

            CREATE TABLE audit_checkpoints (
                seq       BIGINT PRIMARY KEY,
                head      TEXT   NOT NULL,
                time      BIGINT NOT NULL,
                key       TEXT   NOT NULL,
                body      TEXT   NOT NULL,
                signature BYTEA  NOT NULL
            );

            CREATE TABLE officer_sets (
                sequence       BIGINT PRIMARY KEY,
                previous_hash  TEXT   NOT NULL,
                threshold      BIGINT NOT NULL,
                officers       TEXT   NOT NULL,
                hash           TEXT   NOT NULL,
                change_request TEXT
            );

            CREATE TABLE quorum_requests (
                id                   TEXT   PRIMARY KEY,
                tenant               TEXT,
                operation            TEXT   NOT NULL,
                parameters           TEXT   NOT NULL,
                domain_kcv           TEXT   NOT NULL,
                officer_set_sequence BIGINT NOT NULL,
                officer_set_hash     TEXT   NOT NULL,
                requested_by         TEXT   NOT NULL,
                create_time          BIGINT NOT NULL,
                expire_time          BIGINT NOT NULL,
                state                BIGINT NOT NULL,
                execute_time         BIGINT,
                proposed_officers    TEXT
            );
            CREATE INDEX quorum_requests_by_tenant ON quorum_requests (tenant, id);

            CREATE TABLE quorum_approvals (
                request_id          TEXT   NOT NULL REFERENCES quorum_requests (id),
                officer_fingerprint TEXT   NOT NULL,
                signature           BYTEA  NOT NULL,
                approve_time        BIGINT NOT NULL,
                position            BIGINT NOT NULL,
                PRIMARY KEY (request_id, officer_fingerprint)
            );

            CREATE TABLE import_jobs (
                tenant         TEXT   NOT NULL,
                job_id         TEXT   NOT NULL,
                method         BIGINT NOT NULL,
                material_id    BYTEA  NOT NULL UNIQUE,
                public_key     BYTEA  NOT NULL,
                material       BYTEA,
                create_time    BIGINT NOT NULL,
                expire_time    BIGINT NOT NULL,
                create_request TEXT,
                PRIMARY KEY (tenant, job_id)
            );
            """),
        new(2, """
            -- The change feed (IChangeFeed), as SQLite's migration 8; additive, so nodes of schema 1
            -- keep serving beside nodes that have it during a rolling upgrade.
            CREATE TABLE changes (
                seq     BIGINT PRIMARY KEY,
                kind    BIGINT NOT NULL,  -- 1 access, 2 material erased
                subject TEXT   NOT NULL,
                time    BIGINT NOT NULL
            );
            """, CompatibleFrom: 1),
        new(3, """
            -- Data residency, as SQLite's migration 9 (and, like it, refusing older servers).
            ALTER TABLE keys ADD COLUMN residency TEXT;
            """),
        new(4, """
            -- Keys that take imported material, as SQLite's migration 10 (refusing older servers too).
            ALTER TABLE keys ADD COLUMN allow_import BIGINT NOT NULL DEFAULT 0;
            UPDATE keys SET allow_import = 1
            WHERE EXISTS (SELECT 1 FROM key_versions v WHERE v.tenant = keys.tenant AND v.key_id = keys.key_id AND v.origin = 2);
            """),
        new(5, """
            -- DeleteTenant's waiting period, as SQLite's migration 11 (additive, like it).
            ALTER TABLE tenants ADD COLUMN delete_waiting_ms BIGINT;
            """, CompatibleFrom: 4),
        new(6, """
            -- DeletePrincipal's tombstone, as SQLite's migration 12 (additive, like it).
            ALTER TABLE principals ADD COLUMN delete_time BIGINT;
            """, CompatibleFrom: 4),
        new(7, """
            -- Where an executed quorum request's output is, as SQLite's migration 13 (additive, like it).
            ALTER TABLE quorum_requests ADD COLUMN executing_node         TEXT;
            ALTER TABLE quorum_requests ADD COLUMN credential_path        TEXT;
            ALTER TABLE quorum_requests ADD COLUMN credential_revoke_time BIGINT;
            """, CompatibleFrom: 4),
        new(8, """
            -- When the officer signed an approval, as SQLite's migration 14 (additive, like it).
            ALTER TABLE quorum_approvals ADD COLUMN sign_time BIGINT;
            """, CompatibleFrom: 4),
        new(9, """
            -- An import job imports a material once, as SQLite's migration 15 (additive like it: an
            -- older server records no fingerprint, which the index lets repeat).
            ALTER TABLE key_versions ADD COLUMN import_fingerprint TEXT;
            CREATE UNIQUE INDEX key_versions_import_material ON key_versions (import_job, import_fingerprint);
            """, CompatibleFrom: 4),
        new(10, """
            -- The key versions an audit event lists besides its resource, as SQLite's migration 16
            -- (additive, like it: an older server writes NULL, as for every event before).
            ALTER TABLE audit_events ADD COLUMN key_versions TEXT;
            """, CompatibleFrom: 4),
        new(11, """
            -- Usage flushes applied once, as SQLite's migration 17 (additive, like it): here a COMMIT
            -- whose answer is lost may have committed, and its flush is sent again.
            CREATE TABLE usage_flushes (
                node     BYTEA  PRIMARY KEY,
                sequence BIGINT NOT NULL,
                time     BIGINT NOT NULL
            );
            """, CompatibleFrom: 4),
        new(12, """
            -- The time summary of the audit log, as SQLite's migration 18 (additive, like it).
            CREATE TABLE audit_blocks (
                first_seq BIGINT PRIMARY KEY,
                last_seq  BIGINT NOT NULL,
                min_time  BIGINT NOT NULL,
                max_time  BIGINT NOT NULL
            );
            """, CompatibleFrom: 4),
        new(13, """
            -- The back-off of a due destruction that failed, as SQLite's migration 19 (additive, like it).
            ALTER TABLE keys ADD COLUMN destroy_failures        BIGINT;
            ALTER TABLE keys ADD COLUMN destroy_failing_since   BIGINT;
            ALTER TABLE keys ADD COLUMN destroy_retry_time      BIGINT;
            ALTER TABLE key_versions ADD COLUMN destroy_failures      BIGINT;
            ALTER TABLE key_versions ADD COLUMN destroy_failing_since BIGINT;
            ALTER TABLE key_versions ADD COLUMN destroy_retry_time    BIGINT;
            CREATE INDEX keys_destroy_failing ON keys (tenant, key_id) WHERE destroy_failures IS NOT NULL;
            CREATE INDEX key_versions_destroy_failing ON key_versions (tenant, key_id, version) WHERE destroy_failures IS NOT NULL;
            """, CompatibleFrom: 4),
        new(14, """
            -- The indexes of the paged ListApiTokens, ListRoleBindings and ListGrants, as SQLite's
            -- migration 20 (additive, like it).
            DROP INDEX api_tokens_by_principal;
            CREATE INDEX api_tokens_by_principal ON api_tokens (principal, create_time DESC, id);
            DROP INDEX role_bindings_by_tenant;
            CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant, principal, role);
            CREATE INDEX grants_active ON grants (tenant, key_id, create_time, grant_id) WHERE revoke_time IS NULL;
            """, CompatibleFrom: 4),
    ];
}
