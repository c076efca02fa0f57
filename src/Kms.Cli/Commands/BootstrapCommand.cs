using System.CommandLine;
using System.Text;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms bootstrap ADMIN</c>: AccessManagementService.Bootstrap with a one-time credential from a
/// server's bootstrap-credential file — the start-up one (no deployment admin yet) or an executed
/// RECOVER_DEPLOYMENT_ADMIN request's — read from a file or a descriptor, never from the command
/// line (argv is readable by other users). docs/access-control.md, docs/cli.md.
/// </summary>
internal static class BootstrapCommand
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var admin = NameArgument.Create<string>("ADMIN", "the new deployment admin: token:NAME (which receives a session token) or a certificate principal (cn:…, spiffe:…)");
        var displayName = new Option<string>("--display-name") { Description = "free text for the new admin, at most 200 characters", HelpName = "TEXT" };
        var credential = new SecretOption("credential", "the one-time bootstrap or recovery credential (the server's Kms:BootstrapTokenPath file)");
        var sessionOut = new Option<string>("--session-token-out")
        {
            Description = "for a token: admin, the file its session token (15 minutes) goes to: created with mode 0600",
            HelpName = "FILE",
        };
        var force = OutputFile.ForceOption();
        var command = new Command("bootstrap", "register a deployment admin with a one-time bootstrap or recovery credential; the call uses the credential up") { admin, displayName, sessionOut, force };
        credential.AddTo(command);
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var name = parse.GetRequiredValue(admin);
            var outPath = parse.GetValue(sessionOut);
            var tokenPrincipal = name.StartsWith("token:", StringComparison.Ordinal);

            // Checked before the call: the credential works once, so the session token must have somewhere to go.
            if (tokenPrincipal && outPath is null)
            {
                throw new CliUsageException($"{name} receives a session token, shown only once: give --session-token-out FILE (the credential is used up by the call)");
            }

            if (outPath == "-")
            {
                throw new CliUsageException("--session-token-out: a file, not standard output (a session token is a credential)");
            }

            if (!tokenPrincipal && outPath is not null)
            {
                throw new CliUsageException($"--session-token-out: only a token: admin receives a session token; {name} authenticates with its certificate");
            }

            // Opened before the call too: an existing file (without --force) is refused while the credential still works.
            await using var target = outPath is null ? null : OutputFile.Open(ctx.Environment, outPath, parse.GetValue(force), "--session-token-out");
            Kms.Contracts.V1.BootstrapResponse response;
            using (var secret = SecretInput.Read(ctx, credential, "bootstrap or recovery credential"))
            {
                using var client = ctx.CreateClientWithToken(secret.Reveal());
                response = await client.BootstrapAsync(name, parse.GetValue(displayName), ct);
            }

            if (target is not null)
            {
                await WriteSessionTokenAsync(target, response, ct);
            }

            var json = new JsonObject { ["admin"] = response.Admin.Name, ["session_token_file"] = target?.Name };
            ctx.Output.Result(json, target is null
                ? $"{response.Admin.Name} is a deployment admin; the credential is used up"
                : $"{response.Admin.Name} is a deployment admin; its session token (15 minutes) is in {target.Name}; the credential is used up");
            return ExitCodes.Ok;
        });
        return [command];
    }

    // The admin is registered and the credential used up: a failure now must say so, or the
    // operator takes it for a failed bootstrap and looks for a credential that no longer works.
    private static async Task WriteSessionTokenAsync(OutputFile target, Kms.Contracts.V1.BootstrapResponse response, CancellationToken cancellationToken)
    {
        // The bytes are zeroed once written; the response's string cannot be, and goes with the process.
        var bytes = Encoding.UTF8.GetBytes(response.SessionToken + "\n");
        try
        {
            await target.Stream.WriteAsync(bytes, cancellationToken);
            await target.CommitAsync(cancellationToken);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OperationCanceledException)
        {
            var admin = response.Admin.Name;
            throw new CliFailureException(ErrorReport.From(e).ExitCode,
                $"{admin} IS registered as a deployment admin (the credential is used up), but its session token could not be written to {target.Name} "
                + $"({e.Message.ReplaceLineEndings(" ")}): the session token is lost, shown nowhere else. To give {admin} a credential: a deployment admin "
                + $"whose credential works issues it a token (AccessManagementService.CreateApiToken); if there is none, the security officers approve a new "
                + "RECOVER_DEPLOYMENT_ADMIN request (kms quorum recover-admin) and kms bootstrap runs again with the credential it writes");
        }
        finally
        {
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(bytes);
        }
    }
}
