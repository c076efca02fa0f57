using System.CommandLine;
using System.Text;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;
using Kms.Contracts.V1;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms tenants|principals|tokens|roles …</c>: AccessManagementService for deployment admins —
/// tenants and their offboarding (and its undo), principals, API tokens (a new token's secret
/// goes to a file created mode 0600, never to the terminal) and role bindings.
/// docs/access-control.md, docs/cli.md.
/// </summary>
internal static class AccessCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var tenants = new Command("tenants", "create, show, list and offboard tenants (deployment admins)");
        tenants.Subcommands.Add(CreateTenant(runner));
        tenants.Subcommands.Add(GetTenant(runner));
        tenants.Subcommands.Add(ListTenants(runner));
        tenants.Subcommands.Add(DeleteTenant(runner));
        tenants.Subcommands.Add(CancelTenantDeletion(runner));

        var principals = new Command("principals", "register, show, list and offboard principals (deployment admins)");
        principals.Subcommands.Add(CreatePrincipal(runner));
        principals.Subcommands.Add(GetPrincipal(runner));
        principals.Subcommands.Add(ListPrincipals(runner));
        principals.Subcommands.Add(DeletePrincipal(runner));

        var tokens = new Command("tokens", "issue, list and revoke a principal's API tokens (deployment admins)");
        tokens.Subcommands.Add(CreateToken(runner));
        tokens.Subcommands.Add(ListTokens(runner));
        tokens.Subcommands.Add(RevokeToken(runner));

        var roles = new Command("roles", "grant, remove and review role bindings");
        roles.Subcommands.Add(Bind(runner));
        roles.Subcommands.Add(Unbind(runner));
        roles.Subcommands.Add(ListBindings(runner));
        return [tenants, principals, tokens, roles];
    }

    private static Argument<string?> TenantArgument() =>
        NameArgument.Create<string?>("TENANT", "the tenant: ID or tenants/ID (default: --tenant or the profile's)", optional: true);

    private static Argument<string> PrincipalArgument() =>
        NameArgument.Create<string>("PRINCIPAL", "a typed principal name: token:NAME, cn:COMMON-NAME or spiffe:spiffe://…");

    private static Option<bool> DeploymentOption(string what) => new("--deployment") { Description = what };

    private static Command CreateTenant(CommandRunner runner)
    {
        var id = NameArgument.Create<string>("ID", "the new tenant's id (letters, digits, - _ .; at most 63)");
        var displayName = new Option<string>("--display-name") { Description = "free text, at most 200 characters", HelpName = "TEXT" };
        var command = new Command("create", "create a tenant") { id, displayName };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var tenantId = ctx.TenantName(ctx.ParseResult.GetRequiredValue(id))["tenants/".Length..];
            WriteTenant(ctx, await ctx.Client.CreateTenantAsync(tenantId, ctx.ParseResult.GetValue(displayName), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command GetTenant(CommandRunner runner)
    {
        var tenant = TenantArgument();
        var command = new Command("get", "show a tenant and its state") { tenant };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteTenant(ctx, await ctx.Client.GetTenantAsync(ctx.TenantName(ctx.ParseResult.GetValue(tenant)), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ListTenants(CommandRunner runner)
    {
        var command = new Command("list", "list tenants");
        runner.SetAction(command, async (ctx, ct) =>
        {
            var all = new List<TenantInfo>();
            await foreach (var tenant in ctx.Client.ListTenantsAsync(cancellationToken: ct))
            {
                all.Add(tenant);
            }

            ctx.Output.Result(
                new JsonObject { ["tenants"] = new JsonArray([.. all.Select(t => CliOutput.Proto(t))]) },
                () =>
                {
                    var table = CliOutput.Table("tenant", "state", "display name", "created", "offboarding since");
                    foreach (var tenant in all)
                    {
                        CliOutput.AddRow(table, tenant.Name, tenant.State, tenant.DisplayName, KeysCommands.Time(tenant.CreateTime), KeysCommands.Time(tenant.DeleteTime));
                    }

                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command DeleteTenant(CommandRunner runner)
    {
        var tenant = NameArgument.Create<string>("TENANT", "the tenant to offboard: ID or tenants/ID (never the profile's by default)");
        var confirm = new Option<string>("--confirm")
        {
            Description = "the tenant's id again: every call of its principals is refused from now on, and its keys are destroyed after the waiting period",
            HelpName = "ID",
            Required = true,
        };
        var days = new Option<int?>("--days") { Description = "the keys' waiting period in days, 7 to 30 (default: the server's, 30)", HelpName = "N" };
        var command = new Command("delete", "offboard a tenant: refuse its principals' calls and schedule every key's deletion (undo with cancel-deletion)") { tenant, confirm, days };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var name = ctx.TenantName(ctx.ParseResult.GetRequiredValue(tenant));
            if (ctx.ParseResult.GetRequiredValue(confirm) != name["tenants/".Length..])
            {
                throw new CliUsageException($"--confirm must repeat the tenant's id ({name["tenants/".Length..]}) to offboard {name}");
            }

            var waiting = ctx.ParseResult.GetValue(days) is { } n ? TimeSpan.FromDays(n) : (TimeSpan?)null;
            WriteTenant(ctx, await ctx.Client.DeleteTenantAsync(name, waiting, ct));
            ctx.Output.Note($"{name} is DELETING: its principals' calls are refused and its keys are scheduled for deletion; kms tenants cancel-deletion {name} undoes it while the waiting period runs");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command CancelTenantDeletion(CommandRunner runner)
    {
        var tenant = NameArgument.Create<string>("TENANT", "the tenant being offboarded: ID or tenants/ID");
        var command = new Command("cancel-deletion", "stop a tenant's offboarding while its keys' waiting period runs (its keys stay scheduled until their managers cancel each)") { tenant };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var response = await ctx.Client.CancelTenantDeletionAsync(ctx.TenantName(ctx.ParseResult.GetRequiredValue(tenant)), ct);
            var json = CliOutput.Proto(response);
            ctx.Output.Result(json, () => CliOutput.Properties(
            [
                ("name", response.Tenant.Name),
                ("state", response.Tenant.State),
                ("keys still scheduled", response.ScheduledKeys.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                ("earliest destroy time", KeysCommands.Time(response.EarliestDestroyTime)),
            ]));
            if (response.ScheduledKeys > 0)
            {
                ctx.Output.Note($"{response.ScheduledKeys} key(s) of {response.Tenant.Name} are still DESTROY_SCHEDULED, the first due {KeysCommands.Time(response.EarliestDestroyTime)}: "
                    + "a key manager of the tenant cancels each to keep it (kms keys cancel-deletion KEY, then kms keys enable KEY)");
            }

            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command CreatePrincipal(CommandRunner runner)
    {
        var principal = PrincipalArgument();
        var deployment = DeploymentOption("register a deployment-level principal (no tenant), for deployment roles");
        var displayName = new Option<string>("--display-name") { Description = "free text, at most 200 characters", HelpName = "TEXT" };
        var command = new Command("create", "register a principal in the tenant (--tenant or the profile's), or --deployment") { principal, deployment, displayName };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var tenant = ctx.ParseResult.GetValue(deployment) ? null : ctx.TenantName(null);
            WritePrincipal(ctx, await ctx.Client.CreatePrincipalAsync(ctx.ParseResult.GetRequiredValue(principal), tenant, ctx.ParseResult.GetValue(displayName), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command GetPrincipal(CommandRunner runner)
    {
        var principal = PrincipalArgument();
        var command = new Command("get", "show a principal") { principal };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WritePrincipal(ctx, await ctx.Client.GetPrincipalAsync(ctx.ParseResult.GetRequiredValue(principal), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ListPrincipals(CommandRunner runner)
    {
        var deployment = DeploymentOption("list deployment-level principals instead of a tenant's");
        var showDeleted = new Option<bool>("--show-deleted") { Description = "include offboarded principals" };
        var command = new Command("list", "list a tenant's principals (--tenant or the profile's), or --deployment") { deployment, showDeleted };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var tenant = ctx.ParseResult.GetValue(deployment) ? null : ctx.TenantName(null);
            var all = new List<PrincipalInfo>();
            await foreach (var principal in ctx.Client.ListPrincipalsAsync(tenant, 0, ctx.ParseResult.GetValue(showDeleted), ct))
            {
                all.Add(principal);
            }

            ctx.Output.Result(
                new JsonObject { ["principals"] = new JsonArray([.. all.Select(p => CliOutput.Proto(p))]) },
                () =>
                {
                    var table = CliOutput.Table("principal", "tenant", "state", "display name", "created");
                    foreach (var principal in all)
                    {
                        CliOutput.AddRow(table, principal.Name, principal.Tenant, principal.State, principal.DisplayName, KeysCommands.Time(principal.CreateTime));
                    }

                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command DeletePrincipal(CommandRunner runner)
    {
        var principal = PrincipalArgument();
        var command = new Command("delete", "offboard a principal: its tokens are revoked and its role bindings removed") { principal };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WritePrincipal(ctx, await ctx.Client.DeletePrincipalAsync(ctx.ParseResult.GetRequiredValue(principal), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command CreateToken(CommandRunner runner)
    {
        var principal = PrincipalArgument();
        var kind = new Option<string>("--kind")
        {
            Description = "SERVICE (a workload's: days to a year, never an administrative role) or SESSION (an operator's: minutes to 12 hours)",
            HelpName = "KIND",
            Required = true,
        };
        kind.AcceptOnlyFromAmong("SERVICE", "SESSION", "service", "session");
        var lifetime = new Option<TimeSpan?>("--lifetime")
        {
            Description = "how long it lasts, e.g. 90d, 12h, 15m (default: the server's for the kind: 90 days, 15 minutes)",
            HelpName = "DURATION",
            CustomParser = DurationText.Parse,
        };
        var output = new Option<string>("--out")
        {
            Description = "the file the token goes to, created mode 0600 (shown only once; not standard output)",
            HelpName = "FILE",
            Required = true,
        };
        var force = OutputFile.ForceOption();
        var command = new Command("create", "issue an API token for a principal; its secret goes to --out") { principal, kind, lifetime, output, force };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var path = ctx.ParseResult.GetRequiredValue(output);
            if (path == "-")
            {
                throw new CliUsageException("--out: a file, not standard output (an API token is a credential)");
            }

            // Opened before the call: an existing file (without --force) is refused before a token exists that nobody has.
            await using var target = OutputFile.Open(ctx.Environment, path, ctx.ParseResult.GetValue(force), "--out");
            var response = await ctx.Client.CreateApiTokenAsync(
                ctx.ParseResult.GetRequiredValue(principal), ctx.ParseResult.GetRequiredValue(kind).ToUpperInvariant(), ctx.ParseResult.GetValue(lifetime), ct);
            await WriteTokenAsync(target, response, ct);
            var json = CliOutput.Proto(response.Token);
            json["token_file"] = target.Name;
            ctx.Output.Result(json, () => CliOutput.Properties(
            [
                ("id", response.Token.Id),
                ("principal", response.Token.Principal),
                ("kind", response.Token.Kind),
                ("expires", KeysCommands.Time(response.Token.ExpireTime)),
                ("token file", target.Name),
            ]));
            return ExitCodes.Ok;
        });
        return command;
    }

    // The token exists once the call returned: a failure to write it must say so (it is shown
    // nowhere else), and name the id to revoke.
    private static async Task WriteTokenAsync(OutputFile target, CreateApiTokenResponse response, CancellationToken cancellationToken)
    {
        var bytes = Encoding.UTF8.GetBytes(response.Secret + "\n");
        try
        {
            await target.Stream.WriteAsync(bytes, cancellationToken);
            await target.CommitAsync(cancellationToken);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OperationCanceledException)
        {
            throw new CliFailureException(ErrorReport.From(e).ExitCode,
                $"token {response.Token.Id} for {response.Token.Principal} WAS issued, but could not be written to {target.Name} ({e.Message.ReplaceLineEndings(" ")}): "
                + $"its secret is lost, shown nowhere else; revoke it (kms tokens revoke {response.Token.Id}) and issue another");
        }
        finally
        {
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(bytes);
        }
    }

    private static Command ListTokens(CommandRunner runner)
    {
        var principal = PrincipalArgument();
        var command = new Command("list", "list a principal's API tokens (never their secrets)") { principal };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var all = new List<ApiTokenInfo>();
            await foreach (var token in ctx.Client.ListApiTokensAsync(ctx.ParseResult.GetRequiredValue(principal), cancellationToken: ct))
            {
                all.Add(token);
            }

            ctx.Output.Result(
                new JsonObject { ["tokens"] = new JsonArray([.. all.Select(t => CliOutput.Proto(t))]) },
                () =>
                {
                    var table = CliOutput.Table("id", "kind", "created", "expires", "revoked");
                    foreach (var token in all)
                    {
                        CliOutput.AddRow(table, token.Id, token.Kind, KeysCommands.Time(token.CreateTime), KeysCommands.Time(token.ExpireTime), KeysCommands.Time(token.RevokeTime));
                    }

                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command RevokeToken(CommandRunner runner)
    {
        var id = NameArgument.Create<string>("ID", "the token's id (16 hex digits, as tokens list shows it)");
        var command = new Command("revoke", "revoke an API token (at once on this node; other nodes within the change feed's poll)") { id };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var tokenId = ctx.ParseResult.GetRequiredValue(id);
            await ctx.Client.RevokeApiTokenAsync(tokenId, ct);
            ctx.Output.Result(new JsonObject { ["revoked"] = tokenId }, $"revoked token {tokenId}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Argument<string> RoleArgument() =>
        NameArgument.Create<string>("ROLE", "admin, key-manager, key-importer, key-user, auditor (tenant roles) or deployment-admin, security-officer (with --deployment)");

    private static Command Bind(CommandRunner runner)
    {
        var principal = PrincipalArgument();
        var role = RoleArgument();
        var deployment = DeploymentOption("a deployment role (deployment-admin, security-officer) instead of a role in the tenant");
        var command = new Command("bind", "grant a principal a role in its tenant (--tenant or the profile's), or --deployment") { principal, role, deployment };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var tenant = ctx.ParseResult.GetValue(deployment) ? null : ctx.TenantName(null);
            var binding = await ctx.Client.SetRoleBindingAsync(ctx.ParseResult.GetRequiredValue(principal), ctx.ParseResult.GetRequiredValue(role), tenant, ct);
            ctx.Output.Result(CliOutput.Proto(binding), $"{binding.Principal} holds {binding.Role}{(binding.Tenant.Length > 0 ? " in " + binding.Tenant : " (deployment)")}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Unbind(CommandRunner runner)
    {
        var principal = PrincipalArgument();
        var role = RoleArgument();
        var deployment = DeploymentOption("a deployment role instead of a role in the tenant");
        var command = new Command("unbind", "remove a principal's role in the tenant (--tenant or the profile's), or --deployment") { principal, role, deployment };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var tenant = ctx.ParseResult.GetValue(deployment) ? null : ctx.TenantName(null);
            var name = ctx.ParseResult.GetRequiredValue(principal);
            var roleName = ctx.ParseResult.GetRequiredValue(role);
            await ctx.Client.DeleteRoleBindingAsync(name, roleName, tenant, ct);
            ctx.Output.Result(new JsonObject { ["principal"] = name, ["role"] = roleName, ["tenant"] = tenant ?? "", ["removed"] = true },
                $"{name} no longer holds {roleName}{(tenant is null ? " (deployment)" : " in " + tenant)}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ListBindings(CommandRunner runner)
    {
        var deployment = DeploymentOption("list deployment-wide bindings instead of a tenant's");
        var command = new Command("list", "list the role bindings of a tenant (--tenant or the profile's), or --deployment: an access review") { deployment };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var tenant = ctx.ParseResult.GetValue(deployment) ? null : ctx.TenantName(null);
            var all = new List<RoleBindingInfo>();
            await foreach (var binding in ctx.Client.ListRoleBindingsAsync(tenant, cancellationToken: ct))
            {
                all.Add(binding);
            }

            ctx.Output.Result(
                new JsonObject { ["bindings"] = new JsonArray([.. all.Select(b => CliOutput.Proto(b))]) },
                () =>
                {
                    var table = CliOutput.Table("principal", "role", "tenant", "since");
                    foreach (var binding in all)
                    {
                        CliOutput.AddRow(table, binding.Principal, binding.Role, binding.Tenant, KeysCommands.Time(binding.CreateTime));
                    }

                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static void WriteTenant(CliContext context, TenantInfo tenant) =>
        context.Output.Result(CliOutput.Proto(tenant), () => CliOutput.Properties(
        [
            ("name", tenant.Name),
            ("state", tenant.State),
            ("display name", tenant.DisplayName),
            ("created", KeysCommands.Time(tenant.CreateTime)),
            ("offboarding since", KeysCommands.Time(tenant.DeleteTime)),
        ]));

    private static void WritePrincipal(CliContext context, PrincipalInfo principal) =>
        context.Output.Result(CliOutput.Proto(principal), () => CliOutput.Properties(
        [
            ("name", principal.Name),
            ("tenant", principal.Tenant),
            ("state", principal.State),
            ("display name", principal.DisplayName),
            ("created", KeysCommands.Time(principal.CreateTime)),
        ]));
}
