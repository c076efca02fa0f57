namespace Kms.Cli.Infrastructure;

/// <summary>
/// A request the CLI refuses before calling anything: a bad flag value, a missing setting, a
/// profile that does not exist. Reported in one line and exit code <see cref="ExitCodes.Usage"/>.
/// </summary>
internal sealed class CliUsageException : Exception
{
    public CliUsageException(string message)
        : base(message)
    {
    }

    public CliUsageException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    public CliUsageException()
    {
    }
}

/// <summary>A failure the command has already described and classified: reported with its own message and exit code.</summary>
internal sealed class CliFailureException : Exception
{
    public CliFailureException(int exitCode, string message)
        : base(message)
    {
        ExitCode = exitCode;
    }

    public CliFailureException(string message)
        : this(ExitCodes.Unexpected, message)
    {
    }

    public CliFailureException()
        : this(ExitCodes.Unexpected, "failed")
    {
    }

    public CliFailureException(string message, Exception innerException)
        : base(message, innerException)
    {
        ExitCode = ExitCodes.Unexpected;
    }

    public CliFailureException(int exitCode, string message, Exception innerException)
        : base(message, innerException)
    {
        ExitCode = exitCode;
    }

    public int ExitCode { get; }
}
