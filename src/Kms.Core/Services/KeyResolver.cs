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

    /// <summary>
    /// What Sign, Verify, the MAC calls and GetKeyAttestation accept as <c>name</c>: a key
    /// version, or a key or alias (meaning its primary version), with its key and material.
    /// </summary>
    /// <exception cref="KmsException">InvalidArgument for a malformed name; NotFound, also outside the caller's tenant.</exception>
    /// <param name="caller">Who asks.</param>
    /// <param name="name">What the caller named.</param>
    /// <param name="cancellationToken">Cancels the lookups.</param>
    /// <param name="field">The request field a malformed name is reported as (a batch item's: <c>requests[i].name</c>).</param>
    public async Task<KeyVersionMaterial> ResolveVersionAsync(Caller caller, string? name, CancellationToken cancellationToken, string field = "name")
    {
        if (ResourceSegments.Is(name, ResourceSegments.KeyCollection, "versions"))
        {
            var versionName = KeyVersionName.Parse(name, field);
            caller.EnsureSameTenant(versionName.Key.Tenant, name);
            var version = await store.GetVersionAsync(versionName, cancellationToken) ?? throw KmsErrors.NotFound(name);
            return await store.FindVersionMaterialAsync(versionName.Key.Tenant, version.Id, cancellationToken) ?? throw KmsErrors.NotFound(name);
        }

        var reference = KeyReference.Parse(name, field);
        var keyName = await ResolveAsync(caller, reference, cancellationToken);
        return await store.GetPrimaryMaterialAsync(keyName, cancellationToken) ?? throw KmsErrors.NotFound(reference.ToString());
    }
}
