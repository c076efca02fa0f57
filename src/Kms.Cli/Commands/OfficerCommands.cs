using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Quorum;
using Spectre.Console;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms officer …</c> (a security officer's own key and approvals) and <c>kms quorum …</c>
/// (asking for, listing and showing quorum requests, the officer set). docs/quorum.md.
/// </summary>
internal static class OfficerCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var officer = new Command("officer", "a security officer's key pair and approvals of quorum requests");
        officer.Subcommands.Add(KeyGen(runner));
        officer.Subcommands.Add(Approve(runner));

        var quorum = new Command("quorum", "quorum requests for sensitive operations, and the officer set");
        quorum.Subcommands.Add(DestroyVersion(runner));
        quorum.Subcommands.Add(ChangeOfficers(runner));
        quorum.Subcommands.Add(RotateDomain(runner));
        quorum.Subcommands.Add(RestoreDomain(runner));
        quorum.Subcommands.Add(RecoverAdmin(runner));
        quorum.Subcommands.Add(Export(runner));
        quorum.Subcommands.Add(List(runner));
        quorum.Subcommands.Add(Show(runner));
        quorum.Subcommands.Add(Officers(runner));
        return [officer, quorum];
    }

    private static Command KeyGen(CommandRunner runner)
    {
        var output = new Option<string>("--out") { Description = "the private key file to create (encrypted PKCS#8, mode 0600); the public key goes to FILE.pub", HelpName = "FILE", Required = true };
        var passphrase = new SecretOption("key-passphrase", "the passphrase that encrypts the officer key");
        var command = new Command("keygen", "create an officer key pair (ECDSA P-256); give FILE.pub to the ceremony") { output };
        passphrase.AddTo(command);
        runner.SetAction(command, (ctx, _) =>
        {
            // Before the passphrase is asked for: the key was written under a temporary name, which a failure named.
            var privateKeyPath = LocalPath.Writable(ctx.Environment, ctx.ParseResult.GetRequiredValue(output), "--out");
            if (Directory.Exists(privateKeyPath))
            {
                throw new CliUsageException($"--out {privateKeyPath} is a directory: give a file's path");
            }

            // An output that exists is a usage error (exit 2), as for any other output; officer keys are never overwritten.
            foreach (var path in new[] { privateKeyPath, privateKeyPath + ".pub" })
            {
                if (File.Exists(path) || Directory.Exists(path))
                {
                    throw new CliUsageException(path == privateKeyPath
                        ? $"--out {path} exists: officer keys are never overwritten"
                        : $"--out {privateKeyPath}: its public key file {path} exists: officer keys are never overwritten");
                }
            }

            using var secret = SecretInput.Read(ctx, passphrase, "passphrase for the new officer key");
            var files = OfficerKeys.Generate(privateKeyPath, secret.Reveal());
            ctx.Output.Result(
                new JsonObject { ["private_key"] = files.PrivateKeyPath, ["public_key"] = files.PublicKeyPath, ["fingerprint"] = files.Fingerprint },
                () => CliOutput.Properties([("private key", files.PrivateKeyPath), ("public key", files.PublicKeyPath), ("fingerprint", files.Fingerprint)]));
            return Task.FromResult(ExitCodes.Ok);
        });
        return command;
    }

    private static Command Approve(CommandRunner runner)
    {
        var request = NameArgument.Create<string>("REQUEST", "the quorum request: tenants/T/quorumRequests/ID, or quorumRequests/ID (or just ID) for a deployment-wide one");
        var key = new Option<string>("--key") { Description = "this officer's private key file (from kms officer keygen)", HelpName = "FILE", Required = true };
        var yes = new Option<bool>("--yes") { Description = "approve without asking (the rendering is still printed); for scripted drills" };
        var passphrase = new SecretOption("key-passphrase", "the officer key's passphrase");
        var command = new Command("approve", "render a quorum request HERE, show it, and sign that rendering with this officer's key") { request, key, yes };
        passphrase.AddTo(command);
        runner.SetAction(command, async (ctx, ct) =>
        {
            // Checked before the passphrase is asked for.
            var keyPath = LocalPath.File(ctx.Environment, ctx.ParseResult.GetRequiredValue(key), "--key");
            QuorumApprover approver;
            using (var secret = SecretInput.Read(ctx, passphrase, "officer key passphrase"))
            {
                approver = LocalPath.Read(keyPath, path => QuorumApprover.Load(path, secret.Reveal()), "--key");
            }

            using (approver)
            {
                PendingApproval pending;
                try
                {
                    pending = await approver.PrepareAsync(ctx.Client, RequestName(ctx.ParseResult.GetRequiredValue(request)), ct);
                }
                catch (InvalidOperationException e)
                {
                    throw new CliFailureException(ExitCodes.Conflict, e.Message);
                }

                // What is signed is exactly this text, computed on this machine from the request's fields,
                // under the tag "kms quorum approval v2" and with a last line "signed: <this machine's time>".
                ctx.Output.ErrorConsole.Write(new Panel(new Text(pending.Rendering)).Header($"you are approving (officer {approver.Fingerprint})"));
                if (!ctx.ParseResult.GetValue(yes))
                {
                    if (!ctx.Environment.Interactive)
                    {
                        throw new CliUsageException("not at a terminal: read the rendering above and pass --yes to approve it");
                    }

                    if (!ctx.Output.ErrorConsole.Confirm("Sign this request?", defaultValue: false))
                    {
                        throw new CliFailureException(ExitCodes.Cancelled, "not approved");
                    }
                }

                ApproveQuorumRequestResponse response;
                try
                {
                    response = await approver.ApproveAsync(ctx.Client, pending, ct);
                }
                catch (InvalidOperationException e)
                {
                    throw new CliFailureException(ExitCodes.Conflict, e.Message);
                }

                var json = new JsonObject
                {
                    ["request"] = pending.Name,
                    ["officer_fingerprint"] = approver.Fingerprint,
                    ["valid_approvals"] = response.ValidApprovals,
                    ["threshold"] = response.Threshold,
                    ["executed"] = response.Executed,
                    ["rendering"] = pending.Rendering,
                };
                if (response.Request.Approvals.FirstOrDefault(a => a.OfficerFingerprint == approver.Fingerprint)?.SignTime is { } signed)
                {
                    json["sign_time"] = QuorumRendering.Time(signed.ToDateTimeOffset());
                }

                json["state"] = CliOutput.ProtoEnumName(response.Request.State);
                json["executing_node"] = response.Request.ExecutingNode;
                json["credential_path"] = response.Request.CredentialPath;
                ctx.Output.Result(json, response.Executed
                    ? $"approved: {response.ValidApprovals} of {response.Threshold}; the request was executed{WhereItsOutputIs(response.Request)}"
                    : response.Request.State == Kms.Contracts.V1.QuorumRequestState.Approved
                        ? $"approved: {response.ValidApprovals} of {response.Threshold}; the request is APPROVED: export it for the ceremony (kms quorum export {pending.Name} --out FILE)"
                        : $"approved: {response.ValidApprovals} of {response.Threshold} approvals so far");
                return ExitCodes.Ok;
            }
        });
        return command;
    }

    private static Command DestroyVersion(CommandRunner runner)
    {
        var version = NameArgument.Create<string>("VERSION", "the key version: tenants/T/keys/K/versions/N");
        var ttl = Ttl();
        var command = new Command("destroy-version", "ask the officers to destroy a key version now, skipping its waiting period") { version, ttl };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var info = await ctx.Client.RequestDestroyKeyVersionNowAsync(ctx.ParseResult.GetRequiredValue(version), ctx.ParseResult.GetValue(ttl), ct);
            WriteRequest(ctx, info);
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ChangeOfficers(CommandRunner runner)
    {
        var officers = ContextOption.Create("--officer", "NAME=PUBLIC-KEY.pem: a member of the new officer set (repeatable)");
        var threshold = new Option<int>("--threshold") { Description = "approvals the new set needs", HelpName = "M", Required = true };
        var ttl = Ttl();
        var command = new Command("change-officers", "ask the current officers to replace the officer set and its threshold") { officers, threshold, ttl };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var set = await NewOfficerSetAsync(ctx, ctx.ParseResult.GetValue(officers)!, ct);
            var info = await ctx.Client.RequestOfficerChangeAsync(set.Select(o => (o.Name, o.PublicKey.ToArray())), ctx.ParseResult.GetValue(threshold), ctx.ParseResult.GetValue(ttl), ct);
            WriteRequest(ctx, info);
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command RotateDomain(CommandRunner runner)
    {
        var custodians = new Option<int>("--new-custodians") { Description = "N: custodians of the new domain key's shares", HelpName = "N", Required = true };
        var threshold = new Option<int>("--new-threshold") { Description = "M: new shares that rebuild the new domain key", HelpName = "M", Required = true };
        var ttl = Ttl();
        var command = new Command("rotate-domain", "ask the officers to approve a domain-key rotation (carried out offline by kms ceremony rotate-domain --approval)") { custodians, threshold, ttl };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteRequest(ctx, await ctx.Client.RequestDomainKeyRotationAsync(ctx.ParseResult.GetValue(custodians), ctx.ParseResult.GetValue(threshold), ctx.ParseResult.GetValue(ttl), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command RestoreDomain(CommandRunner runner)
    {
        var token = new Option<string>("--token-label") { Description = "the token the domain key will be restored into", HelpName = "LABEL", Required = true };
        var ttl = Ttl();
        var command = new Command("restore-domain", "ask the officers to approve restoring the domain key into a token (carried out offline by kms ceremony restore-domain --approval)") { token, ttl };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteRequest(ctx, await ctx.Client.RequestDomainRestoreAsync(ctx.ParseResult.GetRequiredValue(token), ctx.ParseResult.GetValue(ttl), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command RecoverAdmin(CommandRunner runner)
    {
        var ttl = Ttl();
        var command = new Command("recover-admin",
            "ask the officers to authorise one deployment-admin recovery: the node that executes it writes a one-time credential (15 minutes) to its bootstrap-credential file, for AccessManagementService.Bootstrap")
        { ttl };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteRequest(ctx, await ctx.Client.RequestDeploymentAdminRecoveryAsync(ctx.ParseResult.GetValue(ttl), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Export(CommandRunner runner)
    {
        var request = NameArgument.Create<string>("REQUEST", "the approved request: quorumRequests/ID (or just ID)");
        var output = new Option<string>("--out") { Description = "the approval bundle to write (JSON); take it to the ceremony host", HelpName = "FILE", Required = true };
        var force = new Option<bool>("--force") { Description = "replace FILE if it exists" };
        var command = new Command("export", "write an APPROVED rotation or restore request, its signatures and the officer chain as an approval bundle for the offline ceremony") { request, output, force };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var name = RequestName(ctx.ParseResult.GetRequiredValue(request));

            // Opened before the call: a path that cannot take the bundle is said so before the server is asked.
            await using var file = OutputFile.Open(ctx.Environment, ctx.ParseResult.GetRequiredValue(output), ctx.ParseResult.GetValue(force), "--out");
            var response = await ctx.Client.ExportQuorumApprovalAsync(name, ct);
            ApprovalBundle bundle;
            try
            {
                // Parsed here only to show what it holds and to refuse a mix-up; the ceremony verifies it.
                bundle = ApprovalBundle.Parse(response.Bundle);
            }
            catch (Kms.Core.Errors.KmsException e)
            {
                throw new CliFailureException(ExitCodes.Unexpected, $"the server sent a malformed approval bundle: {e.Message}");
            }

            if (bundle.Request.Name != name)
            {
                throw new CliFailureException(ExitCodes.Unexpected, $"the server sent the approval of {bundle.Request.Name}, not of {name}");
            }

            await file.Stream.WriteAsync(System.Text.Encoding.UTF8.GetBytes(response.Bundle), ct);
            await file.CommitAsync(ct);
            if (file.Path is null)
            {
                // Standard output holds the bundle: nothing after it.
                return ExitCodes.Ok;
            }

            var rendering = QuorumRendering.Render(bundle.Request);
            var approvers = bundle.Request.Approvals.Select(a => a.OfficerFingerprint).ToList();
            ctx.Output.Result(
                new JsonObject
                {
                    ["request"] = name,
                    ["file"] = ctx.Environment.FullPath(ctx.ParseResult.GetRequiredValue(output)),
                    ["approvals"] = new JsonArray([.. approvers.Select(f => (JsonNode)f)]),
                    ["officer_chain_length"] = bundle.Chain.Count,
                    ["rendering"] = rendering,
                },
                () => new Rows(
                    CliOutput.Properties([("request", name), ("approvals", string.Join(", ", approvers)), ("officer chain", $"{bundle.Chain.Count} sets")]),
                    new Panel(new Text(rendering)).Header("what the officers signed")));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command List(CommandRunner runner)
    {
        var tenant = NameArgument.Create<string?>("TENANT", "a tenant's requests (default: deployment-wide requests)", optional: true);
        var command = new Command("list", "list quorum requests") { tenant };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parent = ctx.ParseResult.GetValue(tenant) is { } t ? ctx.TenantName(t) : "";
            var requests = new List<QuorumRequestInfo>();
            await foreach (var info in ctx.Client.ListQuorumRequestsAsync(parent, ct))
            {
                requests.Add(info);
            }

            ctx.Output.Result(new JsonArray([.. requests.Select(r => CliOutput.Proto(r))]), () =>
            {
                var table = CliOutput.Table("request", "operation", "state", "approvals", "expires");
                foreach (var r in requests)
                {
                    CliOutput.AddRow(table, r.Name, CliOutput.EnumName(r.Operation), CliOutput.EnumName(r.State), r.Approvals.Count.ToString(CultureInfo.InvariantCulture), QuorumRendering.Time(r.ExpireTime.ToDateTimeOffset()));
                }

                return table;
            });
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Show(CommandRunner runner)
    {
        var request = NameArgument.Create<string>("REQUEST", "the quorum request");
        var command = new Command("show", "show a quorum request as officers sign it (rendered on this machine)") { request };
        runner.SetAction(command, async (ctx, ct) =>
        {
            WriteRequest(ctx, await ctx.Client.GetQuorumRequestAsync(RequestName(ctx.ParseResult.GetRequiredValue(request)), ct));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Officers(CommandRunner runner)
    {
        var command = new Command("officers", "the current officer set (verified by the server back to the pinned genesis)");
        runner.SetAction(command, async (ctx, ct) =>
        {
            var set = await ctx.Client.GetOfficerSetAsync(ct);
            ctx.Output.Result(CliOutput.Proto(set), () =>
            {
                var table = CliOutput.Table("officer", "fingerprint");
                foreach (var o in set.Officers)
                {
                    CliOutput.AddRow(table, o.Name, o.Fingerprint);
                }

                table.Caption($"set {set.Sequence} ({set.Hash[..16]}…), threshold {set.Threshold} of {set.Officers.Count}, chain of {set.ChainLength}");
                return table;
            });
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>
    /// The officers of a <c>change-officers</c> request, their names checked here as the server
    /// checks them (<see cref="OfficerSet.CheckNewNames"/>, the rule <c>kms ceremony create-domain</c>
    /// applies to the genesis): a bad name is a usage error and no request is created. A name the
    /// same key already has in the current set may be kept (a deployment from before the rule), so
    /// when a name fails without it the current set is read to tell; in the common case nothing is.
    /// </summary>
    private static async Task<List<Officer>> NewOfficerSetAsync(CliContext ctx, Dictionary<string, string> pairs, CancellationToken ct)
    {
        var set = ReadOfficersOrUsage(ctx.Environment, pairs);
        try
        {
            OfficerSet.CheckNewNames(set, null);
            return set;
        }
        catch (Kms.Core.Errors.KmsException)
        {
            // Checked as if every name were new: one may be kept, which only the current set tells.
        }

        var current = CurrentSet(await ctx.Client.GetOfficerSetAsync(ct));
        try
        {
            OfficerSet.CheckNewNames(set, current);
        }
        catch (Kms.Core.Errors.KmsException e)
        {
            throw new CliUsageException($"officer set: {e.Message}");
        }

        return set;
    }

    private static List<Officer> ReadOfficersOrUsage(CliEnvironment environment, Dictionary<string, string> pairs)
    {
        try
        {
            return ReadOfficers(environment, pairs);
        }
        catch (Kms.Core.Errors.KmsException e)
        {
            // Not of the officer-name grammar, or not a P-256 public key.
            throw new CliUsageException($"officer set: {e.Message}");
        }
    }

    // The server's current set, as far as telling which officer already has which name.
    private static OfficerSet CurrentSet(GetOfficerSetResponse response)
    {
        try
        {
            return OfficerSet.Restore(response.Sequence, response.PreviousHash, response.Officers.Select(o => Officer.Create(o.Name, o.PublicKey.Span)), response.Threshold, null);
        }
        catch (Kms.Core.Errors.KmsException e)
        {
            throw new CliFailureException(ExitCodes.Unexpected, $"the server sent a malformed officer set: {e.Message}");
        }
    }

    /// <summary>Officers from NAME=PEM pairs (the ceremony's genesis and officer changes), each PEM file read as <c>--officer</c>'s.</summary>
    public static List<Officer> ReadOfficers(CliEnvironment environment, Dictionary<string, string> pairs)
    {
        if (pairs.Count == 0)
        {
            throw new CliUsageException("name at least one officer: --officer NAME=PUBLIC-KEY.pem");
        }

        return [.. pairs.Select(p =>
        {
            try
            {
                return LocalPath.Read(LocalPath.File(environment, p.Value, "--officer"), path => OfficerKeys.ReadOfficer(p.Key, path), "--officer");
            }
            catch (ArgumentException e)
            {
                throw new CliUsageException($"officer {p.Key}: {e.Message}");
            }
        })];
    }

    private static Option<TimeSpan?> Ttl() => new("--ttl")
    {
        Description = "how long the officers have to approve (default: the server's), e.g. 4h",
        HelpName = "DURATION",
        CustomParser = DurationText.Parse,
    };

    /// <summary>A quorum request's resource name from what an officer typed: a name, or a bare id (deployment-wide).</summary>
    internal static string RequestName(string input) =>
        input.Contains('/', StringComparison.Ordinal) ? input : "quorumRequests/" + input;

    // Where an executed request's output is: officers need not search every node's log for it.
    private static string WhereItsOutputIs(QuorumRequestInfo info) =>
        info.CredentialPath.Length > 0
            ? info.CredentialRevokeTime is null
                ? $": the recovery credential is on node {info.ExecutingNode} in {info.CredentialPath} (one use, 15 minutes: kms bootstrap ADMIN --credential-file {info.CredentialPath})"
                : $": its recovery credential could not be written on node {info.ExecutingNode} and was revoked; create a new request"
            : info.ExecutingNode.Length > 0 ? $" by node {info.ExecutingNode}" : "";

    private static void WriteRequest(CliContext ctx, QuorumRequestInfo info)
    {
        var rendering = QuorumApprover.Render(info);
        var json = CliOutput.Proto(info);
        json["rendering"] = rendering;
        List<(string Name, string? Value)> properties = [("request", info.Name), ("state", CliOutput.EnumName(info.State)), ("approvals", info.Approvals.Count.ToString(CultureInfo.InvariantCulture))];
        if (info.ExecutingNode.Length > 0)
        {
            properties.Add(("executed by node", info.ExecutingNode));
        }

        if (info.CredentialPath.Length > 0)
        {
            properties.Add(("recovery credential", info.CredentialRevokeTime is null ? info.CredentialPath : $"{info.CredentialPath} (not written: revoked)"));
        }

        ctx.Output.Result(json, () => new Rows(
            CliOutput.Properties(properties),
            new Panel(new Text(rendering)).Header("what officers sign")));
    }
}
