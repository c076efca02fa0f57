namespace Kms.Storage.Sqlite;

/// <summary>
/// The SQLite schema's forward-only migrations (<see cref="SchemaMigration"/>). A database
/// whose schema is newer than this code is refused unless its migrations declared this code
/// compatible; it is never downgraded.
/// </summary>
internal static class SqliteSchema
{
    public static IReadOnlyList<SchemaMigration> Migrations { get; } =
    [
        new(1, """
            CREATE TABLE settings (
                name  TEXT PRIMARY KEY,
                value TEXT NOT NULL
            ) STRICT;

            CREATE TABLE keys (
                tenant          TEXT    NOT NULL,
                key_id          TEXT    NOT NULL,
                purpose         INTEGER NOT NULL,
                state           INTEGER NOT NULL,
                primary_version INTEGER NOT NULL,
                create_time     INTEGER NOT NULL, -- Unix milliseconds, UTC
                labels          TEXT    NOT NULL, -- JSON object, keys sorted
                PRIMARY KEY (tenant, key_id)
            ) STRICT;

            CREATE TABLE key_versions (
                tenant      TEXT    NOT NULL,
                key_id      TEXT    NOT NULL,
                version     INTEGER NOT NULL,
                version_id  BLOB    NOT NULL UNIQUE, -- 16 random bytes, written into every ciphertext
                algorithm   INTEGER NOT NULL,
                state       INTEGER NOT NULL,
                material    BLOB,                    -- wrapped under the domain key; NULL once destroyed
                create_time INTEGER NOT NULL,
                PRIMARY KEY (tenant, key_id, version),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            ) STRICT;

            CREATE TABLE request_ids (
                tenant      TEXT    NOT NULL,
                request_id  TEXT    NOT NULL,
                operation   TEXT    NOT NULL,
                fingerprint BLOB    NOT NULL,
                resource    TEXT    NOT NULL,
                create_time INTEGER NOT NULL,
                PRIMARY KEY (tenant, request_id)
            ) STRICT;
            """),
        new(2, """
            ALTER TABLE keys ADD COLUMN rotation_period_ms INTEGER;
            ALTER TABLE keys ADD COLUMN next_rotation_time INTEGER;
            ALTER TABLE keys ADD COLUMN min_decryption_version INTEGER NOT NULL DEFAULT 1;
            ALTER TABLE keys ADD COLUMN destroy_time INTEGER;

            ALTER TABLE key_versions ADD COLUMN destroy_time INTEGER;
            ALTER TABLE key_versions ADD COLUMN destroy_event_time INTEGER;
            ALTER TABLE key_versions ADD COLUMN encrypt_count INTEGER NOT NULL DEFAULT 0;  -- reserved: durable upper bound
            ALTER TABLE key_versions ADD COLUMN decrypt_count INTEGER NOT NULL DEFAULT 0;
            ALTER TABLE key_versions ADD COLUMN last_encrypt_time INTEGER;
            ALTER TABLE key_versions ADD COLUMN last_decrypt_time INTEGER;

            CREATE TABLE aliases (
                tenant      TEXT    NOT NULL,
                alias_id    TEXT    NOT NULL,
                key_id      TEXT    NOT NULL,
                create_time INTEGER NOT NULL,
                update_time INTEGER NOT NULL,
                PRIMARY KEY (tenant, alias_id),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            ) STRICT;

            CREATE INDEX keys_due_rotation ON keys (next_rotation_time) WHERE next_rotation_time IS NOT NULL;
            CREATE INDEX keys_due_deletion ON keys (destroy_time) WHERE destroy_time IS NOT NULL;
            CREATE INDEX key_versions_due_destruction ON key_versions (destroy_time) WHERE destroy_time IS NOT NULL AND material IS NOT NULL;
            """),
        new(3, """
            ALTER TABLE keys ADD COLUMN restricted INTEGER NOT NULL DEFAULT 0;

            CREATE TABLE tenants (
                id           TEXT    PRIMARY KEY,
                display_name TEXT    NOT NULL,
                state        INTEGER NOT NULL,
                create_time  INTEGER NOT NULL,
                delete_time  INTEGER
            ) STRICT;

            -- Tenants that already hold keys (databases from before tenants were managed).
            INSERT INTO tenants (id, display_name, state, create_time)
            SELECT tenant, '', 1, min(create_time) FROM keys GROUP BY tenant;

            CREATE TABLE principals (
                name         TEXT    PRIMARY KEY,   -- typed: spiffe:..., cn:..., token:...
                tenant       TEXT,                  -- NULL: deployment-level principal
                display_name TEXT    NOT NULL,
                create_time  INTEGER NOT NULL,
                disabled     INTEGER NOT NULL DEFAULT 0
            ) STRICT;
            CREATE INDEX principals_by_tenant ON principals (tenant, name);

            CREATE TABLE api_tokens (
                id          TEXT    PRIMARY KEY,
                principal   TEXT    NOT NULL,
                kind        INTEGER NOT NULL,
                secret_hash BLOB    NOT NULL,       -- SHA-256 of the secret; the secret is never stored
                create_time INTEGER NOT NULL,
                expire_time INTEGER NOT NULL,
                revoke_time INTEGER
            ) STRICT;
            CREATE INDEX api_tokens_by_principal ON api_tokens (principal);

            CREATE TABLE role_bindings (
                principal   TEXT    NOT NULL,
                role        INTEGER NOT NULL,
                tenant      TEXT    NOT NULL,       -- '': deployment-wide
                create_time INTEGER NOT NULL,
                PRIMARY KEY (principal, role, tenant)
            ) STRICT;
            CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant);

            CREATE TABLE key_policies (
                tenant     TEXT    NOT NULL,
                key_id     TEXT    NOT NULL,
                principal  TEXT    NOT NULL,
                operations INTEGER NOT NULL,
                PRIMARY KEY (tenant, key_id, principal),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            ) STRICT;

            CREATE TABLE grants (
                tenant         TEXT    NOT NULL,
                key_id         TEXT    NOT NULL,
                grant_id       TEXT    NOT NULL,
                grantee        TEXT    NOT NULL,
                operations     INTEGER NOT NULL,
                context_equals TEXT    NOT NULL,    -- JSON object
                create_time    INTEGER NOT NULL,
                revoke_time    INTEGER,
                PRIMARY KEY (tenant, key_id, grant_id),
                FOREIGN KEY (tenant, key_id) REFERENCES keys (tenant, key_id)
            ) STRICT;
            """),
        new(4, """
            -- The audit chain. seq is gap-free and assigned under the write lock; body is the
            -- canonical JSON the hash covers (docs/audit-format.md) and the record itself: the
            -- other columns only index it.
            CREATE TABLE audit_events (
                seq       INTEGER PRIMARY KEY,
                time      INTEGER NOT NULL,
                principal TEXT    NOT NULL,
                tenant    TEXT,
                operation TEXT    NOT NULL,
                resource  TEXT,
                outcome   TEXT    NOT NULL,
                body      TEXT    NOT NULL,
                hash      TEXT    NOT NULL
            ) STRICT;
            CREATE INDEX audit_events_by_time ON audit_events (time);
            CREATE INDEX audit_events_by_principal ON audit_events (principal, seq);
            CREATE INDEX audit_events_by_resource ON audit_events (resource, seq);

            CREATE TABLE audit_checkpoints (
                seq       INTEGER PRIMARY KEY,
                head      TEXT    NOT NULL,
                time      INTEGER NOT NULL,
                key       TEXT    NOT NULL,
                body      TEXT    NOT NULL,
                signature BLOB    NOT NULL
            ) STRICT;
            """),
        new(5, """
            -- Every audited call inserts into each index of audit_events, inside the commit the
            -- caller waits for. These two served no query: ListAuditEvents pages in seq order
            -- (ORDER BY seq LIMIT), so the planner walks the primary key for a time range, and
            -- the resource filter (= or LIKE prefix) cannot use an index. The principal index
            -- stays: "what did this principal do" is answered from it.
            DROP INDEX audit_events_by_time;
            DROP INDEX audit_events_by_resource;
            """),
        new(6, """
            -- Quorum approvals (docs/quorum.md). Nothing here is trusted by itself: the officer
            -- chain is verified back to the genesis pinned in configuration, and every
            -- approval's signature over the request's canonical rendering, before anything runs.
            CREATE TABLE officer_sets (
                sequence       INTEGER PRIMARY KEY,  -- 0: the genesis
                previous_hash  TEXT    NOT NULL,
                threshold      INTEGER NOT NULL,
                officers       TEXT    NOT NULL,     -- JSON array of {name, public_key (base64 DER SPKI)}
                hash           TEXT    NOT NULL,     -- recomputed on read; kept for people reading the table
                change_request TEXT                  -- the CHANGE_OFFICERS request that installed it; NULL for the genesis
            ) STRICT;

            CREATE TABLE quorum_requests (
                id                   TEXT    PRIMARY KEY, -- 32 hex digits, 128 random bits
                tenant               TEXT,                -- NULL: deployment-wide
                operation            TEXT    NOT NULL,    -- DESTROY_KEY_VERSION_NOW, CHANGE_OFFICERS, ...
                parameters           TEXT    NOT NULL,    -- JSON array of [key, value], sorted by key
                domain_kcv           TEXT    NOT NULL,
                officer_set_sequence INTEGER NOT NULL,
                officer_set_hash     TEXT    NOT NULL,
                requested_by         TEXT    NOT NULL,
                create_time          INTEGER NOT NULL,
                expire_time          INTEGER NOT NULL,
                state                INTEGER NOT NULL,    -- QuorumRequestState: 0 PENDING, 1 EXECUTED, 2 APPROVED, 3 VOID (expiry is not stored; not the proto's numbers)
                execute_time         INTEGER,
                proposed_officers    TEXT                 -- CHANGE_OFFICERS: JSON {threshold, officers}
            ) STRICT;
            CREATE INDEX quorum_requests_by_tenant ON quorum_requests (tenant, id);

            CREATE TABLE quorum_approvals (
                request_id          TEXT    NOT NULL REFERENCES quorum_requests (id),
                officer_fingerprint TEXT    NOT NULL,
                signature           BLOB    NOT NULL,
                approve_time        INTEGER NOT NULL,
                position            INTEGER NOT NULL,     -- arrival order
                PRIMARY KEY (request_id, officer_fingerprint)
            ) STRICT;
            """),
        new(7, """
            -- Key versions beyond AES (signing, asymmetric decryption, MAC) and BYOK imports.
            ALTER TABLE key_versions ADD COLUMN origin         INTEGER NOT NULL DEFAULT 1; -- 1 GENERATED in the HSM, 2 IMPORTED
            ALTER TABLE key_versions ADD COLUMN import_job     TEXT;    -- IMPORTED: tenants/{t}/importJobs/{j}
            ALTER TABLE key_versions ADD COLUMN public_key     BLOB;    -- RSA/EC/Ed25519: DER SubjectPublicKeyInfo
            ALTER TABLE key_versions ADD COLUMN create_request TEXT;    -- the audit request id that created it

            CREATE TABLE import_jobs (
                tenant         TEXT    NOT NULL,
                job_id         TEXT    NOT NULL,
                method         INTEGER NOT NULL,
                material_id    BLOB    NOT NULL UNIQUE, -- 16 random bytes naming the private key (HSM handle cache)
                public_key     BLOB    NOT NULL, -- DER SubjectPublicKeyInfo callers wrap for
                material       BLOB,             -- the RSA private key wrapped under the domain key; NULL once expired and erased
                create_time    INTEGER NOT NULL,
                expire_time    INTEGER NOT NULL,
                create_request TEXT,
                PRIMARY KEY (tenant, job_id)
            ) STRICT;
            """),
        new(8, """
            -- The change feed (IChangeFeed): what other processes sharing the database cache the
            -- consequences of. Additive (a schema-7 statement never touches it), so it declares schema
            -- 7 compatible; servers released before CompatibleFrom existed refuse any newer schema anyway.
            CREATE TABLE changes (
                seq     INTEGER PRIMARY KEY,
                kind    INTEGER NOT NULL,  -- 1 access, 2 material erased
                subject TEXT    NOT NULL,
                time    INTEGER NOT NULL
            ) STRICT;
            """, CompatibleFrom: 7),
        new(9, """
            -- Data residency: the region whose domain key wraps the key's versions (NULL: the
            -- deployment's). Not compatible with older servers: one of them leading would rotate a
            -- resident key under the deployment's domain key, taking its material out of the region.
            ALTER TABLE keys ADD COLUMN residency TEXT;
            """),
        new(10, """
            -- BYOK: only a key created with allow_import takes ImportKeyVersion. Not compatible
            -- with older servers: they would import into any key, whatever it was created as.
            ALTER TABLE keys ADD COLUMN allow_import INTEGER NOT NULL DEFAULT 0;
            -- A key that already holds an imported version was created for imports: it keeps taking them.
            UPDATE keys SET allow_import = 1
            WHERE EXISTS (SELECT 1 FROM key_versions v WHERE v.tenant = keys.tenant AND v.key_id = keys.key_id AND v.origin = 2);
            """),
        new(11, """
            -- The waiting period DeleteTenant asked for, recorded with the DELETING state, so that the
            -- keys a failed call did not reach, and those the sweep finds, get it rather than the
            -- default. Additive: a schema-10 server ignores it (its sweep uses the default, as before).
            ALTER TABLE tenants ADD COLUMN delete_waiting_ms INTEGER;
            """, CompatibleFrom: 10),
        new(12, """
            -- DeletePrincipal: when a principal was offboarded (NULL: it was not). The row stays as a
            -- tombstone, so its name is never registered again. Additive: DeletePrincipal also sets
            -- disabled, by which a schema-10 or -11 server refuses the principal's credentials too.
            ALTER TABLE principals ADD COLUMN delete_time INTEGER;
            """, CompatibleFrom: 10),
        new(13, """
            -- Where an executed quorum request's output is: the node that executed it (Kms:NodeName)
            -- and, for RECOVER_DEPLOYMENT_ADMIN, the credential file's path and when the credential was
            -- revoked because that node could not write it. Additive: a schema-10 to -12 server leaves
            -- them NULL (its executions do not say where) and reads requests as before.
            ALTER TABLE quorum_requests ADD COLUMN executing_node         TEXT;
            ALTER TABLE quorum_requests ADD COLUMN credential_path        TEXT;
            ALTER TABLE quorum_requests ADD COLUMN credential_revoke_time INTEGER;
            """, CompatibleFrom: 10),
        new(14, """
            -- When the officer signed an approval (ms), as the signed statement says (format
            -- "kms quorum approval v2"); NULL for an approval over the plain rendering, made before
            -- approvals were timed. Additive: a schema-10 to -13 server leaves it NULL.
            ALTER TABLE quorum_approvals ADD COLUMN sign_time INTEGER;
            """, CompatibleFrom: 10),
        new(15, """
            -- BYOK: an import job imports a material once. Each imported version records its
            -- material's fingerprint (a hash from which the material cannot be recovered), and no two
            -- versions of one job share one. Additive: a schema-10 to -14 server, during a rolling
            -- upgrade, records none (NULL, which the index lets repeat), as for versions imported
            -- before; it keeps serving rather than refusing the database.
            ALTER TABLE key_versions ADD COLUMN import_fingerprint TEXT;
            CREATE UNIQUE INDEX key_versions_import_material ON key_versions (import_job, import_fingerprint);
            """, CompatibleFrom: 10),
        new(16, """
            -- The key versions an audit event lists besides its resource (ReEncrypt's source, a batch's
            -- items: the body's key_versions), each between spaces, for the resource filter. An index
            -- column like the others, never the record. Additive: a schema-10 to -15 server, during a
            -- rolling upgrade, writes events without the list (NULL), as every event before.
            ALTER TABLE audit_events ADD COLUMN key_versions TEXT;
            """, CompatibleFrom: 10),
        new(17, """
            -- Usage flushes applied once: per node (a process, by a random id), the number of its last
            -- flush applied, recorded in the flush's own write, so the same flush sent again after a
            -- write whose outcome is unknown adds nothing. Rows unused for a week are deleted.
            -- Additive: a schema-10 to -16 server, during a rolling upgrade, flushes as before
            -- (adding its counts once per write, never touching this table).
            CREATE TABLE usage_flushes (
                node     BLOB    PRIMARY KEY,  -- 16 random bytes, new each time a server starts
                sequence INTEGER NOT NULL,     -- the node's last flush applied
                time     INTEGER NOT NULL      -- when that flush was made (the node's clock, ms)
            ) STRICT;
            """, CompatibleFrom: 10),
        new(18, """
            -- The time summary of the audit log (a zone map, like PostgreSQL's BRIN): per block of
            -- events, its sequence range and the least and greatest time column of its events, written
            -- by the audit housekeeping once the block is complete, off the commit every audited call
            -- waits for. A listing with a time range skips the blocks outside it (AuditPages); the
            -- unsummarised tail is read as before. Additive: a schema-10 to -17 server never reads it,
            -- and its prunes leave the blocks they cut behind, which only cost a listing a step.
            CREATE TABLE audit_blocks (
                first_seq INTEGER PRIMARY KEY,
                last_seq  INTEGER NOT NULL,
                min_time  INTEGER NOT NULL,  -- Unix milliseconds, as audit_events.time
                max_time  INTEGER NOT NULL
            ) STRICT;
            """, CompatibleFrom: 10),
        new(19, """
            -- A due destruction that failed (the key's deletion on keys, one version's on key_versions):
            -- its failures in a row, since when, and when it may be tried again (ms, the lifecycle's
            -- trusted clock), so that a restart or another node taking the lease goes on with its
            -- back-off instead of trying every failing destruction again at once. Written by the
            -- lifecycle in a write of its own; cleared by any later change of the key or the version.
            -- Additive: a schema-10 to -18 server, during a rolling upgrade, neither reads nor clears
            -- them (it retries without a back-off, as before; a record it leaves on a version or key it
            -- changed is read only while that is DESTROY_SCHEDULED again).
            ALTER TABLE keys ADD COLUMN destroy_failures        INTEGER;
            ALTER TABLE keys ADD COLUMN destroy_failing_since   INTEGER;
            ALTER TABLE keys ADD COLUMN destroy_retry_time      INTEGER;
            ALTER TABLE key_versions ADD COLUMN destroy_failures      INTEGER;
            ALTER TABLE key_versions ADD COLUMN destroy_failing_since INTEGER;
            ALTER TABLE key_versions ADD COLUMN destroy_retry_time    INTEGER;
            CREATE INDEX keys_destroy_failing ON keys (tenant, key_id) WHERE destroy_failures IS NOT NULL;
            CREATE INDEX key_versions_destroy_failing ON key_versions (tenant, key_id, version) WHERE destroy_failures IS NOT NULL;
            """, CompatibleFrom: 10),
        new(20, """
            -- ListApiTokens, ListRoleBindings and ListGrants are paged: each page is read from where the
            -- last ended, in the order of an index, rather than sorting every row of the principal,
            -- tenant or key on every page (a principal's revoked tokens are never deleted). The new
            -- indexes start with the old ones' columns, which they replace. Additive: a schema-10 to
            -- -19 server reads the same rows through them.
            DROP INDEX api_tokens_by_principal;
            CREATE INDEX api_tokens_by_principal ON api_tokens (principal, create_time DESC, id);
            DROP INDEX role_bindings_by_tenant;
            CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant, principal, role);
            CREATE INDEX grants_active ON grants (tenant, key_id, create_time, grant_id) WHERE revoke_time IS NULL;
            """, CompatibleFrom: 10),
    ];

    public static int LatestVersion => Migrations[^1].Version;
}
