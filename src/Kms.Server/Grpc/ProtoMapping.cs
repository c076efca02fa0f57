using Google.Protobuf.Collections;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Proto = Kms.Contracts.V1;

namespace Kms.Server.Grpc;

/// <summary>Core ⇄ proto, both ways. Nothing else.</summary>
internal static class ProtoMapping
{
    // No duration field means more than a century; longer ones would overflow the times computed
    // from them. Such a duration is passed on as this ceiling: every field's own range ends far
    // below it (waiting periods and rotation periods at most a century by SettingRanges, token
    // lifetimes and quorum TTLs hours or days), so the field's own check refuses it, naming the
    // range the caller must keep to (BadInputTests.DurationFields_TenThousandYears_RefusedWithTheFieldsOwnRange).
    private const int MaxDurationDays = 100 * 366;

    public static Proto.Key ToProto(Key key)
    {
        var proto = new Proto.Key
        {
            Name = key.Name.ToString(),
            Purpose = ToProto(key.Purpose),
            State = ToProto(key.State),
            Primary = ToProto(key.Primary),
            CreateTime = Timestamp.FromDateTimeOffset(key.CreateTime),
            RotationPeriod = key.RotationPeriod is { } period ? Duration.FromTimeSpan(period) : null,
            NextRotationTime = ToTimestamp(key.NextRotationTime),
            MinDecryptionVersion = key.MinDecryptionVersion,
            DestroyTime = ToTimestamp(key.DestroyTime),
            Algorithm = ToProto(key.Primary.Algorithm),
            Residency = key.Residency ?? "",
            AllowImport = key.AllowImport,
        };
        proto.Labels.Add(key.Labels.ToDictionary(kv => kv.Key, kv => kv.Value));
        return proto;
    }

    public static Proto.KeyVersion ToProto(KeyVersion version) => new()
    {
        Name = version.Name.ToString(),
        State = ToProto(version.State),
        Algorithm = ToProto(version.Algorithm),
        Origin = version.Origin == KeyOrigin.Imported ? Proto.KeyOrigin.Imported : Proto.KeyOrigin.Generated,
        ImportJob = version.ImportJob ?? "",
        CreateTime = Timestamp.FromDateTimeOffset(version.CreateTime),
        DestroyTime = ToTimestamp(version.DestroyTime),
        DestroyEventTime = ToTimestamp(version.DestroyEventTime),
        Usage = new Proto.KeyVersionUsage
        {
            EncryptCount = version.Usage.EncryptCount,
            DecryptCount = version.Usage.DecryptCount,
            LastEncryptTime = ToTimestamp(version.Usage.LastEncryptTime),
            LastDecryptTime = ToTimestamp(version.Usage.LastDecryptTime),
        },
    };

    public static Proto.Alias ToProto(KeyAlias alias) => new()
    {
        Name = alias.Name.ToString(),
        Key = alias.Key.ToString(),
        CreateTime = Timestamp.FromDateTimeOffset(alias.CreateTime),
        UpdateTime = Timestamp.FromDateTimeOffset(alias.UpdateTime),
    };

    // Core's purpose, algorithm and import-method enums carry the proto numbers (EnumNumberingTests pins it).
    public static Proto.KeyPurpose ToProto(KeyPurpose purpose) =>
        System.Enum.IsDefined(purpose) ? (Proto.KeyPurpose)(int)purpose : Proto.KeyPurpose.Unspecified;

    public static Proto.KeyAlgorithm ToProto(KeyAlgorithm algorithm) =>
        System.Enum.IsDefined(algorithm) ? (Proto.KeyAlgorithm)(int)algorithm : Proto.KeyAlgorithm.Unspecified;

    /// <summary>A requested algorithm; unset is null (the purpose's default).</summary>
    public static KeyAlgorithm? FromProto(Proto.KeyAlgorithm algorithm, string field) =>
        algorithm == Proto.KeyAlgorithm.Unspecified ? null
        : System.Enum.IsDefined((KeyAlgorithm)(int)algorithm) ? (KeyAlgorithm)(int)algorithm
        : throw KmsErrors.InvalidArgument(field, $"unknown algorithm {(int)algorithm}");

    public static ImportMethod FromProto(Proto.ImportMethod method, string field) =>
        method == Proto.ImportMethod.Unspecified ? throw KmsErrors.InvalidArgument(field, "is required (IMPORT_METHOD_RSA_OAEP_3072_SHA1_AES_256, ...)")
        : System.Enum.IsDefined((ImportMethod)(int)method) ? (ImportMethod)(int)method
        : throw KmsErrors.InvalidArgument(field, $"unknown import method {(int)method}");

    public static Proto.ImportJob ToProto(ImportJob job, DateTimeOffset now) => new()
    {
        Name = job.Name.ToString(),
        ImportMethod = (Proto.ImportMethod)(int)job.Method,
        PublicKeyPem = job.PublicKey.ToPem(),
        PublicKeyDer = Google.Protobuf.ByteString.CopyFrom(job.PublicKey.Der),
        CreateTime = Timestamp.FromDateTimeOffset(job.CreateTime),
        ExpireTime = Timestamp.FromDateTimeOffset(job.ExpireTime),
        State = job.IsExpired(now) ? Proto.ImportJobState.Expired : Proto.ImportJobState.Active,
    };

    public static Proto.KeyState ToProto(KeyState state) => state switch
    {
        KeyState.Enabled => Proto.KeyState.Enabled,
        KeyState.Disabled => Proto.KeyState.Disabled,
        KeyState.DestroyScheduled => Proto.KeyState.DestroyScheduled,
        KeyState.Destroyed => Proto.KeyState.Destroyed,
        _ => Proto.KeyState.Unspecified,
    };

    public static KeyPurpose FromProto(Proto.KeyPurpose purpose, string field) =>
        purpose == Proto.KeyPurpose.Unspecified ? throw KmsErrors.InvalidArgument(field, "is required (KEY_PURPOSE_ENCRYPT_DECRYPT, SIGN_VERIFY, ASYMMETRIC_DECRYPT or MAC)")
        : System.Enum.IsDefined((KeyPurpose)(int)purpose) ? (KeyPurpose)(int)purpose
        : throw KmsErrors.InvalidArgument(field, $"unknown purpose {(int)purpose}");

    public static EncryptionContext Context(MapField<string, string> context, string field = "encryption_context") =>
        context.Count == 0 ? EncryptionContext.Empty : EncryptionContext.Create(context, field);

    /// <summary>
    /// A duration field: null when unset; negative or unnormalized values are the caller's error,
    /// and one longer than a century is the century ceiling, for the field's own range to refuse.
    /// </summary>
    public static TimeSpan? FromProto(Duration? duration, string field)
    {
        if (duration is null)
        {
            return null;
        }

        if (duration.Seconds < 0 || duration.Nanos < 0)
        {
            throw KmsErrors.InvalidArgument(field, "must be a positive duration");
        }

        // Not refused here: "at most 36600 days" was no field's limit (a waiting period's is 30 days).
        if (duration.Seconds > MaxDurationDays * 24L * 3600)
        {
            return TimeSpan.FromDays(MaxDurationDays);
        }

        try
        {
            return duration.ToTimeSpan();
        }
        catch (InvalidOperationException)
        {
            throw KmsErrors.InvalidArgument(field, "is not a normalized duration (nanos must be below 1,000,000,000)");
        }
    }

    /// <summary>A timestamp field: null when unset.</summary>
    public static DateTimeOffset? FromProto(Timestamp? timestamp, string field)
    {
        if (timestamp is null)
        {
            return null;
        }

        try
        {
            return timestamp.ToDateTimeOffset();
        }
        catch (InvalidOperationException)
        {
            throw KmsErrors.InvalidArgument(field, "is not a valid timestamp");
        }
    }

    /// <summary>The status of one batch item, as its single call would have answered.</summary>
    public static Proto.ItemStatus ToItemStatus(KmsException? error) => error is null
        ? new Proto.ItemStatus()
        : new Proto.ItemStatus
        {
            Code = (int)StatusCodeOf(error.Code),
            Message = error.Code == KmsErrorCode.DecryptionFailed ? KmsErrors.DecryptionFailedMessage
                : error.Code == KmsErrorCode.Internal ? "internal error"
                : error.Message,
            Field = error.Field ?? "",
        };

    /// <summary>The gRPC status code of a domain error.</summary>
    public static StatusCode StatusCodeOf(KmsErrorCode code) => code switch
    {
        KmsErrorCode.InvalidArgument or KmsErrorCode.DecryptionFailed => StatusCode.InvalidArgument,
        KmsErrorCode.NotFound => StatusCode.NotFound,
        KmsErrorCode.AlreadyExists => StatusCode.AlreadyExists,
        KmsErrorCode.FailedPrecondition => StatusCode.FailedPrecondition,
        KmsErrorCode.ResourceExhausted => StatusCode.ResourceExhausted,
        KmsErrorCode.Unavailable => StatusCode.Unavailable,
        KmsErrorCode.Unauthenticated => StatusCode.Unauthenticated,
        KmsErrorCode.PermissionDenied => StatusCode.PermissionDenied,
        _ => StatusCode.Internal,
    };

    public static Timestamp? ToTimestamp(DateTimeOffset? time) => time is { } value ? Timestamp.FromDateTimeOffset(value) : null;
}
