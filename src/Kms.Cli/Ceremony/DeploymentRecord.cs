using System.Security.Cryptography;
using System.Text;
using Kms.Cli.Infrastructure;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Files;
using Kms.Core.Services;
using Kms.Hsm;
using Kms.Storage;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Cli.Ceremony;

/// <summary>
/// A deployment's state as the ceremony sees it: the deployment's database (the data directory's
/// SQLite file, or its PostgreSQL database, <see cref="DeploymentDatabase"/>), the
/// token's domain key (pinned in the database as the server pins it) and the audit log, whose
/// HSM-held signing key signs the transcript. The ceremony's steps are appended to the same
/// audit chain the server writes, and a signed checkpoint is written when it closes — to the
/// database and to <c>{DataDir}/audit/checkpoints.jsonl</c>, as the server does — only over a
/// chain that passes through the newest checkpoint that file records and the audit head the data
/// directory last saw (<c>audit/head.json</c>), as the server checks at start; the head the
/// ceremony leaves is recorded there when it closes, as a server's stop records it.
/// </summary>
internal sealed class DeploymentRecord : IAsyncDisposable
{
    private readonly SqlStore _store;
    private readonly Pkcs11Hsm _hsm;
    private readonly AuditLog _audit;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private readonly Action<string>? _note;

    private DeploymentRecord(SqlStore store, Pkcs11Hsm hsm, AuditLog audit, Action<string>? note)
    {
        _store = store;
        _hsm = hsm;
        _audit = audit;
        _note = note;
        _loop = Task.Run(() => audit.RunAsync(_stop.Token));
    }

    /// <summary>The audit signing key's fingerprint (pinned by the transcript).</summary>
    public string AuditKeyFingerprint => _audit.Fingerprint;

    /// <summary>The audit signing key (DER SubjectPublicKeyInfo).</summary>
    public byte[] AuditPublicKey => _audit.PublicKey;

    /// <summary>The domain key's check value as the HSM reports it.</summary>
    public string DomainKeyCheckValue => _hsm.DomainKeyCheckValue;

    /// <summary>Opens the deployment whose database is <c>{dataDir}/kms.db</c> (SQLite); <paramref name="pin"/> as in the other overload.</summary>
    public static Task<DeploymentRecord> OpenAsync(string dataDir, HsmOptions hsmOptions, byte[] pin, CancellationToken cancellationToken) =>
        OpenAsync(dataDir, DeploymentDatabaseTarget.SqliteIn(dataDir), hsmOptions, pin, note: null, cancellationToken);

    /// <summary>
    /// Opens (creating on first use) <paramref name="database"/>, the token's domain key (refused
    /// if the database was made under another one), and the audit keys; <paramref name="dataDir"/>
    /// receives the published audit key and the shipped checkpoints, and the head the ceremony
    /// leaves the chain at when it closes (<c>audit/head.json</c>, as a server's stop writes it).
    /// <paramref name="note"/> is told what could not be done at the close and is not the
    /// ceremony's failure (the head not recorded: the record before it stands). The HSM adapter
    /// logs to <paramref name="logger"/> (the CLI's standard error: a refused PIN, a lost HSM).
    /// </summary>
    /// <param name="pin">
    /// The token's user PIN as UTF-8. Zeroed before this returns, whether the record opens or
    /// not: the HSM adapter logs in with its own pinned copy, which it zeroes when the record closes.
    /// </param>
    public static async Task<DeploymentRecord> OpenAsync(
        string dataDir, DeploymentDatabaseTarget database, HsmOptions hsmOptions, byte[] pin, Action<string>? note, CancellationToken cancellationToken, Microsoft.Extensions.Logging.ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(pin);
        SqlStore store;
        Pkcs11Hsm hsm;
        try
        {
            dataDir = DurableFile.CreateDirectory(dataDir);
            var options = new HsmOptions
            {
                ModulePath = hsmOptions.ModulePath,
                ModuleEnvironment = hsmOptions.ModuleEnvironment,
                TokenLabel = hsmOptions.TokenLabel,
                Profile = hsmOptions.Profile,
                DomainKeyLabel = hsmOptions.DomainKeyLabel,
                DomainKeyId = hsmOptions.DomainKeyId,
                SessionPoolSize = 1,
            };
            store = await database.OpenAsync(cancellationToken);
            try
            {
                hsm = Pkcs11Hsm.Open(options, pin, logger ?? NullLogger.Instance);
            }
            catch
            {
                await store.DisposeAsync();
                throw;
            }
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pin);
        }

        try
        {
            await DomainKeyGuard.VerifyAsync(hsm, store, devMode: false, cancellationToken);
            var audit = new AuditLog(store, store, hsm, TimeProvider.System, new AuditOptions());
            await audit.InitializeAsync(cancellationToken);
            var directory = DurableFile.CreateDirectory(Path.Combine(dataDir, "audit"));
            await DurableFile.WriteAsync(Path.Combine(directory, "signing-key.pem"), Encoding.ASCII.GetBytes(PublicKeyPem(audit.PublicKey)), DurableFile.Public, overwrite: true, cancellationToken);

            // As the server does at start: the newest checkpoint this data directory records as
            // signed is one the chain must pass through, or the ceremony signs nothing over it
            // (a chain rewritten in the database, its checkpoint rows deleted, would otherwise be
            // signed by the transcript's checkpoint, or by the log's interval checkpoint).
            // Refused before any step is appended.
            var checkpoints = Path.Combine(directory, "checkpoints.jsonl");
            var own = await audit.RequireOwnRecordAsync(checkpoints, cancellationToken);

            // And, as the server does at start, the head this data directory last saw (head.json:
            // written by the server as the head moves and at its stop, and by the ceremony when it
            // closes). A database rolled back behind it with no checkpoint after it to catch the
            // rollback would otherwise get the ceremony's steps appended and signed by the
            // transcript's checkpoint. Passed through, or reached by a re-application of
            // destructions recorded since; else refused before any step is appended. The
            // server's AcceptRollback has no ceremony counterpart: moving the file aside is the
            // way to accept the rollback here (and for a server on this data directory).
            var seenPath = Path.Combine(directory, SeenHead.FileName);
            var seen = await audit.ReadOwnHeadAsync(seenPath, cancellationToken);
            var headBehind = !seen.OtherKey && seen.Head is not null && !seen.PassesThrough;
            if (own.Checkpoint is { } pinned && !own.PassesThrough)
            {
                var both = headBehind ? $", with {SeenHead.FileName} beside it ({SeenHead.FileName}.replaced-TIME: the head it records is not passed through either)" : "";
                throw KmsErrors.FailedPrecondition(
                    $"the audit chain in the database does not pass through checkpoint {pinned.Sequence} that {checkpoints} records as signed: signed events were removed or rewritten, "
                    + "or the database was rolled back; nothing recorded, no checkpoint signed. A rollback on purpose (a pg_restore, a kms.db copied back): move that file aside "
                    + $"({Path.GetFileName(checkpoints)}.replaced-TIME, as kms backup restore does){both} and run this again");
            }

            if (headBehind && seen.Head is { } last
                && await audit.FindReapplicationAsync(last.Sequence, seen.Written, cancellationToken) is { Covering: null } reapplied)
            {
                throw AuditLog.RollbackNotReapplied(
                    reapplied, last.Sequence, "the head this node last saw, event", seenPath, "the ceremony records nothing and signs no checkpoint", "then run this again",
                    $"move that file aside ({SeenHead.FileName}.replaced-TIME; a server on this data directory then takes the rollback as accepted too) and run this again");
            }

            // Every checkpoint the log signs goes to the file, the interval's too.
            audit.CheckpointWritten += checkpoint =>
                DurableFile.Append(checkpoints, Encoding.UTF8.GetBytes(AuditExport.Checkpoint(checkpoint) + "\n"), DurableFile.OwnerOnly);
            return new DeploymentRecord(store, hsm, audit, note);
        }
        catch
        {
            await hsm.DisposeAsync();
            await store.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Tells <paramref name="files"/> what a record opened on <paramref name="dataDir"/> may
    /// write there where nothing is yet: the data directory and <c>audit/</c>, the SQLite database
    /// and its journals (not PostgreSQL's), the published audit key, the shipped checkpoints and
    /// the head the ceremony leaves. For a ceremony that takes back what its run wrote.
    /// </summary>
    public static void WillWrite(RunFiles files, string dataDir, DeploymentDatabaseTarget database)
    {
        ArgumentNullException.ThrowIfNull(files);
        ArgumentNullException.ThrowIfNull(database);
        var audit = Path.Combine(Path.GetFullPath(dataDir), "audit");
        files.WillCreateDirectory(audit);
        if (database.SqlitePath is { } sqlite)
        {
            foreach (var suffix in new[] { "", "-journal", "-wal", "-shm" })
            {
                files.WillWrite(sqlite + suffix);
            }
        }

        files.WillWrite(Path.Combine(audit, "signing-key.pem"));
        files.WillWrite(Path.Combine(audit, "checkpoints.jsonl"));
        files.WillWrite(Path.Combine(audit, SeenHead.FileName));
    }

    /// <summary>A public key as PEM (<c>PUBLIC KEY</c>, SubjectPublicKeyInfo).</summary>
    public static string PublicKeyPem(byte[] subjectPublicKeyInfo) => new string(PemEncoding.Write("PUBLIC KEY", subjectPublicKeyInfo)) + "\n";

    /// <summary>Appends one ceremony step to the audit chain; returns once it is durable.</summary>
    public Task AppendAsync(string ceremonyId, string operation, string resource, CancellationToken cancellationToken) =>
        _audit.AppendAsync(new AuditEntry
        {
            Time = DateTimeOffset.UtcNow,
            RequestId = ceremonyId,
            Principal = "system:ceremony",
            Operation = "ceremony/" + operation,
            Resource = resource,
            Outcome = "OK",
            Client = Environment.MachineName,
        }, cancellationToken);

    /// <summary>Signs <paramref name="content"/> as a statement of <paramref name="kind"/> with the audit key.</summary>
    public Task<byte[]> SignAsync(string kind, byte[] content, CancellationToken cancellationToken) =>
        _audit.SignStatementAsync(kind, content, cancellationToken);

    /// <summary>Signs a checkpoint of the chain's head and ships it outside the database.</summary>
    /// <remarks>Refused (FailedPrecondition) if the chain no longer passes through the last checkpoint known (<see cref="AuditLog.CheckpointAsync"/>).</remarks>
    public Task<AuditCheckpoint?> CheckpointAsync(CancellationToken cancellationToken) => _audit.CheckpointAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        try
        {
            await _loop;
        }
        catch (OperationCanceledException)
        {
            // Stopped.
        }

        // The head the ceremony leaves the chain at, as a server's stop records it: its steps are
        // events this data directory saw, also when it failed before its checkpoint. A record
        // that cannot be written leaves the one before it (older: it refuses nothing it should not).
        try
        {
            await _audit.RecordHeadAtStopAsync(CancellationToken.None);
        }
        catch (Exception e) when (e is KmsException or IOException or UnauthorizedAccessException)
        {
            _note?.Invoke($"the audit head the ceremony leaves was not recorded in the data directory ({SeenHead.FileName}: {e.GetType().Name}); the record before it stands");
        }

        _stop.Dispose();
        await _hsm.DisposeAsync();
        await _store.DisposeAsync();
    }
}
