using Google.Protobuf;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Services;

namespace Kms.Server.Grpc;

/// <summary>
/// Batch calls: each item succeeds or fails on its own, with the status its single call would have had.
/// Result i answers request i and says so (its index): the SDK refuses an answer whose results do not.
/// </summary>
internal sealed partial class KeyManagementGrpcService
{
    // An item's INTERNAL error is a server fault like any other: logged with an error id the
    // caller also gets, never with details in the answer.
    private ItemStatus ItemStatusOf(Kms.Core.Errors.KmsException? error, string method)
    {
        var status = ProtoMapping.ToItemStatus(error);
        if (error?.Code == Kms.Core.Errors.KmsErrorCode.Internal)
        {
            var errorId = Guid.NewGuid().ToString("N")[..12];
            LogItemInternal(logger, method, errorId, error);
            status.Message = $"internal error (error id {errorId}); the server log has the details";
        }

        return status;
    }

    // Each item that failed to decrypt ("decryption failed") counts towards the failed-decryption
    // alert; a bad destination name or context in BatchReEncrypt does not. Each item a key policy
    // refused (PERMISSION_DENIED, or NOT_FOUND for a caller the policy names for nothing), or that
    // named another tenant's key, counts towards the refusals alert, as the same
    // call made singly would: the batch's own rule checks only the caller's tenant, so its items'
    // refusals are the handler's.
    private static void CountItemFailures(ServerCallContext context, IEnumerable<Kms.Core.Errors.KmsException?> errors)
    {
        var failed = 0;
        var refused = 0;
        foreach (var e in errors)
        {
            failed += e?.Code == Kms.Core.Errors.KmsErrorCode.DecryptionFailed ? 1 : 0;
            refused += e?.Code == Kms.Core.Errors.KmsErrorCode.PermissionDenied || e is { Code: Kms.Core.Errors.KmsErrorCode.NotFound, ConcealedRefusal: true } ? 1 : 0;
        }

        if (failed > 0)
        {
            context.UserState[Kms.Server.Audit.AuditInterceptor.ItemDecryptFailuresKey] = failed;
        }

        if (refused > 0)
        {
            context.UserState[Kms.Server.Audit.AuditInterceptor.ItemRefusalsKey] = refused;
        }
    }

    // Each item counts towards the volume alert as a call: set before the items are served, so
    // a batch that fails as a whole still counts the work it asked for.
    private static void CountItems(ServerCallContext context, int items) =>
        context.UserState[Kms.Server.Audit.AuditInterceptor.BatchItemsKey] = items;

    [LoggerMessage(EventId = 1004, Level = LogLevel.Error, Message = "{Method}: a batch item failed with internal error {ErrorId}")]
    private static partial void LogItemInternal(ILogger logger, string method, string errorId, Exception exception);

    public override async Task<BatchEncryptResponse> BatchEncrypt(BatchEncryptRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var items = request.Requests.Select(r => new BatchItem(r.Name, r.Plaintext.ToByteArray(), r.EncryptionContext)).ToList();
        CountItems(context, items.Count);
        var results = await crypto.BatchEncryptAsync(caller, items, context.CancellationToken);
        CountItemFailures(context, results.Select(r => r.Error));
        var response = new BatchEncryptResponse();
        response.Results.AddRange(results.Select((r, i) => new BatchEncryptResult
        {
            Index = (uint)i,
            Status = ItemStatusOf(r.Error, context.Method),
            Response = r.Value is { } value
                ? new EncryptResponse { Ciphertext = UnsafeByteOperations.UnsafeWrap(value.Ciphertext), KeyVersion = value.KeyVersion.ToString() }
                : null,
        }));
        return response;
    }

    public override async Task<BatchDecryptResponse> BatchDecrypt(BatchDecryptRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var items = request.Requests.Select(r => new BatchItem(null, r.Ciphertext.ToByteArray(), r.EncryptionContext)).ToList();
        CountItems(context, items.Count);
        var results = await crypto.BatchDecryptAsync(caller, items, context.CancellationToken);
        CountItemFailures(context, results.Select(r => r.Error));
        var response = new BatchDecryptResponse();
        response.Results.AddRange(results.Select((r, i) => new BatchDecryptResult
        {
            Index = (uint)i,
            Status = ItemStatusOf(r.Error, context.Method),
            Response = r.Value is { } value
                ? new DecryptResponse { Plaintext = WrapSecret(value.Plaintext, context), KeyVersion = value.KeyVersion.ToString() }
                : null,
        }));
        return response;
    }

    public override async Task<BatchReEncryptResponse> BatchReEncrypt(BatchReEncryptRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var items = request.Requests
            .Select(r => new BatchReEncryptItem(r.Ciphertext.ToByteArray(), r.SourceEncryptionContext, r.DestinationName, r.DestinationEncryptionContext))
            .ToList();
        CountItems(context, items.Count);
        var results = await crypto.BatchReEncryptAsync(caller, items, context.CancellationToken);
        CountItemFailures(context, results.Select(r => r.Error));
        var response = new BatchReEncryptResponse();
        response.Results.AddRange(results.Select((r, i) => new BatchReEncryptResult
        {
            Index = (uint)i,
            Status = ItemStatusOf(r.Error, context.Method),
            Response = r.Value is { } value
                ? new ReEncryptResponse
                {
                    Ciphertext = UnsafeByteOperations.UnsafeWrap(value.Ciphertext),
                    SourceKeyVersion = value.SourceKeyVersion.ToString(),
                    KeyVersion = value.KeyVersion.ToString(),
                }
                : null,
        }));
        return response;
    }

    public override async Task<BatchGenerateDataKeyResponse> BatchGenerateDataKey(BatchGenerateDataKeyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var items = request.Requests.Select(r => new BatchItem(r.Name, null, r.EncryptionContext)).ToList();
        CountItems(context, items.Count);
        var results = await crypto.BatchGenerateDataKeyAsync(caller, items, context.CancellationToken);
        CountItemFailures(context, results.Select(r => r.Error));
        var response = new BatchGenerateDataKeyResponse();
        response.Results.AddRange(results.Select((r, i) => new BatchGenerateDataKeyResult
        {
            Index = (uint)i,
            Status = ItemStatusOf(r.Error, context.Method),
            Response = r.Value is { } value
                ? new GenerateDataKeyResponse
                {
                    Plaintext = WrapSecret(value.Plaintext, context),
                    Ciphertext = UnsafeByteOperations.UnsafeWrap(value.Ciphertext),
                    KeyVersion = value.KeyVersion.ToString(),
                }
                : null,
        }));
        return response;
    }

    public override async Task<BatchGenerateMacResponse> BatchGenerateMac(BatchGenerateMacRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var items = request.Requests.Select(r => new BatchMacItem(r.Name, r.Data.ToByteArray())).ToList();
        CountItems(context, items.Count);
        var results = await signing.BatchGenerateMacAsync(caller, items, context.CancellationToken);
        CountItemFailures(context, results.Select(r => r.Error));
        var response = new BatchGenerateMacResponse();
        response.Results.AddRange(results.Select((r, i) => new BatchGenerateMacResult
        {
            Index = (uint)i,
            Status = ItemStatusOf(r.Error, context.Method),
            Response = r.Value is { } value
                ? new GenerateMacResponse { Mac = UnsafeByteOperations.UnsafeWrap(value.Mac), KeyVersion = value.KeyVersion.ToString() }
                : null,
        }));
        return response;
    }
}
