using System.CommandLine;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;
using Kms.Contracts.V1;

namespace Kms.Cli.Commands;

/// <summary><c>kms aliases …</c>: names that point at keys (<c>tenants/t/aliases/a</c>), usable wherever a key name is.</summary>
internal static class AliasesCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var aliases = new Command("aliases", "create, show, repoint, delete and list aliases of keys");
        aliases.Subcommands.Add(CreateAlias(runner));
        aliases.Subcommands.Add(Get(runner));
        aliases.Subcommands.Add(Update(runner));
        aliases.Subcommands.Add(Delete(runner));
        aliases.Subcommands.Add(List(runner));
        return [aliases];
    }

    private static Argument<string> AliasArgument() => NameArgument.Create<string>("ALIAS", "the alias: ID (with --tenant), TENANT/ID or tenants/TENANT/aliases/ID");

    private static Option<string> KeyOption() => new("--key") { Description = "the key it points at (ID, TENANT/ID or tenants/TENANT/keys/ID)", Required = true, HelpName = "KEY" };

    private static Command CreateAlias(CommandRunner runner)
    {
        var alias = AliasArgument();
        var key = KeyOption();
        var command = new Command("create", "create an alias pointing at a key") { alias, key };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var name = ctx.AliasName(ctx.ParseResult.GetRequiredValue(alias));
            var slash = name.LastIndexOf("/aliases/", StringComparison.Ordinal);
            var created = await ctx.Client.CreateAliasAsync(name[..slash], name[(slash + "/aliases/".Length)..], ctx.KeyName(ctx.ParseResult.GetRequiredValue(key)), cancellationToken: ct);
            WriteAlias(ctx, created);
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Get(CommandRunner runner)
    {
        var alias = AliasArgument();
        var command = new Command("get", "show an alias and the key it points at") { alias };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteAlias(ctx, await ctx.Client.GetAliasAsync(ctx.AliasName(ctx.ParseResult.GetRequiredValue(alias)), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Update(CommandRunner runner)
    {
        var alias = AliasArgument();
        var key = KeyOption();
        var command = new Command("update", "point an alias at another key of the same tenant") { alias, key };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteAlias(ctx, await ctx.Client.UpdateAliasAsync(ctx.AliasName(ctx.ParseResult.GetRequiredValue(alias)), ctx.KeyName(ctx.ParseResult.GetRequiredValue(key)), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Delete(CommandRunner runner)
    {
        var alias = AliasArgument();
        var command = new Command("delete", "delete an alias (the key is unaffected)") { alias };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var name = ctx.AliasName(ctx.ParseResult.GetRequiredValue(alias));
            await ctx.Client.DeleteAliasAsync(name, cancellationToken: ct);
            ctx.Output.Result(new JsonObject { ["deleted"] = name }, $"deleted {name}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command List(CommandRunner runner)
    {
        var tenant = NameArgument.Create<string?>("TENANT", "the tenant (default: --tenant or the profile's)", optional: true);
        var command = new Command("list", "list a tenant's aliases") { tenant };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var aliases = new List<Alias>();
            await foreach (var alias in ctx.Client.ListAliasesAsync(ctx.TenantName(ctx.ParseResult.GetValue(tenant)), cancellationToken: ct))
            {
                aliases.Add(alias);
            }

            ctx.Output.Result(
                new JsonObject { ["aliases"] = new JsonArray([.. aliases.Select(a => CliOutput.Proto(a))]) },
                () =>
                {
                    var table = CliOutput.Table("alias", "key", "updated");
                    foreach (var alias in aliases)
                    {
                        CliOutput.AddRow(table, alias.Name, alias.Key, KeysCommands.Time(alias.UpdateTime ?? alias.CreateTime));
                    }

                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static void WriteAlias(CliContext context, Alias alias) =>
        context.Output.Result(CliOutput.Proto(alias), () => CliOutput.Properties(
        [
            ("name", alias.Name),
            ("key", alias.Key),
            ("created", KeysCommands.Time(alias.CreateTime)),
            ("updated", KeysCommands.Time(alias.UpdateTime)),
        ]));
}
