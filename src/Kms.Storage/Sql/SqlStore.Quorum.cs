using System.Data.Common;
using System.Text.Json;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Quorum;

namespace Kms.Storage;

// The officer chain and quorum requests. The store keeps them; QuorumService decides whether to trust them.
public abstract partial class SqlStore : IQuorumStore
{
    private const string RequestColumns = """
        id, tenant, operation, parameters, domain_kcv, officer_set_sequence, officer_set_hash,
        requested_by, create_time, expire_time, state, execute_time, proposed_officers,
        executing_node, credential_path, credential_revoke_time
        """;

    /// <inheritdoc />
    public Task<IReadOnlyList<OfficerSet>> ListOfficerSetsAsync(CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOfficerSetsAsync(connection, null, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public Task<bool> AddGenesisOfficerSetAsync(OfficerSet genesis, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(genesis);
        return WriteAsync(async (connection, transaction) =>
        {
            await using var insert = Command(connection, """
                INSERT INTO officer_sets (sequence, previous_hash, threshold, officers, hash, change_request)
                SELECT 0, @previous_hash, @threshold, @officers, @hash, NULL
                WHERE NOT EXISTS (SELECT 1 FROM officer_sets)
                """,
                ("@previous_hash", genesis.PreviousHash), ("@threshold", genesis.Threshold), ("@officers", OfficersJson(genesis.Officers)), ("@hash", genesis.Hash));
            insert.Transaction = transaction;
            return await insert.ExecuteNonQueryAsync(cancellationToken) == 1;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task CreateQuorumRequestAsync(QuorumRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        return WriteAsync(async (connection, transaction) =>
        {
            await InsertAsync(connection, transaction, $"""
                INSERT INTO quorum_requests ({RequestColumns})
                VALUES (@id, @tenant, @operation, @parameters, @domain_kcv, @officer_set_sequence, @officer_set_hash,
                        @requested_by, @create_time, @expire_time, @state, @execute_time, @proposed_officers,
                        @executing_node, @credential_path, @credential_revoke_time)
                """,
                request.Name, cancellationToken,
                ("@id", request.Id.Value), ("@tenant", (object?)request.Tenant?.Value ?? DBNull.Value), ("@operation", QuorumOperations.NameOf(request.Operation)),
                ("@parameters", JsonSerializer.Serialize(request.Parameters.Select(p => new[] { p.Key, p.Value }))), ("@domain_kcv", request.DomainKcv),
                ("@officer_set_sequence", request.OfficerSetSequence), ("@officer_set_hash", request.OfficerSetHash), ("@requested_by", request.RequestedBy),
                ("@create_time", request.CreateTime.ToUnixTimeMilliseconds()), ("@expire_time", request.ExpireTime.ToUnixTimeMilliseconds()),
                ("@state", (int)request.State), ("@execute_time", Millis(request.ExecuteTime)),
                ("@proposed_officers", request.ProposedOfficers is { } set ? ProposedJson(set) : DBNull.Value),
                ("@executing_node", (object?)request.ExecutingNode ?? DBNull.Value), ("@credential_path", (object?)request.CredentialPath ?? DBNull.Value),
                ("@credential_revoke_time", Millis(request.CredentialRevokeTime)));
            return 0;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<QuorumRequest?> GetQuorumRequestAsync(QuorumRequestId id, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadRequestAsync(connection, null, id.Value, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<QuorumRequest>> ListQuorumRequestsAsync(TenantId? tenant, string? afterId, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<QuorumRequest>>(async connection =>
        {
            await using var command = Command(connection, $"""
                SELECT id FROM quorum_requests
                WHERE (@tenant IS NULL OR tenant = @tenant) AND id > @after
                ORDER BY id LIMIT @limit
                """,
                ("@tenant", (object?)tenant?.Value ?? NullText), ("@after", afterId ?? ""), ("@limit", limit));
            var ids = new List<string>();
            await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
            {
                while (await reader.ReadAsync(cancellationToken))
                {
                    ids.Add(reader.GetString(0));
                }
            }

            var requests = new List<QuorumRequest>(ids.Count);
            foreach (var id in ids)
            {
                requests.Add((await ReadRequestAsync(connection, null, id, cancellationToken))!);
            }

            return requests;
        }, cancellationToken);

    /// <inheritdoc />
    public async Task<QuorumRequest?> UpdateQuorumRequestAsync(QuorumRequestId id, Func<QuorumRequest, OfficerSet?, QuorumChange> decide, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(decide);
        var (result, erased, _) = await WriteAsync<(QuorumRequest? Request, bool Erased, AuditEntry? Event)>(async (connection, transaction) =>
        {
            var current = await ReadRequestAsync(connection, transaction, id.Value, cancellationToken);
            if (current is null)
            {
                return (null, false, null);
            }

            var sets = await ReadOfficerSetsAsync(connection, transaction, cancellationToken);
            var change = decide(current, sets.Count == 0 ? null : sets[^1]);
            if (change.IsNoOp)
            {
                return (current, false, null);
            }

            if (change.AddedApproval is { } approval)
            {
                await InsertAsync(connection, transaction, """
                    INSERT INTO quorum_approvals (request_id, officer_fingerprint, signature, approve_time, sign_time, position)
                    VALUES (@request_id, @officer_fingerprint, @signature, @approve_time, @sign_time, (SELECT count(*) FROM quorum_approvals WHERE request_id = @request_id))
                    """,
                    $"an approval of {current.Name} by {approval.OfficerFingerprint}", cancellationToken,
                    ("@request_id", id.Value), ("@officer_fingerprint", approval.OfficerFingerprint), ("@signature", approval.Signature),
                    ("@approve_time", approval.ApproveTime.ToUnixTimeMilliseconds()), ("@sign_time", Millis(approval.SignTime)));
            }

            await using (var update = Command(connection, """
                UPDATE quorum_requests SET state = @state, execute_time = @execute_time, executing_node = @executing_node,
                    credential_path = @credential_path, credential_revoke_time = @credential_revoke_time
                WHERE id = @id
                """,
                ("@state", (int)change.Request.State), ("@execute_time", Millis(change.Request.ExecuteTime)),
                ("@executing_node", (object?)change.Request.ExecutingNode ?? DBNull.Value), ("@credential_path", (object?)change.Request.CredentialPath ?? DBNull.Value),
                ("@credential_revoke_time", Millis(change.Request.CredentialRevokeTime)), ("@id", id.Value)))
            {
                update.Transaction = transaction;
                await update.ExecuteNonQueryAsync(cancellationToken);
            }

            var erased = false;
            if (change.KeyEffect is { } effect)
            {
                (var key, erased, _) = await ApplyKeyChangeAsync(connection, transaction, effect.Key, effect.Decide, ErasureMarkSql, cancellationToken);
                if (key is null)
                {
                    throw KmsErrors.NotFound(effect.Key.ToString());
                }
            }

            if (change.AppendedOfficerSet is { } set)
            {
                await InsertAsync(connection, transaction, """
                    INSERT INTO officer_sets (sequence, previous_hash, threshold, officers, hash, change_request)
                    VALUES (@sequence, @previous_hash, @threshold, @officers, @hash, @change_request)
                    """,
                    $"officer set {set.Sequence}", cancellationToken,
                    ("@sequence", set.Sequence), ("@previous_hash", set.PreviousHash), ("@threshold", set.Threshold),
                    ("@officers", OfficersJson(set.Officers)), ("@hash", set.Hash), ("@change_request", id.Value));
            }

            if (change.IssuedToken is { } token)
            {
                await InsertAsync(connection, transaction,
                    $"INSERT INTO api_tokens ({TokenColumns}) VALUES (@id, @principal, @kind, @secret_hash, @create_time, @expire_time, NULL)",
                    $"apiTokens/{token.Id}", cancellationToken,
                    ("@id", token.Id), ("@principal", token.Principal.ToString()), ("@kind", (int)token.Kind), ("@secret_hash", token.SecretHash),
                    ("@create_time", token.CreateTime.ToUnixTimeMilliseconds()), ("@expire_time", token.ExpireTime.ToUnixTimeMilliseconds()));
            }

            if (change.RevokedTokenId is { } revoked)
            {
                // Only a token still active: one a Bootstrap used meanwhile (or revoked with the holder's
                // others) is not recorded as revoked, which would tell officers nothing was recovered.
                if (!await ExecuteInAsync(connection, transaction, "UPDATE api_tokens SET revoke_time = @time WHERE id = @id AND revoke_time IS NULL", cancellationToken,
                    ("@time", Millis(change.Request.CredentialRevokeTime ?? change.Request.ExecuteTime)), ("@id", revoked)))
                {
                    throw QuorumChange.TokenNotActive(revoked);
                }

                await RecordChangeAsync(connection, transaction, StoreChangeKind.Access, $"apiTokens/{revoked}", cancellationToken);
            }

            return (await ReadRequestAsync(connection, transaction, id.Value, cancellationToken), erased, change.ExecutionEvent);
        }, cancellationToken, written => written.Event is { } execution ? [execution] : []);

        if (erased)
        {
            await TryCompleteErasureAsync(cancellationToken);
        }

        return result;
    }

    private static async Task<IReadOnlyList<OfficerSet>> ReadOfficerSetsAsync(DbConnection connection, DbTransaction? transaction, CancellationToken cancellationToken)
    {
        var rows = new List<(long Sequence, string Previous, int Threshold, string Officers, string? Change)>();
        await using (var command = Command(connection, "SELECT sequence, previous_hash, threshold, officers, change_request FROM officer_sets ORDER BY sequence"))
        {
            command.Transaction = transaction;
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                rows.Add((reader.GetInt64(0), reader.GetString(1), reader.GetInt32(2), reader.GetString(3), reader.IsDBNull(4) ? null : reader.GetString(4)));
            }
        }

        var sets = new List<OfficerSet>(rows.Count);
        foreach (var row in rows)
        {
            var change = row.Change is null ? null : await ReadRequestAsync(connection, transaction, row.Change, cancellationToken);
            sets.Add(Malformed($"officer set {row.Sequence}", () => OfficerSet.Restore(row.Sequence, row.Previous, ParseOfficers(row.Officers), row.Threshold, change)));
        }

        return sets;
    }

    private static async Task<QuorumRequest?> ReadRequestAsync(DbConnection connection, DbTransaction? transaction, string id, CancellationToken cancellationToken)
    {
        QuorumRequest request;
        await using (var command = Command(connection, $"SELECT {RequestColumns} FROM quorum_requests WHERE id = @id", ("@id", id)))
        {
            command.Transaction = transaction;
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken))
            {
                return null;
            }

            request = Malformed($"quorum request {id}", () => new QuorumRequest
            {
                Id = QuorumRequestId.Parse(reader.GetString(0), "id"),
                Tenant = reader.IsDBNull(1) ? null : TenantId.Parse(reader.GetString(1)),
                Operation = QuorumOperations.Parse(reader.GetString(2), "operation"),
                Parameters = JsonSerializer.Deserialize<string[][]>(reader.GetString(3))!.Select(p => KeyValuePair.Create(p[0], p[1])).ToList(),
                DomainKcv = reader.GetString(4),
                OfficerSetSequence = reader.GetInt64(5),
                OfficerSetHash = reader.GetString(6),
                RequestedBy = reader.GetString(7),
                CreateTime = DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(8)),
                ExpireTime = DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(9)),
                // 0 PENDING, 1 EXECUTED, 2 APPROVED (the schema's column comment predates APPROVED).
                State = (QuorumRequestState)reader.GetInt32(10),
                ExecuteTime = ReadTime(reader, 11),
                ProposedOfficers = reader.IsDBNull(12) ? null : ParseProposed(reader.GetString(12)),
                ExecutingNode = reader.IsDBNull(13) ? null : reader.GetString(13),
                CredentialPath = reader.IsDBNull(14) ? null : reader.GetString(14),
                CredentialRevokeTime = ReadTime(reader, 15),
            });
        }

        var approvals = new List<QuorumApproval>();
        await using (var command = Command(connection,
            "SELECT officer_fingerprint, signature, approve_time, sign_time FROM quorum_approvals WHERE request_id = @id ORDER BY position", ("@id", id)))
        {
            command.Transaction = transaction;
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                approvals.Add(new QuorumApproval(reader.GetString(0), (byte[])reader[1], DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2))) { SignTime = ReadTime(reader, 3) });
            }
        }

        return request with { Approvals = approvals };
    }

    // Rows someone edited into nonsense refuse quorum operations; they never crash the server.
    private static T Malformed<T>(string what, Func<T> read)
    {
        try
        {
            return read();
        }
        catch (Exception e) when (e is KmsException or JsonException or FormatException or InvalidCastException or NullReferenceException or IndexOutOfRangeException)
        {
            throw KmsErrors.FailedPrecondition($"quorum operations are refused: {what} in the database is malformed");
        }
    }

    private static string OfficersJson(IEnumerable<Officer> officers) =>
        JsonSerializer.Serialize(officers.Select(o => new StoredOfficer(o.Name, Convert.ToBase64String(o.PublicKey))));

    private static List<Officer> ParseOfficers(string json) =>
        JsonSerializer.Deserialize<List<StoredOfficer>>(json)!.Select(o => Officer.Create(o.Name, Convert.FromBase64String(o.PublicKey))).ToList();

    private static string ProposedJson(OfficerSet set) =>
        JsonSerializer.Serialize(new StoredProposal(set.Sequence, set.PreviousHash, set.Threshold, OfficersJson(set.Officers)));

    private static OfficerSet ParseProposed(string json)
    {
        var stored = JsonSerializer.Deserialize<StoredProposal>(json)!;
        return OfficerSet.Restore(stored.Sequence, stored.PreviousHash, ParseOfficers(stored.Officers), stored.Threshold, null);
    }

    private sealed record StoredOfficer(string Name, string PublicKey);

    private sealed record StoredProposal(long Sequence, string PreviousHash, int Threshold, string Officers);
}
