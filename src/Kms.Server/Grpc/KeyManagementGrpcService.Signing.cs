using Google.Protobuf;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Services;
using CoreSignatureFormat = Kms.Core.Services.SignatureFormat;

namespace Kms.Server.Grpc;

/// <summary>Sign, Verify, GetPublicKey, AsymmetricDecrypt, the MAC calls, BYOK import and key attestation.</summary>
internal sealed partial class KeyManagementGrpcService
{
    public override async Task<SignResponse> Sign(SignRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var result = await signing.SignAsync(caller, request.Name, Input(request.InputCase == SignRequest.InputOneofCase.Message, request.Message, request.InputCase == SignRequest.InputOneofCase.Digest, request.Digest),
            Format(request.SignatureFormat), context.CancellationToken);
        return new SignResponse
        {
            Signature = UnsafeByteOperations.UnsafeWrap(result.Signature),
            KeyVersion = result.KeyVersion.ToString(),
            Algorithm = ProtoMapping.ToProto(result.Algorithm),
        };
    }

    public override async Task<VerifyResponse> Verify(VerifyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var result = await signing.VerifyAsync(caller, request.Name, Input(request.InputCase == VerifyRequest.InputOneofCase.Message, request.Message, request.InputCase == VerifyRequest.InputOneofCase.Digest, request.Digest),
            request.Signature.ToByteArray(), Format(request.SignatureFormat), context.CancellationToken);
        return new VerifyResponse { Valid = result.Valid, KeyVersion = result.KeyVersion.ToString() };
    }

    public override async Task<GetPublicKeyResponse> GetPublicKey(GetPublicKeyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var result = await signing.GetPublicKeyAsync(caller, request.Name, context.CancellationToken);
        return new GetPublicKeyResponse
        {
            KeyVersion = result.KeyVersion.ToString(),
            Algorithm = ProtoMapping.ToProto(result.Algorithm),
            Pem = result.PublicKey.ToPem(),
            Der = ByteString.CopyFrom(result.PublicKey.Der),
        };
    }

    public override async Task<AsymmetricDecryptResponse> AsymmetricDecrypt(AsymmetricDecryptRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var result = await signing.AsymmetricDecryptAsync(caller, request.Name, request.Ciphertext.ToByteArray(), context.CancellationToken);
        return new AsymmetricDecryptResponse { Plaintext = WrapSecret(result.Plaintext, context), KeyVersion = result.KeyVersion.ToString() };
    }

    public override async Task<GenerateMacResponse> GenerateMac(GenerateMacRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var result = await signing.GenerateMacAsync(caller, request.Name, request.Data.ToByteArray(), context.CancellationToken);
        return new GenerateMacResponse { Mac = UnsafeByteOperations.UnsafeWrap(result.Mac), KeyVersion = result.KeyVersion.ToString() };
    }

    public override async Task<VerifyMacResponse> VerifyMac(VerifyMacRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var result = await signing.VerifyMacAsync(caller, request.Name, request.Data.ToByteArray(), request.Mac.ToByteArray(), context.CancellationToken);
        return new VerifyMacResponse { Valid = result.Valid, KeyVersion = result.KeyVersion.ToString() };
    }

    public override async Task<CreateImportJobResponse> CreateImportJob(CreateImportJobRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var parent = TenantId.ParseResourceName(request.Parent, "parent");
        var method = ProtoMapping.FromProto(request.ImportJob?.ImportMethod ?? ImportMethod.Unspecified, "import_job.import_method");
        var job = await keys.CreateImportJobAsync(caller, parent, request.ImportJobId, method, context.CancellationToken);
        return new CreateImportJobResponse { ImportJob = ProtoMapping.ToProto(job, time.GetUtcNow()) };
    }

    public override async Task<GetImportJobResponse> GetImportJob(GetImportJobRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var job = await keys.GetImportJobAsync(caller, ImportJobName.Parse(request.Name, "name"), context.CancellationToken);
        return new GetImportJobResponse { ImportJob = ProtoMapping.ToProto(job, time.GetUtcNow()) };
    }

    public override async Task<ImportKeyVersionResponse> ImportKeyVersion(ImportKeyVersionRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var command = new ImportKeyVersionCommand(
            ImportParent(request.Parent),
            ImportJobName.Parse(request.ImportJob, "import_job"),
            ProtoMapping.FromProto(request.Algorithm, "algorithm"),
            request.WrappedKey.ToByteArray(),
            request.PublicKey.IsEmpty ? null : request.PublicKey.ToByteArray(),
            request.RequestId);
        var version = await keys.ImportKeyVersionAsync(caller, command, context.CancellationToken);
        return new ImportKeyVersionResponse { KeyVersion = ProtoMapping.ToProto(version) };
    }

    // A key, not an alias (as AWS and Google Cloud import into a key): the answer names the version
    // added, and a key-importer may not read aliases, so it would tell them which key the alias names.
    private static KeyName ImportParent(string parent) =>
        ResourceSegments.Is(parent, ResourceSegments.Collection, "aliases")
            ? throw KmsErrors.InvalidArgument("parent", "must be a key (tenants/{tenant}/keys/{key}); an alias is not accepted here: import into the key itself")
            : KeyName.Parse(parent, "parent");

    public override async Task<GetKeyAttestationResponse> GetKeyAttestation(GetKeyAttestationRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var result = await attestation.GetKeyAttestationAsync(caller, request.Name, context.CancellationToken);
        return new GetKeyAttestationResponse
        {
            Statement = UnsafeByteOperations.UnsafeWrap(result.Statement),
            Signature = UnsafeByteOperations.UnsafeWrap(result.Signature),
            SigningKeyFingerprint = result.Attestation.SigningKeyFingerprint,
        };
    }

    private static SignInput Input(bool hasMessage, ByteString message, bool hasDigest, ByteString digest) =>
        hasMessage ? new SignInput(message.ToByteArray(), null)
        : hasDigest ? new SignInput(null, digest.ToByteArray())
        : throw KmsErrors.InvalidArgument("message", "give the message or its digest");

    private static CoreSignatureFormat Format(Kms.Contracts.V1.SignatureFormat format) => format switch
    {
        Kms.Contracts.V1.SignatureFormat.Unspecified or Kms.Contracts.V1.SignatureFormat.Der => CoreSignatureFormat.Der,
        Kms.Contracts.V1.SignatureFormat.P1363 => CoreSignatureFormat.P1363,
        _ => throw KmsErrors.InvalidArgument("signature_format", $"unknown format {(int)format}"),
    };
}
