using Microsoft.AspNetCore.DataProtection;
using Microsoft.Extensions.Options;

namespace Kms.Client.DataProtection;

/// <summary>
/// Refuses Data Protection's options when <c>ProtectKeysWithKms</c> has no application name to
/// bind the key ring to (<see cref="KmsKeyRingProtection.NameProblem"/>): under a host at
/// startup (ValidateOnStart), else when Data Protection is first resolved — before any key ring
/// entry is written or read under a name other applications share.
/// </summary>
internal sealed class KmsApplicationNameValidation(IServiceProvider services) : IValidateOptions<DataProtectionOptions>
{
    public ValidateOptionsResult Validate(string? name, DataProtectionOptions options)
    {
        if (name != Options.DefaultName)
        {
            return ValidateOptionsResult.Skip;
        }

        var problem = KmsKeyRingProtection.From(services).NameProblem(options, services);
        return problem is null ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problem);
    }
}
