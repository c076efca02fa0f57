using Microsoft.Extensions.Logging;

namespace Kms.Client.DataProtection;

/// <summary>ProtectKeysWithKms's log events (in the client's ids, catalogued in docs/observability.md). Key ids and reasons only: never a secret.</summary>
internal static partial class DataProtectionLog
{
    [LoggerMessage(EventId = 3008, Level = LogLevel.Warning, Message = "Data Protection key {KeyId} dropped from the key ring as it was read: {Reason}. ProtectKeysWithKms reads only keys whose secret the KMS encrypted; set KmsDataProtectionOptions.ReadUnencryptedKeys = true to read keys written before it was turned on, until they expire")]
    public static partial void UnencryptedKeyDropped(ILogger logger, string keyId, string reason);

    [LoggerMessage(EventId = 3009, Level = LogLevel.Warning, Message = "Data Protection key {KeyId} refused as it was read: its entry was decrypted by KMS key {EntryKey}, not by {Taken}. Encrypted under another key of the KMS (by someone with ENCRYPT on it who may write the repository, or before a key switch: list that key in KmsDataProtectionOptions.AdditionalDecryptionKeys)")]
    public static partial void EntryOfAnotherKmsKeyRefused(ILogger logger, string keyId, string entryKey, string taken);
}
