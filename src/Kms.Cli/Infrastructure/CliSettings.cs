namespace Kms.Cli.Infrastructure;

/// <summary>A setting's value and where it came from (<c>flag</c>, <c>env KMS_…</c>, <c>profile NAME</c>, <c>default</c>).</summary>
internal sealed record Setting<T>(T Value, string Source);

/// <summary>
/// The effective configuration of one invocation, resolved flags &gt; environment &gt; profile
/// file &gt; defaults by <see cref="SettingsResolver"/>. Holds paths only, never a secret.
/// </summary>
internal sealed record CliSettings
{
    /// <summary>Used when nothing else names a server: dev mode's address.</summary>
    public static readonly Uri DefaultEndpoint = new("https://127.0.0.1:8443");

    /// <summary>Used when nothing else sets a call's deadline.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    public required Setting<IReadOnlyList<Uri>> Endpoints { get; init; }

    public required Setting<string?> CaFile { get; init; }

    public required Setting<string?> TokenFile { get; init; }

    public required Setting<string?> ClientCert { get; init; }

    public required Setting<string?> ClientKey { get; init; }

    public required Setting<string?> Tenant { get; init; }

    public required Setting<TimeSpan> Timeout { get; init; }

    /// <summary>The profile file read, if any.</summary>
    public string? ConfigFile { get; init; }

    /// <summary>The profile used, if any.</summary>
    public string? Profile { get; init; }
}

/// <summary>The connection flags as given on the command line (null: not given).</summary>
internal sealed record CliFlags
{
    public IReadOnlyList<string>? Endpoints { get; init; }

    public string? CaFile { get; init; }

    public string? TokenFile { get; init; }

    public string? ClientCert { get; init; }

    public string? ClientKey { get; init; }

    public string? Tenant { get; init; }

    public int? TimeoutSeconds { get; init; }

    public string? Profile { get; init; }

    public string? ConfigFile { get; init; }
}
