using System.CommandLine;
using System.CommandLine.Help;
using System.Text.RegularExpressions;
using Kms.Cli.Infrastructure;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// Every <c>kms …</c> command line the README and docs/*.md show — in <c>sh</c> blocks and in
/// inline code — names commands that exist, in that order, and flags those commands (or the
/// global options) have, spelled the same; <c>kms --help</c> lists every top-level command the
/// docs use. A command or flag renamed or removed in code fails here until the docs follow.
/// </summary>
public sealed partial class CliDocTests
{
    [Fact]
    public void EveryDocumentedCommandLine_NamesExistingCommandsAndFlags()
    {
        var root = Root();
        var lines = DocumentedCommandLines().ToList();
        Assert.True(lines.Count > 150, $"only {lines.Count} kms command lines found in the docs");

        var wrong = new List<string>();
        foreach (var (file, line) in lines)
        {
            foreach (var problem in Check(root, line))
            {
                wrong.Add($"{file}: `{line}`: {problem}");
            }
        }

        Assert.True(wrong.Count == 0, "the docs show kms command lines the CLI does not have:\n" + string.Join("\n", wrong.Distinct()));
    }

    [Fact]
    public void EveryFlagDocsCliMdNames_IsAnOptionOfSomeCommand()
    {
        var all = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<Command>([Root()]);
        while (pending.TryPop(out var command))
        {
            all.UnionWith(command.Options.SelectMany(o => o.Aliases.Prepend(o.Name)));
            foreach (var sub in command.Subcommands)
            {
                pending.Push(sub);
            }
        }

        // In tables and prose too (`--approval FILE`, "`--token-label` (required)"); the section
        // "Secrets" names inline-secret flags as what is refused, and a mistyped one.
        string[] refused = ["--token", "--postgres-connection", "--so-pin", "--key-passphrase", "--credential", "--so-pinn"];
        var named = InlineFlag().Matches(File.ReadAllText(RepositoryPaths.Of("docs", "cli.md")))
            .Select(m => m.Groups[1].Value)
            .Distinct()
            .ToList();
        Assert.True(named.Count > 40, $"only {named.Count} flags found in docs/cli.md");
        Assert.Empty(named.Except(all).Except(refused));
    }

    [Fact]
    public void EveryOptionOfEveryCommand_IsNamedInDocsCliMd()
    {
        // The other direction: an option added to a command is documented with it. Anywhere in the
        // file counts (a command line, a table, prose), once: --force or --out, say, is explained
        // where some command shows it, not under every command that has it. Hidden options
        // (--insecure-test-kdf, for tests and drills) are not offered to users here.
        var named = AnyFlag().Matches(File.ReadAllText(RepositoryPaths.Of("docs", "cli.md")))
            .Select(m => m.Groups[1].Value)
            .ToHashSet(StringComparer.Ordinal);
        var missing = new List<string>();
        var pending = new Stack<(Command Command, string Path)>([(Root(), "kms")]);
        while (pending.TryPop(out var entry))
        {
            foreach (var option in entry.Command.Options.Where(o => !o.Hidden && o is not HelpOption and not VersionOption))
            {
                if (!option.Aliases.Prepend(option.Name).Any(named.Contains))
                {
                    missing.Add($"{entry.Path} {option.Name}");
                }
            }

            foreach (var sub in entry.Command.Subcommands)
            {
                pending.Push((sub, $"{entry.Path} {sub.Name}"));
            }
        }

        Assert.True(missing.Count == 0, "docs/cli.md never names these options:\n" + string.Join("\n", missing.Order(StringComparer.Ordinal)));
    }

    [Fact]
    public async Task Help_ListsEveryTopLevelCommandTheDocsUse()
    {
        var home = CliServerFixture.NewDirectory();
        try
        {
            var help = await CliRun.InProcessAsync(new Dictionary<string, string>(), home, null, "--help");
            var listed = HelpCommand().Matches(help.Out).Select(m => m.Groups[1].Value).ToHashSet(StringComparer.Ordinal);
            var used = DocumentedCommandLines()
                .Select(l => Tokens(l.Line).FirstOrDefault())
                .OfType<string>()
                .SelectMany(t => t.Split('|'))
                .Where(t => Root().Subcommands.Any(c => c.Name == t))
                .ToHashSet(StringComparer.Ordinal);
            Assert.True(used.Count > 20, $"only {used.Count} top-level commands found in the docs");
            Assert.Empty(used.Except(listed));
        }
        finally
        {
            Directory.Delete(home, recursive: true);
        }
    }

    private static RootCommand Root() => KmsCli.Build(new CliEnvironment
    {
        Out = TextWriter.Null,
        Error = TextWriter.Null,
        OpenStandardInput = () => Stream.Null,
        OpenStandardOutput = () => Stream.Null,
        GetVariable = _ => null,
        HomeDirectory = Path.GetTempPath(),
    });

    /// <summary>The arguments after <c>kms</c>, with what does not concern the parser (comments, redirections) left out.</summary>
    private static IEnumerable<(string File, string Line)> DocumentedCommandLines()
    {
        var files = Directory.EnumerateFiles(RepositoryPaths.Of("docs"), "*.md").Prepend(RepositoryPaths.Of("README.md"));
        foreach (var file in files)
        {
            var name = Path.GetFileName(file);
            var text = File.ReadAllText(file);
            // The README's `kms` shell function (buf curl) is not the CLI.
            foreach (Match block in ShellBlock().Matches(text).Where(b => !b.Value.Contains("kms() {", StringComparison.Ordinal)))
            {
                foreach (var line in block.Groups[1].Value.Replace("\\\n", " ", StringComparison.Ordinal).Split('\n'))
                {
                    if (ShellInvocation().Match(line) is { Success: true } invocation)
                    {
                        yield return (name, Uncommented(invocation.Groups[1].Value));
                    }
                }
            }

            // Inline code that is a command line: it starts with a command or gives a flag. Not the
            // labels of signed formats (`kms quorum approval v2`) or other strings (`kms node NAME`).
            var topLevel = Root().Subcommands.Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
            foreach (Match inline in InlineInvocation().Matches(ShellBlock().Replace(text, "")))
            {
                var line = inline.Groups[1].Value.Trim();
                if (!FormatLabel().IsMatch(line) && (topLevel.Contains(Tokens(line).First().Split('|', '/')[0]) || Tokens(line).Any(t => FlagOf(t) is not null)))
                {
                    yield return (name, line);
                }
            }
        }
    }

    private static string Uncommented(string line) => line.Split(" #")[0].Trim();

    private static IEnumerable<string> Tokens(string line) =>
        Regex.Matches(line, @"""[^""]*""|'[^']*'|\S+").Select(m => m.Value).Where(t => !Redirection().IsMatch(t));

    /// <summary>What is wrong with one documented command line: an unknown command or flag.</summary>
    private static IEnumerable<string> Check(RootCommand root, string line)
    {
        var tokens = Tokens(line).ToList();
        IReadOnlyList<Command> commands = [root];
        var index = 0;

        // Commands first, each word a subcommand of the last (a|b: each alternative).
        while (index < tokens.Count && !tokens[index].StartsWith('-') && !tokens[index].StartsWith('[') && !tokens[index].StartsWith('('))
        {
            var word = tokens[index];
            if (word.Contains('…', StringComparison.Ordinal))
            {
                yield break;
            }

            var alternatives = word.Split('|', '/');
            var next = commands.SelectMany(c => alternatives.Select(a => c.Subcommands.FirstOrDefault(s => s.Name == a || s.Aliases.Contains(a))))
                .ToList();
            if (next.Any(n => n is null))
            {
                // Not a command: an argument (KEY, FILE), unless the last command has only subcommands.
                if (commands.Any(c => c.Subcommands.Count > 0 && c.Arguments.Count == 0))
                {
                    yield return $"no command '{word}' under '{string.Join("|", commands.Select(NameOf))}'";
                    yield break;
                }

                break;
            }

            commands = next!;
            index++;
        }

        foreach (var token in tokens.Skip(index))
        {
            if (token.Contains('…', StringComparison.Ordinal) && !token.StartsWith("--", StringComparison.Ordinal))
            {
                continue;
            }

            var flag = FlagOf(token);
            if (flag is null)
            {
                continue;
            }

            foreach (var command in commands.Where(c => !HasOption(c, flag)))
            {
                yield return $"'{NameOf(command)}' has no option {flag}";
            }
        }
    }

    /// <summary>The flag a token is, without brackets, parentheses and a value given with it; null for a value.</summary>
    private static string? FlagOf(string token)
    {
        var bare = token.TrimStart('[', '(').TrimEnd(']', ')', ',', '.', ';');
        if (!FlagToken().IsMatch(bare))
        {
            return null;
        }

        return bare.Split('=', '|')[0];
    }

    private static string NameOf(Command command) => command is RootCommand ? "kms" : command.Name;

    private static bool HasOption(Command command, string flag)
    {
        for (Command? c = command; c is not null; c = c.Parents.OfType<Command>().FirstOrDefault())
        {
            if (c.Options.Any(o => (c == command || o.Recursive) && (o.Name == flag || o.Aliases.Contains(flag))))
            {
                return true;
            }
        }

        return false;
    }

    [GeneratedRegex(@"```sh\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex ShellBlock();

    /// <summary><c>kms …</c> at the start of a line or after a pipe; not <c>alias kms=…</c>.</summary>
    [GeneratedRegex(@"(?:^\s*|\|\s*)kms\s+(.*)$")]
    private static partial Regex ShellInvocation();

    /// <summary>Inline code that is a whole kms command line: <c>`kms keys create KEY --allow-import`</c>.</summary>
    [GeneratedRegex(@"`kms ([a-z][^`]*)`")]
    private static partial Regex InlineInvocation();

    [GeneratedRegex(@"`(--[a-z][a-z0-9-]*)[`= ]")]
    private static partial Regex InlineFlag();

    /// <summary>A flag anywhere in the text, whole: <c>--new-passphrase-file</c>, not its <c>--new-passphrase</c>.</summary>
    [GeneratedRegex(@"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])")]
    private static partial Regex AnyFlag();

    [GeneratedRegex(@" v\d+$")]
    private static partial Regex FormatLabel();

    [GeneratedRegex(@"^--?[a-zA-Z?][a-zA-Z0-9-]*(?:[=|].*)?$")]
    private static partial Regex FlagToken();

    [GeneratedRegex(@"^\d*[<>]")]
    private static partial Regex Redirection();

    [GeneratedRegex(@"^\s{2}([a-z][a-z-]*)\b", RegexOptions.Multiline)]
    private static partial Regex HelpCommand();
}
