using System.IO.Pipes;
using System.Text;
using Kms.Cli.Infrastructure;
using Spectre.Console.Testing;

namespace Kms.Cli.Tests;

/// <summary>Secrets come from a file, a file descriptor or a no-echo prompt; never from argv or the environment.</summary>
public sealed class SecretInputTests : IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Theory]
    [InlineData("1234\n", "1234")]
    [InlineData("1234\r\nsecond line\n", "1234")]
    [InlineData("no newline at the end", "no newline at the end")]
    [InlineData("pässwörd\n", "pässwörd")]
    public void ReadFile_TakesTheFirstLine(string content, string expected)
    {
        var path = Path.Combine(_directory, "secret");
        File.WriteAllText(path, content, new UTF8Encoding(false));

        using var secret = SecretInput.ReadFile(path, "pin");

        Assert.Equal(expected, secret.Chars.ToString());
    }

    [Fact]
    public void ReadFile_Missing_IsUsageErrorNamingTheFlag()
    {
        var error = Assert.Throws<CliUsageException>(() => SecretInput.ReadFile(Path.Combine(_directory, "nope"), "pin"));

        Assert.Contains("--pin-file", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ReadDescriptor_Pipe_ReadsTheFirstLineOnly()
    {
        using var pipe = new AnonymousPipeServerStream(PipeDirection.Out);
        var fd = (int)pipe.ClientSafePipeHandle.DangerousGetHandle();
        pipe.Write("from-a-pipe\nnot this\n"u8);
        pipe.Flush();

        using var secret = SecretInput.ReadDescriptor(fd, "passphrase");

        Assert.Equal("from-a-pipe", secret.Chars.ToString());
    }

    [Fact]
    public void ReadDescriptor_Negative_IsUsageError() =>
        Assert.Throws<CliUsageException>(() => SecretInput.ReadDescriptor(-1, "pin"));

    [Fact]
    public void Read_DescriptorIsATerminal_RefusedBeforeReading_PointingAtTheFileThePipeAndThePrompt()
    {
        // A terminal on the descriptor echoes the secret as it is typed (--credential-fd 0 typed at a
        // shell). The seam says this pipe is one; what it holds stands for what would be typed.
        using var pipe = new AnonymousPipeServerStream(PipeDirection.Out);
        var fd = (int)pipe.ClientSafePipeHandle.DangerousGetHandle();
        pipe.Write("typed-at-a-terminal\n"u8);
        pipe.Flush();
        var (parse, option) = Parse("--pin-fd", fd.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var asked = new List<int>();
        var environment = Environment(interactive: true, isTerminal: descriptor =>
        {
            asked.Add(descriptor);
            return true;
        });

        var error = Assert.Throws<CliUsageException>(() => SecretInput.Read(parse, environment, new TestConsole(), option, "PIN"));

        Assert.Equal([fd], asked);
        Assert.Equal($"--pin-fd {fd} is a terminal, which would show the HSM user PIN as it is typed: "
            + "give --pin-file PATH, or pipe it in (… | kms … --pin-fd 0), or give neither flag to be asked for it without echo", error.Message);
    }

    [Fact]
    public void Read_DescriptorNotATerminal_Read()
    {
        using var pipe = new AnonymousPipeServerStream(PipeDirection.Out);
        var fd = (int)pipe.ClientSafePipeHandle.DangerousGetHandle();
        pipe.Write("piped\n"u8);
        pipe.Flush();
        var (parse, option) = Parse("--pin-fd", fd.ToString(System.Globalization.CultureInfo.InvariantCulture));

        using var secret = SecretInput.Read(parse, Environment(interactive: true), new TestConsole(), option, "PIN");

        Assert.Equal("piped", secret.Chars.ToString());
    }

    [Fact]
    public void IsTerminal_APipeIsNot()
    {
        using var pipe = new AnonymousPipeServerStream(PipeDirection.Out);

        Assert.False(Terminal.IsTerminal((int)pipe.ClientSafePipeHandle.DangerousGetHandle()));
        Assert.False(Terminal.IsTerminal(-1));
    }

    [Fact]
    public void Prompt_DoesNotEchoTheSecret()
    {
        var console = new TestConsole().Interactive();
        console.Input.PushTextWithEnter("hunter2");

        using var secret = SecretInput.Prompt(console, "HSM user PIN");

        Assert.Equal("hunter2", secret.Chars.ToString());
        Assert.Contains("HSM user PIN", console.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("hunter2", console.Output, StringComparison.Ordinal);
    }

    [Fact]
    public void Read_BothFlags_IsUsageError()
    {
        var (parse, option) = Parse("--pin-file", "x", "--pin-fd", "3");

        Assert.Throws<CliUsageException>(() => SecretInput.Read(parse, Environment(interactive: true), new TestConsole(), option, "PIN"));
    }

    [Fact]
    public void Read_NoFlagAndNoTerminal_IsUsageErrorNamingBothFlags()
    {
        var (parse, option) = Parse();

        var error = Assert.Throws<CliUsageException>(() => SecretInput.Read(parse, Environment(interactive: false), new TestConsole(), option, "PIN"));

        Assert.Contains("--pin-file", error.Message, StringComparison.Ordinal);
        Assert.Contains("--pin-fd", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Read_NoFlagAtATerminal_Prompts()
    {
        var (parse, option) = Parse();
        var console = new TestConsole().Interactive();
        console.Input.PushTextWithEnter("typed");

        using var secret = SecretInput.Read(parse, Environment(interactive: true, console), new TestConsole(), option, "PIN");

        Assert.Equal("typed", secret.Chars.ToString());
    }

    [Fact]
    public void Read_EmptyFile_IsUsageError()
    {
        var path = Path.Combine(_directory, "empty");
        File.WriteAllText(path, "\n");
        var (parse, option) = Parse("--pin-file", path);

        Assert.Throws<CliUsageException>(() => SecretInput.Read(parse, Environment(interactive: false), new TestConsole(), option, "PIN"));
    }

    [Fact]
    public void Secret_PrintsAsStarsAndIsZeroedOnDispose()
    {
        var secret = new Secret("1234");
        // The buffer itself, taken before Dispose drops the reference to it.
        var field = typeof(Secret).GetField("_chars", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
        var buffer = (char[])field.GetValue(secret)!;
        Assert.Equal("1234", new string(buffer));

        Assert.Equal("***", secret.ToString());
        Assert.Equal("***", $"{secret}");
        secret.Dispose();
        Assert.All(buffer, c => Assert.Equal('\0', c));
        Assert.Throws<ObjectDisposedException>(() => secret.Chars.Length);
    }

    private static (System.CommandLine.ParseResult, SecretOption) Parse(params string[] args)
    {
        var option = new SecretOption("pin", "the HSM user PIN");
        var command = new System.CommandLine.RootCommand();
        option.AddTo(command);
        return (command.Parse(args), option);
    }

    [Fact]
    public void Secret_ItsUtf8Copies_AreZeroedWhenItIsDisposed()
    {
        // Callers hand ToUtf8() straight to an API (a PIN to the HSM); the secret zeroes them.
        var secret = new Secret("pïn-1234");
        var first = secret.ToUtf8();
        var second = secret.ToUtf8();
        Assert.Equal("pïn-1234"u8.ToArray(), first);

        secret.Dispose();

        Assert.All(first, b => Assert.Equal(0, b));
        Assert.All(second, b => Assert.Equal(0, b));
    }

    private CliEnvironment Environment(bool interactive, Spectre.Console.IAnsiConsole? console = null, Func<int, bool>? isTerminal = null) => new()
    {
        IsTerminal = isTerminal ?? (_ => false),
        Out = TextWriter.Null,
        Error = TextWriter.Null,
        OpenStandardInput = () => Stream.Null,
        OpenStandardOutput = () => Stream.Null,
        GetVariable = _ => "from-the-environment",
        HomeDirectory = _directory,
        WorkingDirectory = _directory,
        Interactive = interactive,
        PromptConsole = console,
    };
}
