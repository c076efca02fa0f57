using Google.Protobuf;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Client.Rewrap;

/// <summary>A stored ciphertext to move onto the current primary version: the caller's id for it, the blob, its context.</summary>
/// <param name="Id">The caller's identifier; blobs must be offered in ascending ordinal order of it (the checkpoint is an id).</param>
/// <param name="Ciphertext">The blob as stored.</param>
/// <param name="EncryptionContext">The context it was encrypted with (kept for the new blob).</param>
public sealed record StoredBlob(string Id, byte[] Ciphertext, IReadOnlyDictionary<string, string>? EncryptionContext = null);

/// <summary>Where a rewrap run has got to, reported after each batch.</summary>
public sealed record RewrapProgress(long Seen, long Rewrapped, long AlreadyCurrent, long Failed, string? LastId);

/// <summary>A blob that could not be re-encrypted, with the status its ReEncrypt item got.</summary>
/// <remarks>
/// <see cref="Message"/> is the server's status text made safe to print (<see cref="KmsErrors.Printable"/>,
/// as <see cref="BlindIndex"/> does): control characters as <c>?</c>, the characters that hide or
/// move text as <c>\uXXXX</c>, at most 256 characters.
/// </remarks>
public sealed record RewrapFailure(string Id, StatusCode Code, string Message);

/// <summary>The outcome of a run.</summary>
/// <param name="Progress">Counts, and the last id seen.</param>
/// <param name="Failures">Blobs left as they were, with their status.</param>
/// <param name="ResumedAfter">The checkpoint the run started from, if any.</param>
/// <param name="Checkpoint">The checkpoint saved: the last id before the run's first failure (a resumed run retries from there).</param>
public sealed record RewrapReport(RewrapProgress Progress, IReadOnlyList<RewrapFailure> Failures, string? ResumedAfter, string? Checkpoint);

/// <summary>
/// Re-encrypts a large collection of stored blobs onto a key's primary version with
/// <c>BatchReEncrypt</c>: the plaintext never leaves the KMS. Blobs already under the
/// primary are recognised from their header and skipped without a call. After every batch
/// whose new blobs have all been written, a checkpoint is saved, so an interrupted run
/// resumes where it stopped.
/// </summary>
/// <remarks>
/// The blob header (format byte, key version id; docs/ciphertext-format.md) is read only to
/// compare version ids: which version is primary is learned from the KMS's answers. A blob
/// whose item fails (tampered, another tenant's, a disabled version, the KMS unavailable) is
/// reported and left as it was; the run goes on, but the checkpoint stops before the first
/// failure, so a resumed run retries it (blobs after it that were rewritten are then
/// recognised as current and skipped). A rotation during a run leaves blobs already seen on
/// the previous primary: run again.
/// </remarks>
public sealed class BlobRewrapper
{
    /// <summary>The largest blob the KMS takes (Encrypt's largest ciphertext); a larger one fails alone, without a call.</summary>
    public const int MaxBlobBytes = Limits.MaxCiphertextBytes;

    private const int HeaderLength = 17;

    /// <summary>Most bytes of blobs and contexts sent in one call: under the server's batch and request limits (4 and 5 MiB).</summary>
    private const int MaxBatchRequestBytes = 3 * 1024 * 1024;

    private readonly KmsClient _client;
    private readonly int _batchSize;

    /// <summary>A rewrapper that sends <paramref name="batchSize"/> blobs per BatchReEncrypt (1 to 1000).</summary>
    public BlobRewrapper(KmsClient client, int batchSize = 100)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(batchSize, 1000);
        _client = client;
        _batchSize = batchSize;
    }

    /// <summary>Rewraps every blob of <paramref name="blobs"/> onto <paramref name="keyName"/>'s primary version.</summary>
    /// <param name="blobs">The blobs, in ascending ordinal order of their ids.</param>
    /// <param name="keyName">The key (or alias) whose primary version should hold every blob.</param>
    /// <param name="write">Stores a blob's new ciphertext in place of the old one.</param>
    /// <param name="checkpoint">Where the last completed id is kept; null: no resumption.</param>
    /// <param name="progress">Told after each batch.</param>
    public async Task<RewrapReport> RunAsync(
        IAsyncEnumerable<StoredBlob> blobs,
        string keyName,
        Func<StoredBlob, byte[], CancellationToken, Task> write,
        IRewrapCheckpoint? checkpoint = null,
        IProgress<RewrapProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(blobs);
        ArgumentNullException.ThrowIfNull(write);
        var resumeAfter = checkpoint is null ? null : await checkpoint.LoadAsync(cancellationToken).ConfigureAwait(false);
        var state = new RunState(resumeAfter);
        var batch = new List<(StoredBlob Blob, ReEncryptRequest Item)>(_batchSize);
        var batchBytes = 0L;
        string? previous = null;
        await foreach (var blob in blobs.WithCancellation(cancellationToken).ConfigureAwait(false))
        {
            if (previous is not null && string.CompareOrdinal(blob.Id, previous) <= 0)
            {
                throw new InvalidOperationException($"blobs must come in ascending id order: '{blob.Id}' after '{previous}'");
            }

            previous = blob.Id;
            if (resumeAfter is not null && string.CompareOrdinal(blob.Id, resumeAfter) <= 0)
            {
                continue;
            }

            state.Seen++;
            state.LastId = blob.Id;
            if (state.IsCurrent(blob.Ciphertext))
            {
                // Behind a blob still waiting in the batch, a current one vouches for nothing
                // until that batch has gone through: the checkpoint must not pass a failure.
                state.AlreadyCurrent++;
                if (batch.Count == 0)
                {
                    state.Done(blob.Id);
                }
                else
                {
                    state.DoneAfterBatch(blob.Id);
                }

                continue;
            }

            if (blob.Ciphertext.Length > MaxBlobBytes)
            {
                // Sent with others, it would make the whole call fail, on every run.
                state.Fail(new RewrapFailure(blob.Id, StatusCode.InvalidArgument, $"larger than any KMS ciphertext ({MaxBlobBytes} bytes)"));
                continue;
            }

            var item = Item(blob, keyName);
            if (batch.Count > 0 && batchBytes + item.CalculateSize() > MaxBatchRequestBytes)
            {
                await FlushAsync(batch, keyName, write, state, cancellationToken).ConfigureAwait(false);
                await CompleteAsync(state, checkpoint, progress, cancellationToken).ConfigureAwait(false);
                batchBytes = 0;
            }

            batch.Add((blob, item));
            batchBytes += item.CalculateSize();
            if (batch.Count == _batchSize)
            {
                await FlushAsync(batch, keyName, write, state, cancellationToken).ConfigureAwait(false);
                await CompleteAsync(state, checkpoint, progress, cancellationToken).ConfigureAwait(false);
                batchBytes = 0;
            }
        }

        await FlushAsync(batch, keyName, write, state, cancellationToken).ConfigureAwait(false);
        await CompleteAsync(state, checkpoint, progress, cancellationToken).ConfigureAwait(false);
        return new RewrapReport(state.Progress, state.Failures, resumeAfter, state.SafeThrough);
    }

    private static ReEncryptRequest Item(StoredBlob blob, string keyName)
    {
        var item = new ReEncryptRequest { Ciphertext = UnsafeByteOperations.UnsafeWrap(blob.Ciphertext), DestinationName = keyName };
        foreach (var (key, value) in blob.EncryptionContext ?? new Dictionary<string, string>())
        {
            item.SourceEncryptionContext[key] = value;
            item.DestinationEncryptionContext[key] = value;
        }

        return item;
    }

    private async Task FlushAsync(List<(StoredBlob Blob, ReEncryptRequest Item)> pending, string keyName, Func<StoredBlob, byte[], CancellationToken, Task> write, RunState state, CancellationToken cancellationToken)
    {
        if (pending.Count == 0)
        {
            return;
        }

        var request = new BatchReEncryptRequest();
        request.Requests.Add(pending.Select(p => p.Item));
        var batch = pending.ConvertAll(p => p.Blob);

        var response = await _client.Raw.BatchReEncryptAsync(request, cancellationToken: cancellationToken).ConfigureAwait(false);
        CheckAnswer(response, batch.Count, keyName);
        for (var i = 0; i < batch.Count; i++)
        {
            var result = response.Results[i];
            if (result.Status.Code != 0)
            {
                state.Fail(new RewrapFailure(batch[i].Id, (StatusCode)result.Status.Code, KmsErrors.Printable(result.Status.Message)));
                continue;
            }

            var ciphertext = result.Response.Ciphertext.ToByteArray();
            state.LearnPrimary(ciphertext);
            await write(batch[i], ciphertext, cancellationToken).ConfigureAwait(false);
            state.Rewrapped++;
            state.Done(batch[i].Id);
        }

        state.BatchDone();
        pending.Clear();
    }

    /// <summary>
    /// One result per blob, result i answering blob i (its index), each a status, and each success a blob of the KMS's format under
    /// <paramref name="keyName"/> (an alias: under a version of a key of its tenant) — checked before any blob is
    /// written: a new blob replaces the stored one, so a wrong answer written over it (cut short,
    /// empty, under another key, or another blob's, shifted by a missing result or reordered) would lose the data.
    /// </summary>
    /// <exception cref="RpcException">INTERNAL: the KMS's answer is not one of these; nothing of the batch was written.</exception>
    private static void CheckAnswer(BatchReEncryptResponse response, int items, string keyName)
    {
        if (response.Results.Count != items)
        {
            throw Malformed($"{response.Results.Count} results for {items} blobs");
        }

        var key = ResourceSegments.Is(keyName, ResourceSegments.Collection, "keys") ? keyName : null;
        var aliasTenant = key is null ? TenantOfAlias(keyName) : null;
        for (var i = 0; i < items; i++)
        {
            var result = response.Results[i];
            if (result.Index != (uint)i)
            {
                // Well-formed but reordered: blob i's new ciphertext would be written over another blob.
                throw Malformed($"result {i} answers blob {result.Index}");
            }

            if (result.Status is null)
            {
                throw Malformed($"result {i} has no status");
            }

            if (result.Status.Code != 0)
            {
                continue;
            }

            if (result.Response is null)
            {
                throw Malformed($"result {i} succeeded without a blob");
            }

            var length = result.Response.Ciphertext.Length;
            if (length <= CiphertextBlob.OverheadBytes || length > MaxBlobBytes)
            {
                throw Malformed($"result {i} is a blob of {length} bytes");
            }

            if (key is not null ? !IsVersionOf(result.Response.KeyVersion, key) : !IsVersionInTenant(result.Response.KeyVersion, aliasTenant))
            {
                throw Malformed($"result {i} is under {KmsErrors.Printable(result.Response.KeyVersion)}, not a version of {(key is not null ? KmsErrors.Printable(key) : "a key of the alias's tenant")}");
            }
        }
    }

    private static bool IsVersionOf(string keyVersion, string key) =>
        keyVersion.Length > key.Length + "/versions/".Length
        && keyVersion.StartsWith(key, StringComparison.Ordinal)
        && keyVersion.AsSpan(key.Length).StartsWith("/versions/", StringComparison.Ordinal);

    // An alias points only at keys of its own tenant; a name that is no alias has no tenant here (every success is then wrong).
    private static TenantId? TenantOfAlias(string alias)
    {
        try
        {
            return AliasName.Parse(alias, "alias").Tenant;
        }
        catch (KmsException)
        {
            return null;
        }
    }

    private static bool IsVersionInTenant(string keyVersion, TenantId? tenant)
    {
        try
        {
            return tenant is not null && KeyVersionName.Parse(keyVersion, "key_version").Key.Tenant == tenant;
        }
        catch (KmsException)
        {
            return false;
        }
    }

    private static RpcException Malformed(string what) =>
        new(new Status(StatusCode.Internal, $"the KMS answered BatchReEncrypt wrongly ({what}); no blob of the batch was written"));

    private static async Task CompleteAsync(RunState state, IRewrapCheckpoint? checkpoint, IProgress<RewrapProgress>? progress, CancellationToken cancellationToken)
    {
        if (checkpoint is not null && state.SafeThrough is not null)
        {
            await checkpoint.SaveAsync(state.SafeThrough, cancellationToken).ConfigureAwait(false);
        }

        progress?.Report(state.Progress);
    }

    private sealed class RunState(string? resumedAfter)
    {
        private byte[]? _primaryHeader;
        private bool _failed;
        private string? _afterBatch;

        public long Seen { get; set; }

        public long Rewrapped { get; set; }

        public long AlreadyCurrent { get; set; }

        public string? LastId { get; set; } = resumedAfter;

        public List<RewrapFailure> Failures { get; } = [];

        /// <summary>The last id up to which every blob was rewritten or already current (no failure at or before it).</summary>
        public string? SafeThrough { get; private set; } = resumedAfter;

        public void Done(string id)
        {
            if (!_failed)
            {
                SafeThrough = id;
            }
        }

        /// <summary>A current blob seen while others wait in the batch: done once the batch is.</summary>
        public void DoneAfterBatch(string id) => _afterBatch = id;

        /// <summary>The batch went through: the current blobs seen among it count now (if nothing failed).</summary>
        public void BatchDone()
        {
            if (_afterBatch is { } id && (SafeThrough is null || string.CompareOrdinal(id, SafeThrough) > 0))
            {
                Done(id);
            }

            _afterBatch = null;
        }

        public void Fail(RewrapFailure failure)
        {
            _failed = true;
            Failures.Add(failure);
        }

        public RewrapProgress Progress => new(Seen, Rewrapped, AlreadyCurrent, Failures.Count, LastId);

        public bool IsCurrent(byte[] ciphertext) =>
            _primaryHeader is not null && ciphertext.Length >= HeaderLength && ciphertext.AsSpan(0, HeaderLength).SequenceEqual(_primaryHeader);

        public void LearnPrimary(byte[] ciphertext) => _primaryHeader = ciphertext.AsSpan(0, HeaderLength).ToArray();
    }
}
