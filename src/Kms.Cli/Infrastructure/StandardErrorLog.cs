using Microsoft.Extensions.Logging;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// Where the SDK's log goes in <c>kms</c> (and the ceremony's: its HSM adapter's warnings, and the
/// step a ceremony command failed at, <see cref="CliContext.Step"/>): each entry of level Warning or worse (an endpoint
/// marked down and failed over, calls shed by full nodes, an envelope stream left without its
/// final frame: docs/observability.md) as one line on standard error, <c>kms: warning: …</c> as
/// <see cref="CliOutput.Warn"/> writes it; Information and Debug are dropped. Never standard
/// output, which carries ciphertext or plaintext in a pipe. An exception logged with an entry is
/// printed only with <c>--verbose</c>, as a failure's is. Every Kms.Client message at these levels
/// carries endpoints (never with a user name or password: <c>KmsClientOptions</c> refuses them),
/// method names, counts and status details, never a token, key or message byte.
/// </summary>
/// <param name="error">Standard error.</param>
/// <param name="verbose"><c>--verbose</c>: an exception logged with an entry is printed too.</param>
/// <param name="failover">
/// More than one endpoint is configured. With one, an endpoint marked down (3001) is not printed:
/// there is nothing to fail over to, and a call that fails for it ends the command with its own
/// one line (<c>kms: UNAVAILABLE: …</c>), which the warning would only repeat.
/// </param>
internal sealed class StandardErrorLog(TextWriter error, bool verbose, bool failover) : ILoggerFactory, ILogger
{
    /// <summary>Kms.Client's "endpoint marked down" (docs/observability.md).</summary>
    private const int EndpointDown = 3001;

    // Entries come from the command's thread and from background health probes.
    private readonly Lock _lock = new();

    /// <summary>One logger for every category: the line does not name it.</summary>
    public ILogger CreateLogger(string categoryName) => this;

    /// <summary>Not supported: the CLI's log goes to standard error only.</summary>
    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException("the kms CLI logs to standard error only");

    public void Dispose()
    {
    }

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel is >= LogLevel.Warning and < LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        ArgumentNullException.ThrowIfNull(formatter);
        if (!IsEnabled(logLevel) || (eventId.Id == EndpointDown && !failover))
        {
            return;
        }

        Write(logLevel, formatter(state, null), exception);
    }

    /// <summary>
    /// One entry of the CLI's own (the ceremony's failed step, <see cref="CliContext.Step"/>), written
    /// as the SDK's are; it has no event id, as the CLI's lines are not in the server's catalogue.
    /// </summary>
    public void Write(LogLevel logLevel, string message, Exception? exception = null)
    {
        // One line: a status detail from a server may hold line breaks.
        var line = TerminalText.Of($"kms: {(logLevel == LogLevel.Warning ? "warning" : "error")}: {message.ReplaceLineEndings(" ").Trim()}");
        lock (_lock)
        {
            error.WriteLine(line);
            if (verbose && exception is not null)
            {
                error.WriteLine(exception.ToString());
            }

            error.Flush();
        }
    }
}
