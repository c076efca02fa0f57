using System.CommandLine;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;

namespace Kms.Cli.Commands;

/// <summary><c>kms config show</c>: the effective configuration and where each setting came from.</summary>
internal static class ConfigCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var show = new Command("show", "print the effective configuration (flags > environment > profile > defaults); paths only, never a secret");
        runner.SetAction(show, (ctx, _) =>
        {
            var s = ctx.Settings;
            ctx.Output.Result(
                new JsonObject
                {
                    ["configFile"] = s.ConfigFile,
                    ["profile"] = s.Profile,
                    ["endpoints"] = Entry(new JsonArray([.. s.Endpoints.Value.Select(e => (JsonNode)e.ToString())]), s.Endpoints.Source),
                    ["caFile"] = Entry(s.CaFile.Value, s.CaFile.Source),
                    ["tokenFile"] = Entry(s.TokenFile.Value, s.TokenFile.Source),
                    ["clientCert"] = Entry(s.ClientCert.Value, s.ClientCert.Source),
                    ["clientKey"] = Entry(s.ClientKey.Value, s.ClientKey.Source),
                    ["tenant"] = Entry(s.Tenant.Value, s.Tenant.Source),
                    ["timeoutSeconds"] = Entry(s.Timeout.Value.TotalSeconds, s.Timeout.Source),
                },
                () =>
                {
                    var table = CliOutput.Table("setting", "value", "from");
                    CliOutput.AddRow(table, "config file", s.ConfigFile ?? "(none)", "");
                    CliOutput.AddRow(table, "profile", s.Profile ?? "(none)", "");
                    CliOutput.AddRow(table, "endpoints", string.Join(", ", s.Endpoints.Value), s.Endpoints.Source);
                    CliOutput.AddRow(table, "CA file", s.CaFile.Value ?? "(system trust store)", s.CaFile.Source);
                    CliOutput.AddRow(table, "token file", s.TokenFile.Value ?? "(none)", s.TokenFile.Source);
                    CliOutput.AddRow(table, "client certificate", s.ClientCert.Value ?? "(none)", s.ClientCert.Source);
                    CliOutput.AddRow(table, "client key", s.ClientKey.Value ?? "(none)", s.ClientKey.Source);
                    CliOutput.AddRow(table, "tenant", s.Tenant.Value ?? "(none)", s.Tenant.Source);
                    CliOutput.AddRow(table, "timeout", DurationText.Format(s.Timeout.Value), s.Timeout.Source);
                    return table;
                });
            return Task.FromResult(ExitCodes.Ok);
        });
        return [new Command("config", "inspect the CLI's configuration") { show }];
    }

    private static JsonObject Entry(JsonNode? value, string source) => new() { ["value"] = value, ["source"] = source };
}
