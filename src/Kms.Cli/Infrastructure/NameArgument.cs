using System.CommandLine;

namespace Kms.Cli.Infrastructure;

/// <summary>Positional resource-name arguments (KEY, ALIAS, TENANT).</summary>
internal static class NameArgument
{
    /// <summary>
    /// An argument that refuses values beginning with <c>-</c>: the parser hands a misspelt
    /// option (<c>--no-such-flag</c>) to a free positional argument, and ids may contain '-'.
    /// </summary>
    public static Argument<T> Create<T>(string name, string description, bool optional = false)
    {
        var argument = new Argument<T>(name) { Description = description };
        if (optional)
        {
            argument.Arity = ArgumentArity.ZeroOrOne;
        }

        argument.Validators.Add(result =>
        {
            foreach (var token in result.Tokens.Where(t => t.Value.StartsWith('-')))
            {
                // Its name only: after '=' or ':' may come the secret a mistyped flag meant to name.
                result.AddError($"unknown option '{KmsCli.OptionName(token.Value)}'");
            }
        });
        return argument;
    }
}
