using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Tests.Failover;

/// <summary>Keeps every log event written through it.</summary>
internal sealed class LogSink : ILoggerProvider
{
    public ConcurrentQueue<(int EventId, LogLevel Level, string Message)> Events { get; } = new();

    public ILogger CreateLogger(string categoryName) => new Logger(this);

    public void Dispose()
    {
    }

    private sealed class Logger(LogSink sink) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            sink.Events.Enqueue((eventId.Id, logLevel, formatter(state, exception)));
    }
}
