using Google.Protobuf.Collections;
using Google.Protobuf.WellKnownTypes;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Proto = Kms.Contracts.V1;

namespace Kms.Server.Grpc;

/// <summary>Core ⇄ proto, both ways. Nothing else.</summary>
internal static class ProtoMapping
{
    public static Proto.Key ToProto(Key key)
    {
        var proto = new Proto.Key
        {
            Name = key.Name.ToString(),
            Purpose = ToProto(key.Purpose),
            State = ToProto(key.State),
            Primary = ToProto(key.Primary),
            CreateTime = Timestamp.FromDateTimeOffset(key.CreateTime),
        };
        proto.Labels.Add(key.Labels.ToDictionary(kv => kv.Key, kv => kv.Value));
        return proto;
    }

    public static Proto.KeyVersion ToProto(KeyVersion version) => new()
    {
        Name = version.Name.ToString(),
        State = ToProto(version.State),
        Algorithm = version.Algorithm switch
        {
            KeyAlgorithm.Aes256Gcm => Proto.KeyAlgorithm.Aes256Gcm,
            _ => Proto.KeyAlgorithm.Unspecified,
        },
        CreateTime = Timestamp.FromDateTimeOffset(version.CreateTime),
    };

    public static Proto.KeyPurpose ToProto(KeyPurpose purpose) => purpose switch
    {
        KeyPurpose.EncryptDecrypt => Proto.KeyPurpose.EncryptDecrypt,
        _ => Proto.KeyPurpose.Unspecified,
    };

    public static Proto.KeyState ToProto(KeyState state) => state switch
    {
        KeyState.Enabled => Proto.KeyState.Enabled,
        KeyState.Disabled => Proto.KeyState.Disabled,
        KeyState.DestroyScheduled => Proto.KeyState.DestroyScheduled,
        KeyState.Destroyed => Proto.KeyState.Destroyed,
        _ => Proto.KeyState.Unspecified,
    };

    public static KeyPurpose FromProto(Proto.KeyPurpose purpose, string field) => purpose switch
    {
        Proto.KeyPurpose.EncryptDecrypt => KeyPurpose.EncryptDecrypt,
        Proto.KeyPurpose.Unspecified => throw KmsErrors.InvalidArgument(field, "is required (KEY_PURPOSE_ENCRYPT_DECRYPT)"),
        _ => throw KmsErrors.InvalidArgument(field, $"unknown purpose {(int)purpose}"),
    };

    public static EncryptionContext Context(MapField<string, string> context) =>
        context.Count == 0 ? EncryptionContext.Empty : EncryptionContext.Create(context);
}
