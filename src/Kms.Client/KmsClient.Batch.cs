using Kms.Contracts.V1;

namespace Kms.Client;

// Batches: up to 1,000 items per call, each succeeding or failing alone (its ItemStatus).
public sealed partial class KmsClient
{
    /// <summary>Encrypt for up to 1,000 items (4 MiB of plaintext in all).</summary>
    public async Task<BatchEncryptResponse> BatchEncryptAsync(BatchEncryptRequest request, CancellationToken cancellationToken = default) =>
        await _stub.BatchEncryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>Decrypt for up to 1,000 items (4 MiB of ciphertext in all).</summary>
    /// <remarks>The plaintexts are in the response's buffers: clear them when done (this method cannot, as it does for <see cref="DecryptAsync"/>).</remarks>
    public async Task<BatchDecryptResponse> BatchDecryptAsync(BatchDecryptRequest request, CancellationToken cancellationToken = default) =>
        await _stub.BatchDecryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>ReEncrypt for up to 1,000 items (4 MiB of ciphertext in all).</summary>
    public async Task<BatchReEncryptResponse> BatchReEncryptAsync(BatchReEncryptRequest request, CancellationToken cancellationToken = default) =>
        await _stub.BatchReEncryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>GenerateDataKey for up to 1,000 items.</summary>
    /// <remarks>The plaintext data keys are in the response's buffers: clear them when done (this method cannot, as <see cref="DataKey"/> does).</remarks>
    public async Task<BatchGenerateDataKeyResponse> BatchGenerateDataKeyAsync(BatchGenerateDataKeyRequest request, CancellationToken cancellationToken = default) =>
        await _stub.BatchGenerateDataKeyAsync(request, Options(cancellationToken)).ConfigureAwait(false);
}
