using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

// BYOK: import jobs and imported key versions.
public sealed partial class KeyService
{
    private const string ImportKeyVersionOperation = "ImportKeyVersion";

    /// <summary>Largest wrapped key ImportKeyVersion takes (a 4096-bit RSA PKCS#8 under KWP, after a 4096-bit OAEP block, fits).</summary>
    public const int MaxWrappedKeyBytes = 8 * 1024;

    /// <summary>
    /// Creates an import job: an RSA key pair generated in the HSM for <paramref name="method"/>,
    /// usable for <see cref="ImportJob.Lifetime"/>.
    /// </summary>
    /// <exception cref="KmsException">FailedPrecondition when the HSM's profile does not support the method; AlreadyExists for a taken id.</exception>
    public async Task<ImportJob> CreateImportJobAsync(Caller caller, TenantId parent, string jobId, ImportMethod method, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(parent, parent.ResourceName);
        var name = ImportJobName.Create(parent, jobId);
        Audit.AuditScope.SetResource(name.ToString());
        if (!Enum.IsDefined(method))
        {
            throw KmsErrors.InvalidArgument("import_job.import_method", "is required (RSA_OAEP_3072_SHA1_AES_256, ...)");
        }

        if (hsm.UnsupportedReason(method) is { } reason)
        {
            throw KmsErrors.FailedPrecondition($"this HSM cannot import with {ImportJob.MethodName(method)}: {reason}");
        }

        await TenantGate.EnsureActiveAsync(access, parent, cancellationToken);
        if (await store.GetImportJobAsync(name, cancellationToken) is not null)
        {
            throw KmsErrors.AlreadyExists(name.ToString());
        }

        var pair = await hsm.GenerateImportWrappingKeyAsync(method, cancellationToken);
        // Its life starts by the database's clock where there is one, never before the time the
        // lifecycle recorded as seen: the life an import is judged against (by the latest time).
        var now = await Clock.StartOfLifeAsync(time, store, cancellationToken);
        var job = new ImportJob(name, method, KeyVersionId.NewId(), new SubjectPublicKey(pair.SubjectPublicKeyInfo!), now, now + ImportJob.Lifetime)
        {
            CreateRequest = Audit.AuditScope.Current?.Entry.RequestId,
        };
        await store.CreateImportJobAsync(job, pair.Wrapped, cancellationToken);
        return job;
    }

    /// <summary>An import job of the caller's tenant.</summary>
    public async Task<ImportJob> GetImportJobAsync(Caller caller, ImportJobName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        return (await store.GetImportJobAsync(name, cancellationToken))?.Job ?? throw KmsErrors.NotFound(name.ToString());
    }

    /// <summary>
    /// Imports key material wrapped for an import job as a new version of the key, which
    /// becomes its primary (as a rotation would). The version is marked IMPORTED with its job.
    /// </summary>
    /// <remarks>
    /// Everything is checked before anything is stored: the job (same tenant, not expired), the
    /// key (created with allow_import, ENABLED, of an algorithm the material must match), and the material itself inside the
    /// HSM (it unwraps, has the algorithm's type and size, and matches the public key). A key
    /// created for imported material only keeps its generated version 1 until the caller
    /// destroys it.
    /// </remarks>
    /// <exception cref="KmsException">
    /// InvalidArgument (bad wrapping, size or type, public key mismatch), FailedPrecondition
    /// (expired job, a key not created with allow_import, key not ENABLED, algorithm of another key,
    /// material the job already imported: <see cref="KmsErrors.MaterialAlreadyImported"/>), NotFound.
    /// </exception>
    public async Task<KeyVersion> ImportKeyVersionAsync(Caller caller, ImportKeyVersionCommand command, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(command);
        // A key, never an alias: the answer names the version added (tenants/T/keys/K/versions/N),
        // and a key-importer may not read aliases, so which key an alias names is not theirs to
        // learn from it (the gRPC layer refuses an alias as the parent with INVALID_ARGUMENT).
        var name = command.Key;
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        Audit.AuditScope.SetResource(name.ToString());
        caller.EnsureSameTenant(command.ImportJob.Tenant, command.ImportJob.ToString());
        if (command.WrappedKey.Length == 0 || command.WrappedKey.Length > MaxWrappedKeyBytes)
        {
            throw KmsErrors.InvalidArgument("wrapped_key", $"must be 1 to {MaxWrappedKeyBytes} bytes");
        }

        var requestId = RequestIds.Validate(command.RequestId);
        var fingerprint = RequestIds.Fingerprint(ImportKeyVersionOperation, name, command.ImportJob.ToString(), SHA256.HashData(command.WrappedKey));
        if (await _requests.FindReplayAsync(name.Tenant, requestId, ImportKeyVersionOperation, fingerprint, cancellationToken) is { } replay)
        {
            // The request was recorded with the version it added: answer with that one, even if
            // the key has been rotated since.
            return await GetRecordedVersionAsync(replay, cancellationToken);
        }

        var found = await store.GetImportJobAsync(command.ImportJob, cancellationToken) ?? throw KmsErrors.NotFound(command.ImportJob.ToString());
        // Expired by the latest time the deployment has evidence of: a node whose clock was set
        // back does not import through a job whose life has ended (and whose key the lifecycle
        // erases once its own time passes the end).
        var now = Clock.Now(time);
        if (found.Job.IsExpired(await Clock.LatestAsync(now, store, cancellationToken)) || found.Material is null)
        {
            throw KmsErrors.FailedPrecondition($"import job {found.Job.Name} expired at {found.Job.ExpireTime:O}; create a new one");
        }

        var key = await store.GetKeyAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
        var algorithm = key.Primary.Algorithm;
        if (command.Algorithm is { } named && named != algorithm)
        {
            throw KmsErrors.FailedPrecondition($"key {name} holds {KeyAlgorithms.Of(algorithm).Name} versions, not {KeyAlgorithms.Of(named).Name}");
        }

        // A public key with AES or HMAC material was ignored: the caller who sent one has mixed
        // up keys or algorithms, and is told so rather than left to believe it was checked.
        if (command.PublicKey is { Length: > 0 } && !KeyAlgorithms.Of(algorithm).IsAsymmetric)
        {
            throw KmsErrors.InvalidArgument("public_key", $"is for RSA and EC keys; {KeyAlgorithms.Of(algorithm).Name} material has no public key (leave it empty)");
        }

        // Only a key created to take imports: otherwise a key-manager, who may not decrypt, could
        // make material they know the primary of any key and read what is encrypted under it.
        if (!key.AllowImport)
        {
            throw KmsErrors.FailedPrecondition($"key {name} was not created with allow_import: only such a key takes imported material (create one for it)");
        }

        if (key.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition($"key {name} is {KeyTransitions.StateName(key.State)}; only an ENABLED key takes a new version");
        }

        // The job's key is under the deployment's domain key; the unwrap-and-rewrap runs under one domain key.
        if (key.Residency is { } residency)
        {
            throw KmsErrors.FailedPrecondition($"key {name} has residency {residency}; importing into a key with a residency is not supported");
        }

        if (hsm.UnsupportedReason(algorithm) is { } reason)
        {
            throw KmsErrors.FailedPrecondition($"this HSM cannot hold {KeyAlgorithms.Of(algorithm).Name} keys: {reason}");
        }

        var material = await hsm.ImportKeyVersionAsync(
            new KeyMaterialRef(found.Job.MaterialId, found.Material), found.Job.Method, algorithm, command.WrappedKey, command.PublicKey, cancellationToken);
        // Recorded with the version, in its write: the store refuses a material this job already
        // imported (into any key, as any algorithm), so a copy of the wrapped key imports nothing more.
        if (material.MaterialFingerprint is null)
        {
            throw KmsErrors.Internal("the HSM gave no fingerprint of the imported material");
        }

        var id = KeyVersionId.NewId();
        var result = await MutateAsync(caller, name, requestId, fingerprint,
            current => KeyTransitions.Rotate(current, id, material, now, scheduled: false, importJob: found.Job.Name.ToString()),
            cancellationToken, ImportKeyVersionOperation);
        if (result.Versions.FirstOrDefault(v => v.Id == id) is { } added)
        {
            return added;
        }

        // A concurrent retry with the same request id applied it first.
        return requestId is not null && await _requests.FindReplayAsync(name.Tenant, requestId, ImportKeyVersionOperation, fingerprint, cancellationToken) is { } raced
            ? await GetRecordedVersionAsync(raced, cancellationToken)
            : result.Key.Primary;
    }

    private async Task<KeyVersion> GetRecordedVersionAsync(RequestRecord recorded, CancellationToken cancellationToken) =>
        await store.GetVersionAsync(KeyVersionName.Parse(recorded.Resource, "request_id"), cancellationToken) ?? throw KmsErrors.NotFound(recorded.Resource);

    /// <summary>
    /// Background: erases the private keys of expired import jobs from the store (and its files)
    /// and drops their unwrapped copies from the HSM; returns how many.
    /// </summary>
    /// <param name="now">The lifecycle's trusted time (<see cref="LifecycleClock"/>), not the bare clock.</param>
    /// <param name="cancellationToken">Cancels the pass.</param>
    public async Task<int> EraseExpiredImportJobsAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        // The erasure of private keys is audited with it (one event for the pass; none when
        // nothing expired, as the write then changes nothing).
        IReadOnlyList<KeyVersionId> erased;
        using (SystemScope(ImportJobExpiryOperation, null))
        {
            erased = await store.EraseExpiredImportJobsAsync(now, cancellationToken);
        }

        foreach (var id in erased)
        {
            hsm.EvictKey(id);
        }

        return erased.Count;
    }
}

/// <summary>What ImportKeyVersion needs.</summary>
/// <param name="Key">The key that gets the new version (never an alias: see <see cref="KeyService.ImportKeyVersionAsync"/>).</param>
/// <param name="ImportJob">The job whose public key wrapped the material.</param>
/// <param name="Algorithm">The algorithm the caller says the material is (must be the key's); null: the key's.</param>
/// <param name="WrappedKey">RSA-OAEP(ephemeral AES-256 key) ‖ AES-KWP(ephemeral key, material).</param>
/// <param name="PublicKey">DER SubjectPublicKeyInfo of an asymmetric key (required for EC).</param>
/// <param name="RequestId">Optional idempotency key.</param>
public sealed record ImportKeyVersionCommand(KeyName Key, ImportJobName ImportJob, KeyAlgorithm? Algorithm, byte[] WrappedKey, byte[]? PublicKey, string? RequestId);
