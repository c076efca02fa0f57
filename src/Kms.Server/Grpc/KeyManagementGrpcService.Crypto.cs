using Google.Protobuf;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Names;

namespace Kms.Server.Grpc;

/// <summary>Encrypt, Decrypt, ReEncrypt, data keys and random bytes.</summary>
internal sealed partial class KeyManagementGrpcService
{
    public override async Task<EncryptResponse> Encrypt(EncryptRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = KeyReference.Parse(request.Name, "name");
        var encryptionContext = ProtoMapping.Context(request.EncryptionContext);
        var result = await crypto.EncryptAsync(caller, key, request.Plaintext.ToByteArray(), encryptionContext, context.CancellationToken);
        return new EncryptResponse
        {
            Ciphertext = UnsafeByteOperations.UnsafeWrap(result.Ciphertext),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<DecryptResponse> Decrypt(DecryptRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var encryptionContext = ProtoMapping.Context(request.EncryptionContext);
        var result = await crypto.DecryptAsync(caller, request.Ciphertext.ToByteArray(), encryptionContext, context.CancellationToken);
        return new DecryptResponse
        {
            Plaintext = WrapSecret(result.Plaintext, context),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<ReEncryptResponse> ReEncrypt(ReEncryptRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var destination = KeyReference.Parse(request.DestinationName, "destination_name");
        var result = await crypto.ReEncryptAsync(
            caller,
            request.Ciphertext.ToByteArray(),
            ProtoMapping.Context(request.SourceEncryptionContext, "source_encryption_context"),
            destination,
            ProtoMapping.Context(request.DestinationEncryptionContext, "destination_encryption_context"),
            context.CancellationToken);
        return new ReEncryptResponse
        {
            Ciphertext = UnsafeByteOperations.UnsafeWrap(result.Ciphertext),
            SourceKeyVersion = result.SourceKeyVersion.ToString(),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<GenerateDataKeyResponse> GenerateDataKey(GenerateDataKeyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = KeyReference.Parse(request.Name, "name");
        var result = await crypto.GenerateDataKeyAsync(caller, key, ProtoMapping.Context(request.EncryptionContext), context.CancellationToken);
        return new GenerateDataKeyResponse
        {
            Plaintext = WrapSecret(result.Plaintext, context),
            Ciphertext = UnsafeByteOperations.UnsafeWrap(result.Ciphertext),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<GenerateDataKeyWithoutPlaintextResponse> GenerateDataKeyWithoutPlaintext(GenerateDataKeyWithoutPlaintextRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = KeyReference.Parse(request.Name, "name");
        using var result = await crypto.GenerateDataKeyAsync(caller, key, ProtoMapping.Context(request.EncryptionContext), context.CancellationToken);
        return new GenerateDataKeyWithoutPlaintextResponse
        {
            Ciphertext = UnsafeByteOperations.UnsafeWrap(result.Ciphertext),
            KeyVersion = result.KeyVersion.ToString(),
        };
    }

    public override async Task<GenerateRandomResponse> GenerateRandom(GenerateRandomRequest request, ServerCallContext context)
    {
        CallerResolver.Current(context);
        var bytes = await crypto.GenerateRandomAsync(request.LengthBytes, context.CancellationToken);
        return new GenerateRandomResponse { Data = UnsafeByteOperations.UnsafeWrap(bytes) };
    }
}
