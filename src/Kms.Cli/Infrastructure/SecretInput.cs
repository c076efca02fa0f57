using System.CommandLine;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Win32.SafeHandles;
using Spectre.Console;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// The two options by which a command takes one secret (a PIN, a passphrase, a token):
/// <c>--{name}-file PATH</c> (its first line) and <c>--{name}-fd N</c> (the first line read from
/// an open file descriptor, e.g. <c>--pin-fd 3 3&lt;pin.txt</c> or a pipe; a descriptor that is a
/// terminal is refused, since it would echo the secret). With neither, a person at a terminal is
/// prompted without echo.
/// </summary>
/// <remarks>
/// There is no way to pass the secret's value itself in argv or in an environment variable: both
/// are readable by other processes of the user (<c>/proc/PID/cmdline</c>, <c>/proc/PID/environ</c>)
/// and end up in shell history, CI logs and crash reports.
/// </remarks>
internal sealed class SecretOption
{
    /// <param name="name">The secret's name in the flags, e.g. <c>pin</c> for <c>--pin-file</c> and <c>--pin-fd</c>.</param>
    /// <param name="description">What the secret is, e.g. "the HSM user PIN".</param>
    public SecretOption(string name, string description)
    {
        Name = name;
        Description = description;
        File = new Option<string>($"--{name}-file")
        {
            Description = $"read {description} from the first line of this file",
            HelpName = "PATH",
        };
        Fd = new Option<int?>($"--{name}-fd")
        {
            Description = $"read {description} from the first line of this open file descriptor",
            HelpName = "N",
        };
    }

    public string Name { get; }

    public string Description { get; }

    public Option<string> File { get; }

    public Option<int?> Fd { get; }

    /// <summary>Adds both options to <paramref name="command"/>.</summary>
    public void AddTo(Command command)
    {
        ArgumentNullException.ThrowIfNull(command);
        command.Options.Add(File);
        command.Options.Add(Fd);
    }
}

/// <summary>Reads a secret the way <see cref="SecretOption"/> describes: file, file descriptor, or a no-echo prompt.</summary>
internal static class SecretInput
{
    /// <summary>Longest first line accepted: a secret, not a document.</summary>
    public const int MaxLength = 64 * 1024;

    /// <summary>The secret named by <paramref name="option"/>'s flags, or asked for at the terminal.</summary>
    /// <param name="prompt">What the prompt says, e.g. "HSM user PIN".</param>
    /// <exception cref="CliUsageException">Both flags given, neither given without a terminal, the descriptor a terminal, the file or descriptor unreadable, or the secret empty.</exception>
    public static Secret Read(CliContext context, SecretOption option, string prompt)
    {
        ArgumentNullException.ThrowIfNull(context);
        return Read(context.ParseResult, context.Environment, context.Output.ErrorConsole, option, prompt);
    }

    /// <inheritdoc cref="Read(CliContext, SecretOption, string)"/>
    public static Secret Read(ParseResult parse, CliEnvironment environment, IAnsiConsole errorConsole, SecretOption option, string prompt)
    {
        ArgumentNullException.ThrowIfNull(parse);
        ArgumentNullException.ThrowIfNull(environment);
        ArgumentNullException.ThrowIfNull(option);
        var path = parse.GetValue(option.File);
        var fd = parse.GetValue(option.Fd);
        if (path is not null && fd is not null)
        {
            throw new CliUsageException($"give --{option.Name}-file or --{option.Name}-fd, not both");
        }

        Secret secret;
        if (path is not null)
        {
            secret = ReadFile(environment.FullPath(path), option.Name);
        }
        else if (fd is { } descriptor)
        {
            // A terminal echoes what is typed (and keeps it in its scrollback): a secret typed there
            // is asked for by the prompt, which turns echo off, not read from the descriptor.
            if (environment.IsTerminal(descriptor))
            {
                throw new CliUsageException(
                    $"--{option.Name}-fd {descriptor} is a terminal, which would show {option.Description} as it is typed: "
                    + $"give --{option.Name}-file PATH, or pipe it in (… | kms … --{option.Name}-fd 0), or give neither flag to be asked for it without echo");
            }

            secret = ReadDescriptor(descriptor, option.Name);
        }
        else if (environment.Interactive)
        {
            secret = Prompt(environment.PromptConsole ?? errorConsole, prompt);
        }
        else
        {
            throw new CliUsageException($"{option.Description} is needed: give --{option.Name}-file PATH or --{option.Name}-fd N (there is no terminal to ask on)");
        }

        if (secret.Length == 0)
        {
            secret.Dispose();
            throw new CliUsageException($"{option.Description} is empty");
        }

        return secret;
    }

    /// <summary>The first line of a file (without its line ending).</summary>
    /// <param name="path">The file's full path.</param>
    /// <param name="name">The secret's name in messages (<c>pin</c>, <c>passphrase of alice</c>).</param>
    /// <param name="flag">The flag that gave the file; <c>--{name}-file</c> if null.</param>
    public static Secret ReadFile(string path, string name, string? flag = null)
    {
        flag ??= $"--{name}-file";
        RequireFile(path, flag);
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
            return ReadFirstLine(stream, name);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw LocalPath.NotReadable($"{flag} {path}", exception);
        }
        catch (IOException exception)
        {
            throw new CliUsageException($"cannot read {flag} {path}: {exception.Message}", exception);
        }
    }

    /// <summary>Refuses, as <see cref="ReadFile"/> would, a secret file given by <paramref name="flag"/> that is a directory or not there; nothing is read.</summary>
    /// <exception cref="CliUsageException">A directory, or nothing, is at <paramref name="path"/> (a full path).</exception>
    public static void RequireFile(string path, string flag)
    {
        if (Directory.Exists(path))
        {
            throw new CliUsageException($"{flag} {path} is a directory: give a file's path");
        }

        if (File.Exists(path))
        {
            return;
        }

        // Not there, or a directory on the way may not be searched: opening it tells which (nothing is there to read).
        try
        {
            File.OpenHandle(path).Dispose();
        }
        catch (UnauthorizedAccessException exception)
        {
            throw LocalPath.NotReadable($"{flag} {path}", exception);
        }
        catch (Exception exception) when (exception is FileNotFoundException or DirectoryNotFoundException)
        {
            // A setting, as a missing token file is: a usage error.
            throw new CliUsageException($"{flag} {path} does not exist", exception);
        }
    }

    /// <summary>The first line read from an open file descriptor (a file, a pipe, a here-document). The descriptor is not closed.</summary>
    public static Secret ReadDescriptor(int fd, string name)
    {
        if (fd < 0)
        {
            throw new CliUsageException($"--{name}-fd: {fd} is not a file descriptor");
        }

        try
        {
            using var handle = new SafeFileHandle(fd, ownsHandle: false);
            if (handle.IsInvalid)
            {
                throw new CliUsageException($"--{name}-fd: {fd} is not an open file descriptor");
            }

            using var stream = new FileStream(handle, FileAccess.Read, 1);
            return ReadFirstLine(stream, name);
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new CliUsageException($"cannot read --{name}-fd {fd}: {exception.Message}", exception);
        }
    }

    /// <summary>Asks at the terminal without echo.</summary>
    public static Secret Prompt(IAnsiConsole console, string prompt)
    {
        ArgumentNullException.ThrowIfNull(console);

        // The prompt's answer is a string, which cannot be zeroed; it is copied out and dropped.
        var answer = console.Prompt(new TextPrompt<string>(Markup.Escape(prompt) + ":").Secret().AllowEmpty());
        return new Secret(answer.AsSpan());
    }

    // Byte by byte up to the first newline, so nothing after the first line is read from a
    // pipe; the bytes are zeroed once decoded.
    private static Secret ReadFirstLine(Stream stream, string name)
    {
        var buffer = new byte[MaxLength];
        var length = 0;
        try
        {
            int next;
            while ((next = stream.ReadByte()) >= 0 && next != '\n')
            {
                if (length == buffer.Length)
                {
                    throw new CliUsageException($"the {name} is longer than {MaxLength} bytes");
                }

                buffer[length++] = (byte)next;
            }

            if (length > 0 && buffer[length - 1] == '\r')
            {
                length--;
            }

            return Secret.FromUtf8(buffer.AsSpan(0, length));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(buffer);
        }
    }
}

/// <summary>A secret read by <see cref="SecretInput"/>: its characters, zeroed on dispose; prints as <c>***</c>.</summary>
internal sealed class Secret : IDisposable
{
    private readonly List<byte[]> _issued = [];
    private char[] _chars;
    private bool _disposed;

    public Secret(ReadOnlySpan<char> value)
    {
        _chars = GC.AllocateUninitializedArray<char>(value.Length, pinned: true);
        value.CopyTo(_chars);
    }

    public int Length => _chars.Length;

    /// <summary>The secret's characters.</summary>
    public ReadOnlySpan<char> Chars
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _chars;
        }
    }

    /// <summary>Decodes UTF-8 (strictly: invalid bytes are refused).</summary>
    public static Secret FromUtf8(ReadOnlySpan<byte> utf8)
    {
        var chars = new char[utf8.Length];
        try
        {
            var count = new UTF8Encoding(false, throwOnInvalidBytes: true).GetChars(utf8, chars);
            return new Secret(chars.AsSpan(0, count));
        }
        catch (DecoderFallbackException exception)
        {
            throw new CliUsageException("the secret is not valid UTF-8", exception);
        }
        finally
        {
            Array.Clear(chars);
        }
    }

    /// <summary>
    /// The UTF-8 bytes, in a pinned buffer this secret zeroes when it is disposed (the caller may
    /// zero it sooner): callers hand it straight to an API, and none of them zeroed it.
    /// </summary>
    public byte[] ToUtf8()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var bytes = GC.AllocateUninitializedArray<byte>(Encoding.UTF8.GetByteCount(_chars), pinned: true);
        Encoding.UTF8.GetBytes(_chars, bytes);
        lock (_issued)
        {
            _issued.Add(bytes);
        }

        return bytes;
    }

    /// <summary>
    /// The secret as a string, for an API that takes only a string. The copy cannot be zeroed:
    /// prefer <see cref="Chars"/> or <see cref="ToUtf8"/>.
    /// </summary>
    public string Reveal()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new string(_chars);
    }

    /// <summary>Never the secret.</summary>
    public override string ToString() => "***";

    /// <summary>Zeroes the characters and every buffer <see cref="ToUtf8"/> handed out.</summary>
    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            Array.Clear(_chars);
            _chars = [];
            lock (_issued)
            {
                foreach (var bytes in _issued)
                {
                    CryptographicOperations.ZeroMemory(bytes);
                }

                _issued.Clear();
            }
        }
    }
}
