using System.Data.Common;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Storage;

/// <summary>BYOK import jobs: their public keys, and their private keys wrapped under the domain key until they expire.</summary>
public abstract partial class SqlStore
{
    private const string ImportJobColumns = "tenant, job_id, method, material_id, public_key, create_time, expire_time, create_request, material";

    /// <inheritdoc />
    public Task CreateImportJobAsync(ImportJob job, WrappedKeyMaterial material, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(job);
        ArgumentNullException.ThrowIfNull(material);
        return WriteAsync(async (connection, transaction) =>
        {
            await InsertAsync(connection, transaction, $"""
                INSERT INTO import_jobs ({ImportJobColumns})
                VALUES (@tenant, @job_id, @method, @material_id, @public_key, @create_time, @expire_time, @create_request, @material)
                """,
                job.Name.ToString(),
                cancellationToken,
                ("@tenant", job.Name.Tenant.Value), ("@job_id", job.Name.JobId), ("@method", (int)job.Method),
                ("@material_id", job.MaterialId.ToBytes()), ("@public_key", job.PublicKey.ToArray()),
                ("@create_time", job.CreateTime.ToUnixTimeMilliseconds()), ("@expire_time", job.ExpireTime.ToUnixTimeMilliseconds()),
                ("@create_request", (object?)job.CreateRequest ?? DBNull.Value), ("@material", material.UnsafeArray));
            return 0;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<ImportJobMaterial?> GetImportJobAsync(ImportJobName name, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(name);
        return ReadAsync(async connection =>
        {
            await using var command = Command(connection, $"SELECT {ImportJobColumns} FROM import_jobs WHERE tenant = @tenant AND job_id = @job_id",
                ("@tenant", name.Tenant.Value), ("@job_id", name.JobId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken) ? ReadImportJob(reader, name) : null;
        }, cancellationToken);
    }

    /// <inheritdoc />
    /// <remarks>The erasure is marked pending in the same transaction and the WAL checkpointed
    /// after it, as for a destroyed version (<see cref="CompleteErasureAsync"/>).</remarks>
    public async Task<IReadOnlyList<KeyVersionId>> EraseExpiredImportJobsAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        // The lifecycle worker asks every pass: with nothing expired nothing changed, so nothing is
        // announced or forgotten (announced, a pass every 30 s emptied the metadata cache every 30 s).
        var erased = await WriteAsync<IReadOnlyList<KeyVersionId>>(async (connection, transaction) =>
        {
            var ids = new List<KeyVersionId>();
            await using (var command = Command(connection, "UPDATE import_jobs SET material = NULL WHERE material IS NOT NULL AND expire_time <= @now RETURNING material_id",
                ("@now", now.ToUnixTimeMilliseconds())))
            {
                command.Transaction = transaction;
                await using var reader = await command.ExecuteReaderAsync(cancellationToken);
                while (await reader.ReadAsync(cancellationToken))
                {
                    ids.Add(KeyVersionId.FromBytes((byte[])reader[0]));
                }
            }

            if (ids.Count > 0)
            {
                await using var pending = Command(connection, $"INSERT INTO settings (name, value) VALUES (@name, {ErasureMarkSql}) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    ("@name", ErasurePendingSetting));
                pending.Transaction = transaction;
                await pending.ExecuteNonQueryAsync(cancellationToken);
            }

            foreach (var id in ids)
            {
                await RecordChangeAsync(connection, transaction, StoreChangeKind.Material, id.ToString(), cancellationToken);
            }

            return ids;
        }, cancellationToken, changed: ids => ids.Count > 0);
        if (erased.Count > 0)
        {
            await TryCompleteErasureAsync(cancellationToken);
        }

        return erased;
    }

    private static ImportJobMaterial ReadImportJob(DbDataReader reader, ImportJobName name) =>
        new(
            new ImportJob(
                name,
                (ImportMethod)reader.GetInt32(2),
                KeyVersionId.FromBytes((byte[])reader[3]),
                new SubjectPublicKey((byte[])reader[4]),
                DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(5)),
                DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(6)))
            {
                CreateRequest = reader.IsDBNull(7) ? null : reader.GetString(7),
            },
            ReadMaterial(reader, 8));
}
