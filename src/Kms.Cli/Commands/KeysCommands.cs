using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Google.Protobuf.WellKnownTypes;
using Kms.Cli.Infrastructure;
using Kms.Contracts.V1;
using Spectre.Console;

namespace Kms.Cli.Commands;

/// <summary><c>kms keys …</c>: create, list, inspect, rotate and retire keys.</summary>
internal static class KeysCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var keys = new Command("keys", "create, list, inspect, rotate, enable, disable and delete keys");
        keys.Subcommands.Add(CreateKey(runner));
        keys.Subcommands.Add(List(runner));
        keys.Subcommands.Add(OnKey(runner, "get", "show a key", (ctx, name, ct) => ctx.Client.GetKeyAsync(name, ct)));
        keys.Subcommands.Add(OnKey(runner, "rotate", "make a new primary version (older versions still decrypt)", (ctx, name, ct) => ctx.Client.RotateKeyAsync(name, cancellationToken: ct)));
        keys.Subcommands.Add(OnKey(runner, "enable", "enable a disabled key", (ctx, name, ct) => ctx.Client.EnableKeyAsync(name, ct)));
        keys.Subcommands.Add(OnKey(runner, "disable", "disable a key: nothing may use it until it is enabled", (ctx, name, ct) => ctx.Client.DisableKeyAsync(name, ct)));
        keys.Subcommands.Add(ScheduleDeletion(runner));
        keys.Subcommands.Add(OnKey(runner, "cancel-deletion", "cancel a scheduled deletion (the key becomes DISABLED)", (ctx, name, ct) => ctx.Client.CancelKeyDeletionAsync(name, cancellationToken: ct)));
        keys.Subcommands.Add(Versions(runner));
        keys.Subcommands.Add(KeyImportCommand.Create(runner));
        return [keys];
    }

    /// <summary>A key as a property table (or its JSON).</summary>
    public static void WriteKey(CliContext context, Key key) =>
        context.Output.Result(CliOutput.Proto(key), () => KeyTable(key));

    private static Argument<string> KeyArgument() => NameArgument.Create<string>("KEY", "the key: ID (with --tenant), TENANT/ID or tenants/TENANT/keys/ID");

    private static Command CreateKey(CommandRunner runner)
    {
        var name = KeyArgument();
        var labels = ContextOption.Create("--label", "a label (repeatable)");
        var rotation = new Option<TimeSpan?>("--rotation-period")
        {
            Description = "rotate automatically this often (at least 1d), e.g. 90d",
            HelpName = "DURATION",
            CustomParser = DurationText.Parse,
        };
        var purpose = new Option<string?>("--purpose")
        {
            Description = "encrypt (default), sign, decrypt (RSA-OAEP) or mac; implied by --algorithm",
            HelpName = "encrypt|sign|decrypt|mac",
        };
        var algorithm = new Option<string?>("--algorithm")
        {
            Description = "the algorithm of every version, e.g. EC_SIGN_P256_SHA256, RSA_SIGN_PSS_3072_SHA256, RSA_DECRYPT_OAEP_3072_SHA1, HMAC_SHA256 (default: the purpose's)",
            HelpName = "NAME",
        };
        var allowImport = new Option<bool>("--allow-import")
        {
            Description = "the key takes material you import ('kms keys import'); fixed at creation — only such a key takes an import",
        };
        var command = new Command("create", "create a key generated in the HSM (default: AES-256-GCM for encryption)") { name, labels, rotation, purpose, algorithm, allowImport };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var keyName = ctx.KeyName(ctx.ParseResult.GetRequiredValue(name));
            if (Kms.Core.Names.ResourceSegments.Is(keyName, Kms.Core.Names.ResourceSegments.Collection, "aliases"))
            {
                throw new CliUsageException("an alias is not a key: create it with 'kms aliases create'");
            }

            var key = PurposeAndAlgorithm(ctx.ParseResult.GetValue(purpose), ctx.ParseResult.GetValue(algorithm));
            foreach (var (labelKey, labelValue) in ctx.ParseResult.GetValue(labels)!)
            {
                key.Labels[labelKey] = labelValue;
            }

            if (ctx.ParseResult.GetValue(rotation) is { } period)
            {
                key.RotationPeriod = Duration.FromTimeSpan(period);
            }

            key.AllowImport = ctx.ParseResult.GetValue(allowImport);

            var slash = keyName.LastIndexOf("/keys/", StringComparison.Ordinal);
            var response = await ctx.Client.Raw.CreateKeyAsync(
                new CreateKeyRequest { Parent = keyName[..slash], KeyId = keyName[(slash + "/keys/".Length)..], Key = key, RequestId = Guid.NewGuid().ToString() },
                cancellationToken: ct);
            WriteKey(ctx, response.Key);
            return ExitCodes.Ok;
        });
        return command;
    }

    // --algorithm names the purpose too; --purpose alone takes the server's default algorithm.
    private static Key PurposeAndAlgorithm(string? purpose, string? algorithm)
    {
        var named = purpose switch
        {
            null => (KeyPurpose?)null,
            "encrypt" => KeyPurpose.EncryptDecrypt,
            "sign" => KeyPurpose.SignVerify,
            "decrypt" => KeyPurpose.AsymmetricDecrypt,
            "mac" => KeyPurpose.Mac,
            _ => throw new CliUsageException("--purpose is encrypt, sign, decrypt or mac"),
        };
        if (algorithm is null)
        {
            return new Key { Purpose = named ?? KeyPurpose.EncryptDecrypt };
        }

        var spec = Kms.Core.Keys.KeyAlgorithms.All.FirstOrDefault(a => string.Equals(a.Name, algorithm, StringComparison.OrdinalIgnoreCase))
            ?? throw new CliUsageException($"unknown --algorithm {algorithm}; one of: {string.Join(", ", Kms.Core.Keys.KeyAlgorithms.All.Select(a => a.Name))}");
        var implied = (KeyPurpose)(int)spec.Purpose;
        if (named is { } given && given != implied)
        {
            throw new CliUsageException($"{spec.Name} is a {Kms.Core.Keys.KeyAlgorithms.PurposeName(spec.Purpose)} algorithm, not for --purpose {purpose}");
        }

        return new Key { Purpose = implied, Algorithm = (KeyAlgorithm)(int)spec.Algorithm };
    }

    private static Command List(CommandRunner runner)
    {
        var tenant = NameArgument.Create<string?>("TENANT", "the tenant (default: --tenant or the profile's)", optional: true);
        var command = new Command("list", "list a tenant's keys") { tenant };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var keys = new List<Key>();
            await foreach (var key in ctx.Client.ListKeysAsync(ctx.TenantName(ctx.ParseResult.GetValue(tenant)), cancellationToken: ct))
            {
                keys.Add(key);
            }

            ctx.Output.Result(
                new JsonObject { ["keys"] = new JsonArray([.. keys.Select(k => CliOutput.Proto(k))]) },
                () =>
                {
                    var table = CliOutput.Table("key", "state", "primary", "created", "rotation");
                    foreach (var key in keys)
                    {
                        CliOutput.AddRow(table, key.Name, State(key.State), key.Primary is null ? "" : ResourceNames.Last(key.Primary.Name), Time(key.CreateTime), Period(key.RotationPeriod));
                    }

                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ScheduleDeletion(CommandRunner runner)
    {
        var name = KeyArgument();
        var days = new Option<int?>("--days") { Description = "waiting period in days, 7 to 30 (default: the server's, 30)", HelpName = "N" };
        var command = new Command("schedule-deletion", "schedule a key's destruction after a waiting period (cancel with cancel-deletion)") { name, days };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var waiting = ctx.ParseResult.GetValue(days) is { } n ? TimeSpan.FromDays(n) : (TimeSpan?)null;
            var key = await ctx.Client.ScheduleKeyDeletionAsync(ctx.KeyName(ctx.ParseResult.GetRequiredValue(name)), waiting, cancellationToken: ct);
            WriteKey(ctx, key);
            ctx.Output.Note($"{key.Name} will be destroyed at {Time(key.DestroyTime)} unless 'kms keys cancel-deletion' is run before");
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>Under the versions table: what its encryptions column counts (docs/lifecycle.md, "GCM usage bounds").</summary>
    internal const string EncryptionsFootnote =
        "encryptions: counted toward the GCM bounds in reserved blocks (UsageLimits:ReservationBlock); after a restart they may run ahead, never behind";

    private static Command Versions(CommandRunner runner)
    {
        var name = KeyArgument();
        var command = new Command("versions", "list a key's versions with their state and usage") { name };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var versions = new List<KeyVersion>();
            await foreach (var version in ctx.Client.ListKeyVersionsAsync(ctx.KeyName(ctx.ParseResult.GetRequiredValue(name)), cancellationToken: ct))
            {
                versions.Add(version);
            }

            ctx.Output.Result(
                new JsonObject { ["versions"] = new JsonArray([.. versions.Select(v => CliOutput.Proto(v))]) },
                () =>
                {
                    var table = CliOutput.Table("version", "state", "algorithm", "created", "encryptions", "decryptions", "destroy time");
                    foreach (var version in versions)
                    {
                        CliOutput.AddRow(
                            table,
                            version.Name,
                            State(version.State),
                            CliOutput.EnumName(version.Algorithm),
                            Time(version.CreateTime),
                            (version.Usage?.EncryptCount ?? 0).ToString(CultureInfo.InvariantCulture),
                            (version.Usage?.DecryptCount ?? 0).ToString(CultureInfo.InvariantCulture),
                            Time(version.DestroyTime));
                    }

                    // After a restart every version used before shows a whole block (4,096 by
                    // default) more than was called: a reader would take that for use nobody made.
                    table.Caption(EncryptionsFootnote);
                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command OnKey(CommandRunner runner, string verb, string description, Func<Infrastructure.CliContext, string, CancellationToken, Task<Key>> call)
    {
        var name = KeyArgument();
        var command = new Command(verb, description) { name };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteKey(ctx, await call(ctx, ctx.KeyName(ctx.ParseResult.GetRequiredValue(name)), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Spectre.Console.Table KeyTable(Key key) => CliOutput.Properties(
    [
        ("name", key.Name),
        ("purpose", CliOutput.EnumName(key.Purpose)),
        ("state", State(key.State)),
        ("primary", key.Primary?.Name),
        ("created", Time(key.CreateTime)),
        ("rotation period", Period(key.RotationPeriod)),
        ("next rotation", Time(key.NextRotationTime)),
        ("min decryption version", key.MinDecryptionVersion == 0 ? "" : key.MinDecryptionVersion.ToString(CultureInfo.InvariantCulture)),
        ("destroy time", Time(key.DestroyTime)),
        ("allow import", key.AllowImport ? "yes" : ""),
        ("labels", string.Join(", ", key.Labels.OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => $"{l.Key}={l.Value}"))),
    ]);

    internal static string State(KeyState state) => CliOutput.EnumName(state);

    internal static string Time(Timestamp? time) =>
        time is null ? "" : time.ToDateTimeOffset().ToString("yyyy-MM-dd HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    private static string Period(Duration? period) => period is null ? "" : DurationText.Format(period.ToTimeSpan());
}
