using System.Text.RegularExpressions;
using Kms.Core.Errors;

namespace Kms.Core.Names;

/// <summary>An import job's resource name: <c>tenants/{tenant}/importJobs/{job}</c>.</summary>
public sealed partial record ImportJobName(TenantId Tenant, string JobId)
{
    /// <summary>Parses an import job resource name.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static ImportJobName Parse(string? name, string field)
    {
        var match = NamePattern().Match(name ?? "");
        return match.Success && TenantId.IsValid(match.Groups["tenant"].Value)
            ? new ImportJobName(TenantId.Parse(match.Groups["tenant"].Value, field), match.Groups["job"].Value)
            : throw KmsErrors.InvalidArgument(field, "must have the form tenants/{tenant}/importJobs/{job}");
    }

    /// <summary>Validates an import job id chosen by a caller.</summary>
    public static ImportJobName Create(TenantId tenant, string? jobId, string field = "import_job_id") =>
        !string.IsNullOrEmpty(jobId) && IdPattern().IsMatch(jobId)
            ? new ImportJobName(tenant, jobId)
            : throw KmsErrors.InvalidArgument(field, "an import job id is 1 to 63 of [a-zA-Z0-9_-]");

    /// <inheritdoc />
    public override string ToString() => $"tenants/{Tenant.Value}/importJobs/{JobId}";

    [GeneratedRegex("^tenants/(?<tenant>[^/]+)/importJobs/(?<job>[a-zA-Z0-9_-]{1,63})\\z", RegexOptions.CultureInvariant)]
    private static partial Regex NamePattern();

    [GeneratedRegex("^[a-zA-Z0-9_-]{1,63}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex IdPattern();
}
