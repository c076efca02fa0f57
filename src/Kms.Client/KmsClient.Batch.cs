using System.Runtime.InteropServices;
using Google.Protobuf;
using Google.Protobuf.Collections;
using Kms.Contracts.V1;

namespace Kms.Client;

// Batches: up to 1,000 items per call, each succeeding or failing alone (its ItemStatus).
// An answer is returned only when it is one result per request and result i says it answers
// request i (its index): a reordered answer would hand one item's result to another's caller
// (BlobRewrapper would write one record's new blob over another's).
public sealed partial class KmsClient
{
    /// <summary>Encrypt for up to 1,000 items (4 MiB of plaintext in all).</summary>
    /// <exception cref="InvalidOperationException">The answer is not one result per request, result i answering request i (<c>Index</c>).</exception>
    public async Task<BatchEncryptResponse> BatchEncryptAsync(BatchEncryptRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var response = await _stub.BatchEncryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        ThrowIfMisordered("BatchEncrypt", request.Requests.Count, response.Results, static r => r.Index, onRefusal: null);
        return response;
    }

    /// <summary>Decrypt for up to 1,000 items (4 MiB of ciphertext in all).</summary>
    /// <remarks>The plaintexts are in the response's buffers: clear them when done (this method cannot, as it does for <see cref="DecryptAsync"/>).</remarks>
    /// <exception cref="InvalidOperationException">The answer is not one result per request, result i answering request i (<c>Index</c>); the plaintexts received are zeroed.</exception>
    public async Task<BatchDecryptResponse> BatchDecryptAsync(BatchDecryptRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var response = await _stub.BatchDecryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        ThrowIfMisordered("BatchDecrypt", request.Requests.Count, response.Results, static r => r.Index, static r => Zero(r.Response?.Plaintext));
        return response;
    }

    /// <summary>ReEncrypt for up to 1,000 items (4 MiB of ciphertext in all).</summary>
    /// <exception cref="InvalidOperationException">The answer is not one result per request, result i answering request i (<c>Index</c>).</exception>
    public async Task<BatchReEncryptResponse> BatchReEncryptAsync(BatchReEncryptRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var response = await _stub.BatchReEncryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        ThrowIfMisordered("BatchReEncrypt", request.Requests.Count, response.Results, static r => r.Index, onRefusal: null);
        return response;
    }

    /// <summary>GenerateDataKey for up to 1,000 items.</summary>
    /// <remarks>The plaintext data keys are in the response's buffers: clear them when done (this method cannot, as <see cref="DataKey"/> does).</remarks>
    /// <exception cref="InvalidOperationException">The answer is not one result per request, result i answering request i (<c>Index</c>); the data keys received are zeroed.</exception>
    public async Task<BatchGenerateDataKeyResponse> BatchGenerateDataKeyAsync(BatchGenerateDataKeyRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var response = await _stub.BatchGenerateDataKeyAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        ThrowIfMisordered("BatchGenerateDataKey", request.Requests.Count, response.Results, static r => r.Index, static r => Zero(r.Response?.Plaintext));
        return response;
    }

    /// <summary>GenerateMac for up to 1,000 items (4 MiB of data in all).</summary>
    /// <exception cref="InvalidOperationException">The answer is not one result per request, result i answering request i (<c>Index</c>).</exception>
    public async Task<BatchGenerateMacResponse> BatchGenerateMacAsync(BatchGenerateMacRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var response = await _stub.BatchGenerateMacAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        ThrowIfMisordered("BatchGenerateMac", request.Requests.Count, response.Results, static r => r.Index, onRefusal: null);
        return response;
    }

    /// <summary>
    /// Returns when the answer is one result per request, result i naming request i (its index);
    /// otherwise runs <paramref name="onRefusal"/> on every result and throws, naming counts and
    /// positions only, never anything the results carry.
    /// </summary>
    /// <remarks>
    /// The index must equal the position, with no exception for an answer whose every index is 0
    /// (what a server from before the field sends): such an answer is refused unless it has a
    /// single result — the SDK and the server ship together.
    /// </remarks>
    private static void ThrowIfMisordered<T>(string rpc, int requests, RepeatedField<T> results, Func<T, uint> index, Action<T>? onRefusal)
    {
        var problem = results.Count != requests ? $"{results.Count} results for {requests} requests" : null;
        for (var i = 0; problem is null && i < results.Count; i++)
        {
            if (index(results[i]) != (uint)i)
            {
                problem = $"result {i} answers request {index(results[i])}";
            }
        }

        if (problem is null)
        {
            return;
        }

        if (onRefusal is not null)
        {
            foreach (var result in results)
            {
                onRefusal(result);
            }
        }

        throw new InvalidOperationException($"the KMS answered {rpc} wrongly ({problem}): the answer was refused (result i must answer request i)");
    }

    // A ByteString parsed from the wire owns its array: zeroing it through the read-only view is the only way to erase it.
    private static void Zero(ByteString? secret)
    {
        if (secret is not null)
        {
            MemoryMarshal.AsMemory(secret.Memory).Span.Clear();
        }
    }
}
