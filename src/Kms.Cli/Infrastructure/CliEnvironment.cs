using System.Buffers;
using Spectre.Console;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// What the process was given: its standard streams, environment variables, home directory and
/// whether a person is at the terminal. Commands reach the outside world only through this, so
/// tests run the same entry point in-process with captured streams and a made-up environment.
/// </summary>
internal sealed class CliEnvironment
{
    /// <summary>Standard output as text: results (tables, or one JSON document).</summary>
    public required TextWriter Out { get; init; }

    /// <summary>Standard error: messages, warnings, progress, prompts, errors.</summary>
    public required TextWriter Error { get; init; }

    /// <summary>Opens standard input as bytes (for <c>--in -</c>).</summary>
    public required Func<Stream> OpenStandardInput { get; init; }

    /// <summary>Opens standard output as bytes (for <c>--out -</c>).</summary>
    public required Func<Stream> OpenStandardOutput { get; init; }

    /// <summary>An environment variable, or null.</summary>
    public required Func<string, string?> GetVariable { get; init; }

    /// <summary>The user's home directory (for <c>~/.config/kms/config.json</c>).</summary>
    public required string HomeDirectory { get; init; }

    /// <summary>The directory relative paths given on the command line are resolved against.</summary>
    public string WorkingDirectory { get; init; } = Directory.GetCurrentDirectory();

    /// <summary>Standard error is a terminal: progress bars are drawn there.</summary>
    public bool ErrorIsTerminal { get; init; }

    /// <summary>Standard output is a terminal: tables get its width and colours.</summary>
    public bool OutputIsTerminal { get; init; }

    /// <summary>
    /// A person can answer a prompt (standard input and error are terminals). Secrets are
    /// prompted for only then; otherwise a command asks for <c>--x-file</c> or <c>--x-fd</c>.
    /// </summary>
    public bool Interactive { get; init; }

    /// <summary>
    /// Whether a file descriptor is a terminal: a secret is never read from one through
    /// <c>--x-fd</c> (the terminal would echo it as it is typed).
    /// </summary>
    public Func<int, bool> IsTerminal { get; init; } = Terminal.IsTerminal;

    /// <summary>Where prompts are asked, when <see cref="Interactive"/>; null: a console on standard error.</summary>
    public IAnsiConsole? PromptConsole { get; init; }

    /// <summary>
    /// Where a command's plaintext copies (<c>kms encrypt</c>'s from its source) rent their buffer,
    /// each cleared before it goes back (<see cref="PlaintextCopy"/>); a test gives one it can watch.
    /// </summary>
    public ArrayPool<byte> CopyBuffers { get; init; } = ArrayPool<byte>.Shared;

    /// <summary>The real process.</summary>
    public static CliEnvironment FromProcess() => new()
    {
        Out = Console.Out,
        Error = Console.Error,
        OpenStandardInput = Console.OpenStandardInput,
        OpenStandardOutput = Console.OpenStandardOutput,
        GetVariable = Environment.GetEnvironmentVariable,
        HomeDirectory = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile),
        ErrorIsTerminal = !Console.IsErrorRedirected,
        OutputIsTerminal = !Console.IsOutputRedirected,
        Interactive = !Console.IsInputRedirected && !Console.IsErrorRedirected,
    };

    /// <summary>A path from the command line or the environment, made absolute.</summary>
    public string FullPath(string path) => Path.GetFullPath(ExpandHome(path), WorkingDirectory);

    /// <summary><c>~/x</c> to the home directory's <c>x</c>.</summary>
    public string ExpandHome(string path) =>
        path == "~" ? HomeDirectory : path.StartsWith("~/", StringComparison.Ordinal) ? Path.Combine(HomeDirectory, path[2..]) : path;
}
