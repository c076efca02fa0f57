using System.CommandLine;
using System.CommandLine.Help;

namespace Kms.Cli.Infrastructure;

/// <summary>The <c>kms</c> command line: builds the root command from <see cref="Program.CommandGroups"/> and runs it.</summary>
internal static class KmsCli
{
    /// <summary>The root command with the global options and every registered group.</summary>
    public static RootCommand Build(CliEnvironment environment)
    {
        var root = new RootCommand("kms: keys, aliases and envelope encryption over the Kms gRPC API (docs/cli.md)");
        var globals = new GlobalOptions();
        globals.AddTo(root);
        var runner = new CommandRunner(globals, environment);
        foreach (var group in Program.CommandGroups)
        {
            foreach (var command in group(runner))
            {
                root.Subcommands.Add(command);
            }
        }

        return root;
    }

    /// <summary>Parses and runs a command line; returns the exit code (<see cref="ExitCodes"/>).</summary>
    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliEnvironment environment, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(environment);
        if (InlineSecretFlag(args) is { } flag)
        {
            // Named without its value: the value is a secret that should not reach a log too.
            var instead = flag switch
            {
                "--token" or "--api-token" => "--token-file PATH",
                "--postgres-connection" or "--postgres-connection-string" or "--connection-string" => "--postgres-connection-file PATH or --postgres-connection-fd N",
                _ => $"{flag}-file PATH or {flag}-fd N",
            };
            await environment.Error.WriteLineAsync($"kms: {flag} is not an option: secrets are never taken on the command line or from the environment; use {instead} (docs/cli.md)");
            return ExitCodes.Usage;
        }

        var root = Build(environment);

        // No response files: an argument beginning with '@' (a file name) is taken as it is.
        var parse = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (parse.Errors.Count > 0 && parse.Action is not HelpAction)
        {
            foreach (var error in parse.Errors)
            {
                await environment.Error.WriteLineAsync($"kms: {WithoutUnknownOptionValues(error.Message, args, parse.Tokens)}");
            }

            await environment.Error.WriteLineAsync($"kms: see '{CommandPath(parse)} --help'");
            return ExitCodes.Usage;
        }

        return await parse.InvokeAsync(
            new InvocationConfiguration { Output = environment.Out, Error = environment.Error, EnableDefaultExceptionHandler = false },
            cancellationToken);
    }

    /// <summary>
    /// An argument that looks like a secret passed inline (<c>--token VALUE</c>, <c>--pin=…</c>):
    /// no such option exists, and the parser's own error would repeat the value on stderr.
    /// </summary>
    internal static string? InlineSecretFlag(IReadOnlyList<string> args)
    {
        // Any flag that ends in a secret's word (--token, --pin, and the CLI's own --so-pin,
        // --restore-pin, --key-passphrase, …, which exist only as -file and -fd: an operator will
        // type the bare name). A PostgreSQL connection string may hold the password.
        string[] secretWords = ["-token", "-pin", "-password", "-passphrase", "-secret", "-credential"];
        string[] secretFlags = ["--postgres-connection", "--postgres-connection-string", "--connection-string"];
        foreach (var arg in args)
        {
            if (arg == "--")
            {
                break;
            }

            var name = OptionName(arg);
            if (name.StartsWith("--", StringComparison.Ordinal)
                && (secretFlags.Contains(name, StringComparer.Ordinal) || secretWords.Any(w => name.EndsWith(w, StringComparison.Ordinal))))
            {
                return name;
            }
        }

        return null;
    }

    /// <summary>An option as typed, without a value given with it (<c>--pin=…</c>, <c>--pin:…</c>).</summary>
    internal static string OptionName(string arg) => arg.StartsWith('-') ? arg.Split('=', ':')[0] : arg;

    /// <summary>
    /// A parse error's message with the value of an unknown option left out: after a mistyped
    /// flag (<c>--so-pinn 1234</c>) the value may be the secret the flag meant to name.
    /// </summary>
    internal static string WithoutUnknownOptionValues(string message, IReadOnlyList<string> args, IReadOnlyList<System.CommandLine.Parsing.Token> tokens)
    {
        var options = tokens.Where(t => t.Type == System.CommandLine.Parsing.TokenType.Option).Select(t => t.Value).ToHashSet(StringComparer.Ordinal);
        // A value given with an unknown option (--so-pinn=1234, --pin:1234) is left out too.
        foreach (var arg in args.TakeWhile(a => a != "--"))
        {
            if (arg.StartsWith('-') && OptionName(arg) != arg && !options.Contains(OptionName(arg)))
            {
                message = message.Replace(arg, $"{OptionName(arg)}=(value not repeated)", StringComparison.Ordinal);
            }
        }

        for (var i = 1; i < args.Count; i++)
        {
            if (args[i - 1] == "--")
            {
                break;
            }

            if (args[i - 1].StartsWith('-') && !args[i].StartsWith('-') && !options.Contains(args[i - 1]) && args[i].Length > 0)
            {
                message = message.Replace($"'{args[i]}'", $"(the value after {args[i - 1]}, not repeated)", StringComparison.Ordinal);
            }
        }

        return message;
    }

    /// <summary>The words of the command that was parsed, e.g. <c>kms keys create</c>.</summary>
    private static string CommandPath(ParseResult parse)
    {
        var names = new List<string>();
        for (var result = parse.CommandResult; result is not null; result = result.Parent as System.CommandLine.Parsing.CommandResult)
        {
            names.Add(result.Parent is null ? "kms" : result.Command.Name);
        }

        names.Reverse();
        return string.Join(' ', names);
    }
}
