using Kms.Core.Quorum;

namespace Kms.Cli.Commands;

/// <summary>
/// The values <c>kms audit list --operation</c> and <c>--outcome</c> can match: the server matches
/// them exactly, case included, so a value that names nothing it writes lists no event — which an
/// auditor would read as "nobody did that". Such a value is refused before any call, with the
/// close matches. Principals and resources are not checked: they are names anyone can create.
/// </summary>
internal static class AuditFilterValues
{
    // What the server (and the ceremony) writes besides the kms.v1 methods (docs/audit-format.md).
    private static readonly string[] OwnOperations =
    [
        "lifecycle/ScheduledRotation", "lifecycle/UsageRotation", "lifecycle/Destruction", "lifecycle/KeyDestruction",
        "lifecycle/ImportJobExpiry", "lifecycle/TenantOffboarding",
        "backup/Export", "backup/Restore", "backup/ReapplyDestruction", "backup/ReapplyDestructions", "backup/ReapplyScheduling",
        "backup/ReapplyDisable", "backup/ReapplyTenantDeletion", "backup/ReapplyTokenRevocation", "backup/ReapplyPrincipalDeletion",
        "backup/ReapplyRoleBindingRemoval", "backup/ReapplyGrantRevocation", "backup/ReapplyKeyPolicy", "backup/VoidQuorumRequest",
        "quorum/RevokeRecoveryCredential",
        "audit/Retention",
        .. new[] { "create-domain", "restore-domain", "rotate-domain" }.SelectMany(c => new[] { "", "/approval", "/share", "/transcript" }.Select(step => $"ceremony/{c}{step}")),
        "*", // the refusals past the per-window bound, aggregated as one overflow event

        // The reflection service is served to any authenticated caller and audited like a kms.v1 method.
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];

    /// <summary>Every operation an event can have: the kms.v1 methods by full name, then the server's own and the reflection service's.</summary>
    internal static IReadOnlyList<string> Operations { get; } =
    [
        .. new[]
        {
            Kms.Contracts.V1.KeyManagementService.Descriptor, Kms.Contracts.V1.AccessManagementService.Descriptor,
            Kms.Contracts.V1.AuditService.Descriptor, Kms.Contracts.V1.QuorumService.Descriptor,
        }.SelectMany(s => s.Methods.Select(m => $"/{s.FullName}/{m.Name}")),
        .. QuorumOperations.All.Select(o => "quorum/" + QuorumOperations.NameOf(o)),
        .. OwnOperations,
    ];

    /// <summary>Every outcome an event can have: a gRPC status name, STARTED (an export's start), * (an overflow event).</summary>
    internal static IReadOnlyList<string> Outcomes { get; } =
    [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED", "STARTED", "*",
    ];

    // What the server matches an operation filter with: the whole operation, or a part of it after a '/'.
    private static readonly string[] OperationFilters = [.. Operations.SelectMany(Suffixes).Distinct(StringComparer.Ordinal)];

    /// <summary>
    /// Why <c>--operation</c> <paramref name="operation"/> would match no event this kms knows of,
    /// or null when it can match one. The message names <c>--any-operation</c>: a server newer than
    /// this kms may write an operation it does not know (a new or renamed method).
    /// </summary>
    internal static string? OperationProblem(string operation) =>
        Problem("--operation", "operation", operation, OperationFilters,
            "an operation is a kms.v1 method, by its full name (/kms.v1.KeyManagementService/Decrypt) or its last part (Decrypt), or one of the server's own (lifecycle/Destruction, backup/Restore, quorum/EXPORT_BACKUP, …: docs/audit-format.md)")
        is { } problem
            ? $"{problem}; for an operation of a server newer than this kms, --any-operation sends it unchecked"
            : null;

    /// <summary>Why <c>--outcome</c> <paramref name="outcome"/> would match no event, or null when it can match one.</summary>
    internal static string? OutcomeProblem(string outcome) =>
        Problem("--outcome", "outcome", outcome, Outcomes, "an outcome is the gRPC status name the caller got: " + string.Join(", ", Outcomes.Take(Outcomes.Count - 2)));

    private static string? Problem(string option, string what, string value, IReadOnlyList<string> known, string help)
    {
        if (value.Length == 0 || known.Contains(value, StringComparer.Ordinal))
        {
            return null;
        }

        var typed = Normalised(value);
        var close = known
            .Select(k => (Name: k, Distance: Distance(typed, Normalised(k))))
            .Where(k => k.Distance <= (typed.Length < 6 ? 1 : 2))
            .OrderBy(k => k.Distance).ThenBy(k => k.Name.Length).ThenBy(k => k.Name, StringComparer.Ordinal)
            .Select(k => k.Name)
            .Take(3)
            .ToList();
        if (close.Count > 0 && Distance(typed, Normalised(close[0])) == 0)
        {
            return $"{option} {value} would match no event: an {what} is matched exactly, case included; did you mean {close[0]}?";
        }

        return close.Count > 0
            ? $"{option} {value} would match no event: no {what} is called that; did you mean {string.Join(" or ", close)}? ({help})"
            : $"{option} {value} would match no event: no {what} is called that ({help})";
    }

    private static IEnumerable<string> Suffixes(string name)
    {
        yield return name;
        for (var slash = name.IndexOf('/', StringComparison.Ordinal); slash >= 0 && slash < name.Length - 1; slash = name.IndexOf('/', slash + 1))
        {
            yield return name[(slash + 1)..];
        }
    }

    // Case, '_' and '-' aside: ReEncrypt for reencrypt, PERMISSION_DENIED for PermissionDenied.
    private static string Normalised(string name) => name.Replace("_", "", StringComparison.Ordinal).Replace("-", "", StringComparison.Ordinal).ToUpperInvariant();

    // Edits (insert, delete, replace, swap two neighbours) from a to b.
    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }

        for (var j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            for (var j = 1; j <= b.Length; j++)
            {
                var cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                {
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
                }
            }
        }

        return d[a.Length, b.Length];
    }
}
