using Google.Protobuf;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Services;

namespace Kms.Server.Grpc;

/// <summary>
/// kms.v1.KeyManagementService: parses requests into domain values, calls Core, maps the
/// results back. Errors are <see cref="KmsException"/>s mapped by <see cref="ErrorInterceptor"/>.
/// </summary>
internal sealed class KeyManagementGrpcService(KeyService keys, CryptoService crypto, CallerResolver callers)
    : KeyManagementService.KeyManagementServiceBase
{
    public override async Task<CreateKeyResponse> CreateKey(CreateKeyRequest request, ServerCallContext context)
    {
        var caller = callers.Resolve(context);
        var parent = TenantId.ParseResourceName(request.Parent, "parent");
        if (request.Key is null)
        {
            throw KmsErrors.InvalidArgument("key", "is required (at least key.purpose)");
        }

        var command = new CreateKeyCommand(
            parent,
            request.KeyId,
            ProtoMapping.FromProto(request.Key.Purpose, "key.purpose"),
            KeyLabels.Create(request.Key.Labels),
            request.RequestId);
        var result = await keys.CreateKeyAsync(caller, command, context.CancellationToken);
        return new CreateKeyResponse { Key = ProtoMapping.ToProto(result.Key) };
    }

    public override async Task<GetKeyResponse> GetKey(GetKeyRequest request, ServerCallContext context)
    {
        var caller = callers.Resolve(context);
        var key = await keys.GetKeyAsync(caller, KeyName.Parse(request.Name, "name"), context.CancellationToken);
        return new GetKeyResponse { Key = ProtoMapping.ToProto(key) };
    }

    public override async Task<ListKeysResponse> ListKeys(ListKeysRequest request, ServerCallContext context)
    {
        var caller = callers.Resolve(context);
        var parent = TenantId.ParseResourceName(request.Parent, "parent");
        var page = await keys.ListKeysAsync(caller, parent, request.PageSize, request.PageToken, context.CancellationToken);
        var response = new ListKeysResponse { NextPageToken = page.NextPageToken ?? "" };
        response.Keys.AddRange(page.Keys.Select(ProtoMapping.ToProto));
        return response;
    }

    public override async Task<EncryptResponse> Encrypt(EncryptRequest request, ServerCallContext context)
    {
        var caller = callers.Resolve(context);
        var name = KeyName.Parse(request.Name, "name");
        var encryptionContext = ProtoMapping.Context(request.EncryptionContext);
        var result = await crypto.EncryptAsync(caller, name, request.Plaintext.ToByteArray(), encryptionContext, context.CancellationToken);
        return new EncryptResponse
        {
            Ciphertext = UnsafeByteOperations.UnsafeWrap(result.Ciphertext),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<DecryptResponse> Decrypt(DecryptRequest request, ServerCallContext context)
    {
        var caller = callers.Resolve(context);
        var encryptionContext = ProtoMapping.Context(request.EncryptionContext);
        var result = await crypto.DecryptAsync(caller, request.Ciphertext.ToByteArray(), encryptionContext, context.CancellationToken);
        return new DecryptResponse
        {
            Plaintext = WrapSecret(result.Plaintext, context),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<GenerateDataKeyResponse> GenerateDataKey(GenerateDataKeyRequest request, ServerCallContext context)
    {
        var caller = callers.Resolve(context);
        var name = KeyName.Parse(request.Name, "name");
        var result = await crypto.GenerateDataKeyAsync(caller, name, ProtoMapping.Context(request.EncryptionContext), context.CancellationToken);
        return new GenerateDataKeyResponse
        {
            Plaintext = WrapSecret(result.Plaintext, context),
            Ciphertext = UnsafeByteOperations.UnsafeWrap(result.Ciphertext),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<GenerateDataKeyWithoutPlaintextResponse> GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextRequest request, ServerCallContext context)
    {
        var caller = callers.Resolve(context);
        var name = KeyName.Parse(request.Name, "name");
        using var result = await crypto.GenerateDataKeyAsync(caller, name, ProtoMapping.Context(request.EncryptionContext), context.CancellationToken);
        return new GenerateDataKeyWithoutPlaintextResponse
        {
            Ciphertext = UnsafeByteOperations.UnsafeWrap(result.Ciphertext),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<GenerateRandomResponse> GenerateRandom(GenerateRandomRequest request, ServerCallContext context)
    {
        callers.Resolve(context);
        var bytes = await crypto.GenerateRandomAsync(request.LengthBytes, context.CancellationToken);
        return new GenerateRandomResponse { Data = UnsafeByteOperations.UnsafeWrap(bytes) };
    }

    // The response references the secret's buffer instead of copying it, and the buffer is
    // zeroed when the request ends (after the response has been written).
    private static ByteString WrapSecret(SecretBytes secret, ServerCallContext context)
    {
        context.GetHttpContext().Response.RegisterForDispose(secret);
        return UnsafeByteOperations.UnsafeWrap(secret.UnsafeArray);
    }
}
