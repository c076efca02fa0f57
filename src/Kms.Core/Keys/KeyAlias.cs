using Kms.Core.Names;

namespace Kms.Core.Keys;

/// <summary>An alias: another name for a key of the same tenant, re-pointable without touching callers.</summary>
public sealed record KeyAlias(AliasName Name, KeyName Key, DateTimeOffset CreateTime, DateTimeOffset UpdateTime);
