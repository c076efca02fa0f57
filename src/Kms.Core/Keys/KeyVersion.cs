using Kms.Core.Names;

namespace Kms.Core.Keys;

/// <summary>Metadata of one version of a key. Safe to log: it holds no material.</summary>
public sealed record KeyVersion(
    KeyVersionName Name,
    KeyVersionId Id,
    KeyState State,
    KeyAlgorithm Algorithm,
    DateTimeOffset CreateTime);
