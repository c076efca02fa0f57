namespace Kms.Core.Names;

/// <summary>A key version's resource name: <c>tenants/{tenant}/keys/{key}/versions/{n}</c>, n from 1.</summary>
public sealed record KeyVersionName(KeyName Key, int Version)
{
    /// <inheritdoc />
    public override string ToString() => $"{Key}/versions/{Version}";
}
