using Serilog;
using Serilog.Core;
using Serilog.Events;
using Serilog.Formatting.Compact;

namespace Kms.Server.Hosting;

/// <summary>
/// The server's log lines on the console: stdout, or stderr once the SIEM stream has stdout
/// (<c>Kms:Audit:StreamPath=-</c>, <see cref="MoveToStandardError"/>).
/// </summary>
/// <remarks>
/// The stream writes stdout without waiting (a pipe whose reader stopped ends a pass, the rest
/// is sent later: <see cref="Audit.AuditStreamFifo"/>); a log line written there waits for the
/// reader like any write to a full pipe, and it is written from the housekeeping pass too (the
/// checkpoint's line, event 1302, and the pass's failures): the pass, and every request that
/// logs, would hang on it. A log line of more than 4 KiB written into a stream line the pipe took
/// part of would also run the two together. Logs on stderr have neither problem as long as stderr
/// is not that same pipe.
/// </remarks>
internal sealed class ConsoleLogOutput : ILogEventSink, IDisposable
{
    private readonly Logger _stdout;
    private readonly Logger _stderr;
    private volatile bool _toStandardError;

    /// <summary>Compact JSON when the console is redirected (a collector reads it), text on a terminal.</summary>
    public ConsoleLogOutput()
    {
        _stdout = Console(toStandardError: false);
        _stderr = Console(toStandardError: true);
    }

    /// <summary>Whether log lines go to stderr.</summary>
    public bool ToStandardError => _toStandardError;

    /// <summary>From now on, log lines go to stderr.</summary>
    public void MoveToStandardError() => _toStandardError = true;

    /// <inheritdoc/>
    public void Emit(LogEvent logEvent) => (_toStandardError ? _stderr : _stdout).Write(logEvent);

    /// <inheritdoc/>
    public void Dispose()
    {
        _stdout.Dispose();
        _stderr.Dispose();
    }

    private static Logger Console(bool toStandardError)
    {
        LogEventLevel? fromLevel = toStandardError ? LevelAlias.Minimum : null;
        var configuration = new LoggerConfiguration().MinimumLevel.Verbose();
        return (System.Console.IsOutputRedirected
            ? configuration.WriteTo.Console(new CompactJsonFormatter(), standardErrorFromLevel: fromLevel)
            : configuration.WriteTo.Console(outputTemplate: "[{Timestamp:HH:mm:ss} {Level:u3}] {SourceContext}: {Message:lj}{NewLine}{Exception}", standardErrorFromLevel: fromLevel))
            .CreateLogger();
    }
}
