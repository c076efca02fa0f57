using Kms.Core.Names;

namespace Kms.Core.Keys;

/// <summary>Metadata of a key and its primary version. Safe to log: it holds no material.</summary>
public sealed record Key(
    KeyName Name,
    KeyPurpose Purpose,
    KeyState State,
    KeyVersion Primary,
    DateTimeOffset CreateTime,
    KeyLabels Labels);
