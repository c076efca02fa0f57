using System.CommandLine;
using System.CommandLine.Parsing;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// Repeated <c>KEY=VALUE</c> options (<c>--context table=orders --context column=card</c>) as a
/// dictionary: encryption contexts and labels. A malformed or repeated key is a usage error.
/// </summary>
internal static class ContextOption
{
    /// <summary>A repeatable <c>--{name} KEY=VALUE</c> option.</summary>
    public static Option<Dictionary<string, string>> Create(string name, string description) => new(name)
    {
        Description = description,
        HelpName = "KEY=VALUE",
        // Each --context takes its KEY=VALUE: a bare one (value forgotten) is an error, not an empty context.
        Arity = ArgumentArity.OneOrMore,
        AllowMultipleArgumentsPerToken = false,
        CustomParser = Parse,
        DefaultValueFactory = _ => new Dictionary<string, string>(StringComparer.Ordinal),
    };

    /// <summary>The pairs of one option's tokens; errors are reported on <paramref name="result"/>.</summary>
    public static Dictionary<string, string> Parse(ArgumentResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        var pairs = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var token in result.Tokens)
        {
            var equals = token.Value.IndexOf('=', StringComparison.Ordinal);
            if (equals <= 0)
            {
                result.AddError($"'{token.Value}' is not KEY=VALUE");
                continue;
            }

            var key = token.Value[..equals];
            if (!pairs.TryAdd(key, token.Value[(equals + 1)..]))
            {
                result.AddError($"'{key}' is given twice");
            }
        }

        return pairs;
    }
}
