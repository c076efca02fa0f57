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
/// Split by concern: keys and versions here; crypto, aliases and batches in the other parts.
/// </summary>
internal sealed partial class KeyManagementGrpcService(
    KeyService keys,
    CryptoService crypto,
    AliasService aliases,
    KeyAccessService keyAccess,
    SigningService signing,
    AttestationService attestation,
    TrustedTime time,
    ListPageTokens pageTokens,
    ILogger<KeyManagementGrpcService> logger)
    : KeyManagementService.KeyManagementServiceBase
{
    private static readonly string[] UpdatableKeyFields = ["labels", "rotation_period", "next_rotation_time", "min_decryption_version"];

    public override async Task<CreateKeyResponse> CreateKey(CreateKeyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var parent = TenantId.ParseResourceName(request.Parent, "parent");
        if (request.Key is null)
        {
            throw KmsErrors.InvalidArgument("key", "is required (at least key.purpose)");
        }

        var purpose = ProtoMapping.FromProto(request.Key.Purpose, "key.purpose");
        var command = new CreateKeyCommand(
            parent,
            request.KeyId,
            purpose,
            KeyLabels.Create(request.Key.Labels),
            request.RequestId)
        {
            Algorithm = KeyAlgorithms.Choose(purpose, ProtoMapping.FromProto(request.Key.Algorithm, "key.algorithm"), "key.algorithm"),
            RotationPeriod = ProtoMapping.FromProto(request.Key.RotationPeriod, "key.rotation_period"),
            NextRotationTime = ProtoMapping.FromProto(request.Key.NextRotationTime, "key.next_rotation_time"),
            MinDecryptionVersion = request.Key.MinDecryptionVersion,
            Residency = request.Key.Residency is { Length: > 0 } residency ? residency : null,
            AllowImport = request.Key.AllowImport,
        };
        var result = await keys.CreateKeyAsync(caller, command, context.CancellationToken);
        return new CreateKeyResponse { Key = ProtoMapping.ToProto(result.Key) };
    }

    public override async Task<GetKeyResponse> GetKey(GetKeyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = await keys.GetKeyAsync(caller, KeyName.Parse(request.Name, "name"), context.CancellationToken);
        return new GetKeyResponse { Key = ProtoMapping.ToProto(key) };
    }

    public override async Task<ListKeysResponse> ListKeys(ListKeysRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var parent = TenantId.ParseResourceName(request.Parent, "parent");
        string?[] filter = [parent.ResourceName];
        var page = await keys.ListKeysAsync(caller, parent, request.PageSize,
            pageTokens.Open("ListKeys", caller, filter, request.PageToken, "parent"), context.CancellationToken);
        var response = new ListKeysResponse { NextPageToken = pageTokens.Seal("ListKeys", caller, filter, page.NextPageToken) };
        response.Keys.AddRange(page.Items.Select(ProtoMapping.ToProto));
        return response;
    }

    public override async Task<UpdateKeyResponse> UpdateKey(UpdateKeyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        if (request.Key is null)
        {
            throw KmsErrors.InvalidArgument("key", "is required (with key.name)");
        }

        var name = KeyName.Parse(request.Key.Name, "key.name");
        var paths = request.UpdateMask?.Paths ?? [];
        if (paths.Count == 0)
        {
            throw KmsErrors.InvalidArgument("update_mask", $"is required: some of {string.Join(", ", UpdatableKeyFields)}");
        }

        // Each field once, and no more paths than there are fields: a mask of 650,000 "labels"
        // would otherwise re-validate the labels 650,000 times.
        if (paths.Count > UpdatableKeyFields.Length || paths.Distinct(StringComparer.Ordinal).Count() != paths.Count)
        {
            throw KmsErrors.InvalidArgument("update_mask", $"names each field at most once: some of {string.Join(", ", UpdatableKeyFields)}");
        }

        var update = new KeyUpdate();
        foreach (var path in paths)
        {
            update = path switch
            {
                "labels" => update with { Labels = KeyLabels.Create(request.Key.Labels) },
                "rotation_period" => update with { RotationPeriod = new(ProtoMapping.FromProto(request.Key.RotationPeriod, "key.rotation_period")) },
                "next_rotation_time" => update with { NextRotationTime = new(ProtoMapping.FromProto(request.Key.NextRotationTime, "key.next_rotation_time")) },
                "min_decryption_version" => update with { MinDecryptionVersion = request.Key.MinDecryptionVersion },
                _ => throw KmsErrors.InvalidArgument("update_mask", $"'{KmsErrors.Printable(path)}' cannot be updated; updatable: {string.Join(", ", UpdatableKeyFields)}"),
            };
        }

        return new UpdateKeyResponse { Key = ProtoMapping.ToProto(await keys.UpdateKeyAsync(caller, name, update, context.CancellationToken)) };
    }

    public override async Task<RotateKeyResponse> RotateKey(RotateKeyRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = await keys.RotateKeyAsync(caller, KeyReference.Parse(request.Name, "name"), request.RequestId, context.CancellationToken);
        return new RotateKeyResponse { Key = ProtoMapping.ToProto(key) };
    }

    public override async Task<ListKeyVersionsResponse> ListKeyVersions(ListKeyVersionsRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = KeyName.Parse(request.Parent, "parent");
        string?[] filter = [key.ToString()];
        var page = await keys.ListKeyVersionsAsync(caller, key, request.PageSize,
            pageTokens.Open("ListKeyVersions", caller, filter, request.PageToken, "parent"), context.CancellationToken);
        var response = new ListKeyVersionsResponse { NextPageToken = pageTokens.Seal("ListKeyVersions", caller, filter, page.NextPageToken) };
        response.KeyVersions.AddRange(page.Items.Select(ProtoMapping.ToProto));
        return response;
    }

    public override async Task<GetKeyVersionResponse> GetKeyVersion(GetKeyVersionRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var version = await keys.GetKeyVersionAsync(caller, KeyVersionName.Parse(request.Name, "name"), context.CancellationToken);
        return new GetKeyVersionResponse { KeyVersion = ProtoMapping.ToProto(version) };
    }

    public override async Task<UpdatePrimaryVersionResponse> UpdatePrimaryVersion(UpdatePrimaryVersionRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = await keys.UpdatePrimaryVersionAsync(caller, KeyName.Parse(request.Name, "name"), request.Version, context.CancellationToken);
        return new UpdatePrimaryVersionResponse { Key = ProtoMapping.ToProto(key) };
    }

    public override async Task<EnableKeyResponse> EnableKey(EnableKeyRequest request, ServerCallContext context) =>
        new() { Key = ProtoMapping.ToProto(await keys.EnableKeyAsync(CallerResolver.Current(context), KeyName.Parse(request.Name, "name"), context.CancellationToken)) };

    public override async Task<DisableKeyResponse> DisableKey(DisableKeyRequest request, ServerCallContext context) =>
        new() { Key = ProtoMapping.ToProto(await keys.DisableKeyAsync(CallerResolver.Current(context), KeyName.Parse(request.Name, "name"), context.CancellationToken)) };

    public override async Task<EnableKeyVersionResponse> EnableKeyVersion(EnableKeyVersionRequest request, ServerCallContext context) =>
        new() { KeyVersion = ProtoMapping.ToProto(await keys.EnableKeyVersionAsync(CallerResolver.Current(context), KeyVersionName.Parse(request.Name, "name"), context.CancellationToken)) };

    public override async Task<DisableKeyVersionResponse> DisableKeyVersion(DisableKeyVersionRequest request, ServerCallContext context) =>
        new() { KeyVersion = ProtoMapping.ToProto(await keys.DisableKeyVersionAsync(CallerResolver.Current(context), KeyVersionName.Parse(request.Name, "name"), context.CancellationToken)) };

    public override async Task<ScheduleKeyDeletionResponse> ScheduleKeyDeletion(ScheduleKeyDeletionRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = await keys.ScheduleKeyDeletionAsync(caller, KeyName.Parse(request.Name, "name"),
            ProtoMapping.FromProto(request.WaitingPeriod, "waiting_period"), request.RequestId, context.CancellationToken);
        return new ScheduleKeyDeletionResponse { Key = ProtoMapping.ToProto(key) };
    }

    public override async Task<CancelKeyDeletionResponse> CancelKeyDeletion(CancelKeyDeletionRequest request, ServerCallContext context) =>
        new() { Key = ProtoMapping.ToProto(await keys.CancelKeyDeletionAsync(CallerResolver.Current(context), KeyName.Parse(request.Name, "name"), request.RequestId, context.CancellationToken)) };

    public override async Task<ScheduleKeyVersionDestructionResponse> ScheduleKeyVersionDestruction(ScheduleKeyVersionDestructionRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var version = await keys.ScheduleKeyVersionDestructionAsync(caller, KeyVersionName.Parse(request.Name, "name"),
            ProtoMapping.FromProto(request.WaitingPeriod, "waiting_period"), request.RequestId, context.CancellationToken);
        return new ScheduleKeyVersionDestructionResponse { KeyVersion = ProtoMapping.ToProto(version) };
    }

    public override async Task<RestoreKeyVersionResponse> RestoreKeyVersion(RestoreKeyVersionRequest request, ServerCallContext context) =>
        new() { KeyVersion = ProtoMapping.ToProto(await keys.RestoreKeyVersionAsync(CallerResolver.Current(context), KeyVersionName.Parse(request.Name, "name"), request.RequestId, context.CancellationToken)) };

    // The response references the secret's buffer instead of copying it, and the buffer is
    // zeroed when the request ends (after the response has been written).
    private static ByteString WrapSecret(SecretBytes secret, ServerCallContext context)
    {
        context.GetHttpContext().Response.RegisterForDispose(secret);
        return UnsafeByteOperations.UnsafeWrap(secret.UnsafeArray);
    }
}
