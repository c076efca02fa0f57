using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>Turns what a caller named (a key or an alias of it) into the key's name, inside the caller's tenant.</summary>
public sealed class KeyResolver(IKeyStore store)
{
    /// <summary>The key named, directly or through an alias.</summary>
    /// <exception cref="KmsException">NotFound for a missing alias, or one outside the caller's tenant.</exception>
    public async Task<KeyName> ResolveAsync(Caller caller, KeyReference reference, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(reference.Tenant, reference.ToString()!);
        return reference switch
        {
            KeyReference.ToKey direct => direct.Name,
            KeyReference.ToAlias alias => (await store.GetAliasAsync(alias.Name, cancellationToken))?.Key ?? throw KmsErrors.NotFound(alias.Name.ToString()),
            _ => throw new ArgumentOutOfRangeException(nameof(reference)),
        };
    }
}
