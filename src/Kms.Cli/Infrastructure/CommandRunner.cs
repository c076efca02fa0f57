using System.CommandLine;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// Runs commands: gives each action a <see cref="CliContext"/>, and turns whatever it throws
/// into one line on standard error (<c>kms: NOT_FOUND: …</c>) and an exit code from
/// <see cref="ErrorReport"/> — the stack trace only with <c>--verbose</c>. Command groups get
/// it at registration and attach their actions with <see cref="SetAction"/>.
/// </summary>
internal sealed class CommandRunner(GlobalOptions globals, CliEnvironment environment)
{
    /// <summary>The options every command has (for commands that read one, e.g. the output format).</summary>
    public GlobalOptions Globals => globals;

    public CliEnvironment Environment => environment;

    /// <summary>Makes <paramref name="action"/> the command's action; it returns an exit code (<see cref="ExitCodes"/>).</summary>
    public void SetAction(Command command, Func<CliContext, CancellationToken, Task<int>> action)
    {
        ArgumentNullException.ThrowIfNull(command);
        ArgumentNullException.ThrowIfNull(action);
        command.SetAction((parse, cancellationToken) => RunAsync(parse, action, cancellationToken));
    }

    /// <summary>Runs one action with its context, reporting any failure.</summary>
    public async Task<int> RunAsync(ParseResult parse, Func<CliContext, CancellationToken, Task<int>> action, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(action);
        using var context = new CliContext(parse, environment, globals);
        try
        {
            return await action(context, cancellationToken);
        }
        catch (Exception exception)
        {
            context.ReportFailedStep(exception);
            return Report(exception, context.Verbose, context.ConfiguredClientSettings);
        }
    }

    /// <summary>
    /// Prints a failure (one line; the exception too with <paramref name="verbose"/>) and returns its exit code.
    /// <paramref name="connection"/>: the settings of the configured client the failed call was made with, if any
    /// (<see cref="ErrorReport.From(Exception, CliSettings?)"/>).
    /// </summary>
    public int Report(Exception exception, bool verbose, CliSettings? connection = null)
    {
        ArgumentNullException.ThrowIfNull(exception);
        var report = ErrorReport.From(exception, connection);
        environment.Error.WriteLine($"kms: {TerminalText.Of(report.Message)}");
        if (verbose)
        {
            environment.Error.WriteLine(exception.ToString());
        }

        environment.Error.Flush();
        return report.ExitCode;
    }
}
