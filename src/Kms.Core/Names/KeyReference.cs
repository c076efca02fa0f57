using Kms.Core.Errors;

namespace Kms.Core.Names;

/// <summary>What crypto RPCs accept as <c>name</c>: a key's resource name or an alias's.</summary>
public abstract record KeyReference
{
    private KeyReference()
    {
    }

    /// <summary>A key name is always a valid reference.</summary>
    public static implicit operator KeyReference(KeyName name) => FromKeyName(name);

    /// <summary>A reference to the key named directly.</summary>
    public static KeyReference FromKeyName(KeyName name) => new ToKey(name);

    /// <summary>The tenant the reference lives in.</summary>
    public abstract TenantId Tenant { get; }

    /// <summary>Parses <c>tenants/{t}/keys/{k}</c> or <c>tenants/{t}/aliases/{a}</c>.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static KeyReference Parse(string? name, string field)
    {
        if (ResourceSegments.Is(name, ResourceSegments.Collection, "aliases"))
        {
            return new ToAlias(AliasName.Parse(name, field));
        }

        if (!ResourceSegments.Is(name, ResourceSegments.Collection, "keys"))
        {
            throw KmsErrors.InvalidArgument(field, "must be a key (tenants/{tenant}/keys/{key}) or an alias (tenants/{tenant}/aliases/{alias})");
        }

        return new ToKey(KeyName.Parse(name, field));
    }

    /// <summary>A key named directly.</summary>
    public sealed record ToKey(KeyName Name) : KeyReference
    {
        /// <inheritdoc />
        public override TenantId Tenant => Name.Tenant;

        /// <inheritdoc />
        public override string ToString() => Name.ToString();
    }

    /// <summary>A key named through an alias.</summary>
    public sealed record ToAlias(AliasName Name) : KeyReference
    {
        /// <inheritdoc />
        public override TenantId Tenant => Name.Tenant;

        /// <inheritdoc />
        public override string ToString() => Name.ToString();
    }
}
