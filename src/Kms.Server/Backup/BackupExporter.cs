using Kms.Core.Audit;
using Kms.Core.Backup;
using Kms.Core.Errors;
using Kms.Core.Files;
using Kms.Core.Ports;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Storage;
using Kms.Storage.Sqlite;

namespace Kms.Server.Backup;

/// <summary>
/// Carries out an executed EXPORT_BACKUP request: a consistent snapshot of the store into
/// <c>{DataDir}/backups/{request id}/kms.db</c>, its <c>manifest.json</c> and the manifest's
/// signature by the audit key (<c>manifest.json.sig</c>), and an audit event.
/// </summary>
/// <remarks>
/// The snapshot is taken after the request's execution committed, so it holds the executed
/// request and its execution event. The three files are written under a temporary directory
/// beside the final one (<see cref="DurableDirectory"/>) and renamed into place together once
/// each is on disk: after a crash the final directory holds the whole backup or does not exist.
/// If writing the backup fails, the request stays executed without a backup: the audit log says
/// so (outcome not OK) and officers create a new request.
/// The snapshot holds key material wrapped under the domain key only — what the database holds.
/// </remarks>
internal sealed partial class BackupExporter(SqlStore store, AuditLog audit, IHsm hsm, TimeProvider time, string backupsDirectory, ILogger logger)
{
    /// <summary>The audit operation of a written backup.</summary>
    public const string Operation = "backup/Export";

    /// <summary>The directory of a request's backup.</summary>
    public string DirectoryOf(QuorumRequestId id) => Path.Combine(backupsDirectory, id.Value);

    /// <summary>Writes the backup of an executed EXPORT_BACKUP request and returns its manifest.</summary>
    /// <exception cref="KmsException">FailedPrecondition (not an executed EXPORT_BACKUP, or its backup exists), Unavailable (the store or disk failed).</exception>
    public async Task<BackupManifest> ExportAsync(QuorumRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Operation != QuorumOperation.ExportBackup || request.State != QuorumRequestState.Executed)
        {
            throw KmsErrors.FailedPrecondition($"quorum request {request.Name} is not an executed EXPORT_BACKUP request");
        }

        var directory = DirectoryOf(request.Id);
        if (Directory.Exists(directory))
        {
            throw KmsErrors.FailedPrecondition($"the backup of {request.Name} exists already; a request exports once");
        }

        var outcome = "INTERNAL";
        try
        {
            // Filled under a temporary name beside the final one and renamed into place whole
            // once the manifest and its signature are on disk: a crash or a failure part-way
            // leaves nothing under the final name (a snapshot without its manifest there would
            // look like a backup, and would block the request's export for good).
            using var staged = DurableDirectory.Create(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var snapshotPath = Path.Combine(staged.Staging, BackupManifest.SnapshotFile);
            var snapshot = store is SqliteStore sqlite
                ? await sqlite.SnapshotAsync(snapshotPath, cancellationToken)
                : throw KmsErrors.FailedPrecondition(
                    $"backups through the API are SQLite snapshots; a {store.Provider} database is backed up with its own tools (docs/deployment.md)");
            var (sha256, size) = BackupManifest.HashFile(snapshotPath);
            var manifest = new BackupManifest
            {
                Request = request.Name,
                CreateTime = time.GetUtcNow(),
                SchemaVersion = snapshot.SchemaVersion,
                SnapshotSha256 = sha256,
                SnapshotSize = size,
                AuditHead = snapshot.AuditHead,
                DomainKcv = hsm.DomainKeyCheckValue,
                AuditKey = audit.Fingerprint,
            };
            var json = manifest.ToJson();
            var signature = await audit.SignStatementAsync(BackupManifest.StatementKind, json, cancellationToken);
            await DurableFile.WriteAsync(Path.Combine(staged.Staging, BackupManifest.ManifestFile), json, DurableFile.OwnerOnly, overwrite: false, cancellationToken);
            await DurableFile.WriteAsync(Path.Combine(staged.Staging, BackupManifest.SignatureFile), System.Text.Encoding.ASCII.GetBytes(Convert.ToBase64String(signature) + "\n"), DurableFile.OwnerOnly, overwrite: false, cancellationToken);
            staged.Commit();
            outcome = "OK";
            return manifest;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A permission error is no IOException: without it here, the officer whose approval
            // executed the request heard INTERNAL, not that the request was used up.
            // Where and why (a path, an OS error) are the operator's: the server log has them.
            LogFileError(logger, request.Name, "written", e.Message);
            throw KmsErrors.Unavailable($"the backup of {request.Name} could not be written on this node (the server log says why)");
        }
        finally
        {
            await audit.AppendAsync(new AuditEntry
            {
                Time = time.GetUtcNow(),
                RequestId = request.Id.Value,
                Principal = QuorumService.ExecutorPrincipal,
                Operation = Operation,
                Resource = "backups/" + request.Id.Value,
                Outcome = outcome,
            }, CancellationToken.None);
        }
    }

    /// <summary>
    /// The files of an executed EXPORT_BACKUP request's backup on this node, opened for reading:
    /// the manifest and its signature as written, and the snapshot. The caller disposes the stream.
    /// </summary>
    /// <exception cref="KmsException">FailedPrecondition (not an executed EXPORT_BACKUP request), NotFound (its backup is not on this node).</exception>
    public (byte[] Manifest, byte[] Signature, FileStream Snapshot) OpenBackup(QuorumRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Operation != QuorumOperation.ExportBackup || request.State != QuorumRequestState.Executed)
        {
            throw KmsErrors.FailedPrecondition($"quorum request {request.Name} is not an executed EXPORT_BACKUP request");
        }

        var directory = DirectoryOf(request.Id);
        try
        {
            var manifest = File.ReadAllBytes(Path.Combine(directory, BackupManifest.ManifestFile));
            var signature = File.ReadAllBytes(Path.Combine(directory, BackupManifest.SignatureFile));
            var snapshot = new FileStream(Path.Combine(directory, BackupManifest.SnapshotFile), FileMode.Open, FileAccess.Read, FileShare.Read, 64 * 1024, useAsync: true);
            return (manifest, signature, snapshot);
        }
        catch (UnauthorizedAccessException e)
        {
            LogFileError(logger, request.Name, "read", e.Message);
            throw KmsErrors.Unavailable($"the backup of {request.Name} cannot be read on this node (the server log says why)");
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            // Written on the node that executed the request (or its writing failed: see the
            // request's backup/Export audit event), and deleted by nobody but an operator.
            throw KmsErrors.NotFound($"the backup of {request.Name} (not on this node: a backup is written on the node that executed its request)");
        }
    }

    [LoggerMessage(EventId = 1150, Level = LogLevel.Error, Message = "the backup of {Request} could not be {Action}: {Error}")]
    private static partial void LogFileError(ILogger logger, string request, string action, string error);
}
