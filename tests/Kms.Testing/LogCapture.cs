using System.Collections.Concurrent;
using System.Text;
using Serilog.Core;
using Serilog.Events;

namespace Kms.Testing;

/// <summary>A Serilog sink that keeps every event as text (message, properties, exception) for assertions.</summary>
public sealed class LogCapture : ILogEventSink
{
    private readonly ConcurrentQueue<string> _events = new();

    public IReadOnlyCollection<string> Events => _events;

    public void Emit(LogEvent logEvent)
    {
        ArgumentNullException.ThrowIfNull(logEvent);
        var text = new StringBuilder().Append(logEvent.Level).Append(' ').Append(logEvent.RenderMessage());
        foreach (var (name, value) in logEvent.Properties)
        {
            text.Append(' ').Append(name).Append('=').Append(value);
        }

        if (logEvent.Exception is not null)
        {
            text.Append('\n').Append(logEvent.Exception);
        }

        var line = text.ToString();
        _events.Enqueue(line);
        if (logEvent.Properties.ContainsKey("ErrorId") && Environment.GetEnvironmentVariable("KMS_TEST_ERROR_LOG") is { Length: > 0 } path)
        {
            // An INTERNAL answer's cause is in the server's log only, which an in-process test server
            // keeps in memory and drops with the test: test.sh prints this file when a run fails.
            lock (ErrorLogLock)
            {
                File.AppendAllText(path, $"{DateTimeOffset.UtcNow:O} {line}\n\n");
            }
        }
    }

    private static readonly Lock ErrorLogLock = new();

    /// <summary>All events as one text.</summary>
    public string AllText => string.Join('\n', _events);

    /// <summary>
    /// The secret in any common printable form (hex either case, base64, base64url), or
    /// as raw bytes decoded as Latin-1 — found anywhere in the captured logs.
    /// </summary>
    public bool ContainsSecret(ReadOnlySpan<byte> secret)
    {
        var all = AllText;
        var forms = new[]
        {
            Convert.ToHexString(secret),
            Convert.ToHexStringLower(secret),
            Convert.ToBase64String(secret),
            Convert.ToBase64String(secret).TrimEnd('=').Replace('+', '-').Replace('/', '_'),
            Encoding.Latin1.GetString(secret),
        };
        return forms.Any(form => all.Contains(form, StringComparison.Ordinal));
    }
}
