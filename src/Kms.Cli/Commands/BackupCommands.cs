using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Kms.Cli.Backup;
using Kms.Cli.Ceremony;
using Kms.Cli.Infrastructure;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Backup;
using Kms.Core.Errors;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms backup …</c>: a quorum-gated, signed snapshot of the metadata store, its
/// verification, and the offline restore that re-applies later destructions
/// (docs/ceremony.md, "Backup and disaster recovery").
/// </summary>
internal static class BackupCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var backup = new Command("backup", "backups of the metadata store: request one (quorum), download it, verify it, restore it offline");
        backup.Subcommands.Add(CreateRequest(runner));
        backup.Subcommands.Add(Fetch(runner));
        backup.Subcommands.Add(Verify(runner));
        backup.Subcommands.Add(Restore(runner));
        backup.Subcommands.Add(ReapplyDestructions(runner));
        return [backup];
    }

    private static Command CreateRequest(CommandRunner runner)
    {
        var ttl = new Option<TimeSpan?>("--ttl") { Description = "how long officers may approve (default 24h)", HelpName = "DURATION", CustomParser = DurationText.Parse };
        var command = new Command("create", "request a backup (EXPORT_BACKUP): it is written under the server's {DataDir}/backups/ID when M officers approve") { ttl };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var request = new CreateQuorumRequestRequest { Operation = QuorumOperation.ExportBackup };
            if (ctx.ParseResult.GetValue(ttl) is { } lifetime)
            {
                request.Ttl = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(lifetime);
            }

            var created = await ctx.Client.CreateQuorumRequestAsync(request, ct);
            var rendering = QuorumApprover.Render(created);
            ctx.Output.Result(new JsonObject { ["name"] = created.Name, ["rendering"] = rendering },
                $"created {created.Name}; officers approve this rendering:{Environment.NewLine}{rendering}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Fetch(CommandRunner runner)
    {
        var request = NameArgument.Create<string>("REQUEST", "the executed EXPORT_BACKUP request: quorumRequests/ID (or just ID)");
        var output = new Option<string>("--out") { Description = "a new directory to download the backup into", HelpName = "DIR", Required = true };
        var publicKey = PublicKeyOption();
        var command = new Command("fetch", "download a backup from the server that wrote it, then verify it as `backup verify` does (a backup that does not verify is deleted)")
        {
            request, output, publicKey,
        };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var key = CeremonyCommands.PublicKeyFromPem(LocalPath.ReadAllText(ctx.Environment, parse.GetRequiredValue(publicKey), "--public-key"));
            var name = OfficerCommands.RequestName(parse.GetRequiredValue(request));
            // Checked before the download: it failed on the staging directory beside it, by a name the user never gave.
            var directory = LocalPath.Writable(ctx.Environment, parse.GetRequiredValue(output), "--out");
            if (File.Exists(directory) || Directory.Exists(directory))
            {
                throw new CliUsageException($"--out {directory} exists: a backup is downloaded into a new directory");
            }

            await ctx.Client.DownloadBackupAsync(name, directory, ct);
            BackupManifest manifest;
            try
            {
                manifest = Checked(() => BackupManifest.Verify(directory, key));
                if (manifest.Request != name)
                {
                    // Genuinely signed, but another request's backup: an older one put in this
                    // one's place on the server's disk would bring back older state.
                    throw new CliFailureException(ExitCodes.Denied,
                        $"the server sent the backup of {manifest.Request}, not of {name}: refused and deleted");
                }
            }
            catch
            {
                Directory.Delete(directory, recursive: true);
                throw;
            }

            var json = ManifestJson(manifest);
            json["directory"] = directory;
            ctx.Output.Result(json, () => CliOutput.Properties([("directory", directory), .. ManifestRows(manifest)]));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Verify(CommandRunner runner)
    {
        var directory = NameArgument.Create<string>("DIR", "the backup directory (kms.db, manifest.json, manifest.json.sig)");
        var publicKey = PublicKeyOption();
        var command = new Command("verify", "check a backup's manifest signature (audit key) and its snapshot's SHA-256 and size; reads only") { directory, publicKey };
        runner.SetAction(command, (ctx, _) =>
        {
            var key = CeremonyCommands.PublicKeyFromPem(LocalPath.ReadAllText(ctx.Environment, ctx.ParseResult.GetRequiredValue(publicKey), "--public-key"));
            var backup = LocalPath.Directory(ctx.Environment, ctx.ParseResult.GetRequiredValue(directory), existing: true);
            var manifest = Checked(() => LocalPath.Read(backup, path => BackupManifest.Verify(path, key)));
            ctx.Output.Result(ManifestJson(manifest), () => CliOutput.Properties(ManifestRows(manifest)));
            return Task.FromResult(ExitCodes.Ok);
        });
        return command;
    }

    private static Command Restore(CommandRunner runner)
    {
        var directory = NameArgument.Create<string>("DIR", "the backup directory");
        var publicKey = PublicKeyOption();
        var dataDir = new Option<string>("--data-dir") { Description = "the data directory to restore into (the server must be stopped)", HelpName = "DIR", Required = true };
        var auditLogs = new Option<string[]>("--audit-log")
        {
            Description = "an audit export or SIEM stream file whose destructions after the backup are re-applied (repeatable)",
            HelpName = "FILE",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var replace = new Option<bool>("--replace") { Description = "restore over an existing kms.db (kept beside as kms.db.replaced-TIME; its destructions are re-applied)" };
        var allowGaps = AllowGapsOption();
        var waiting = WaitingPeriodOption();
        var withoutAuditLogs = new Option<bool>("--without-audit-logs")
        {
            Description = "restore into a data directory without kms.db although no audit log given reaches past the backup (none survive): what was destroyed, scheduled, disabled or deleted after the backup comes back",
        };
        var provider = new DeploymentDatabase().Provider;
        var command = new Command("restore", "verify a backup, re-apply every destruction recorded after it, and install it as DATA-DIR/kms.db (offline; SQLite deployments only)")
        {
            directory, publicKey, dataDir, auditLogs, replace, allowGaps, waiting, withoutAuditLogs, provider,
        };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            DeploymentDatabase.RefusePostgres(ctx, provider, "kms backup restore");
            var key = CeremonyCommands.PublicKeyFromPem(LocalPath.ReadAllText(ctx.Environment, parse.GetRequiredValue(publicKey), "--public-key"));
            var logs = (parse.GetValue(auditLogs) ?? []).Select(log => LocalPath.File(ctx.Environment, log, "--audit-log")).ToList();
            var restoreInto = LocalPath.Directory(ctx.Environment, parse.GetRequiredValue(dataDir), "--data-dir");

            // A data directory that takes no file (permissions, a read-only mount, a full disk) is
            // said before the backup is read, in one line naming it (before: .NET's message naming
            // kms.db.serving or a temporary file, after the verification).
            if (Directory.Exists(restoreInto))
            {
                LocalPath.ProbeWritable(restoreInto, "--data-dir");
            }

            RestoreReport report;
            try
            {
                report = await CheckedAsync(() => BackupRestore.RunAsync(
                    LocalPath.Directory(ctx.Environment, parse.GetRequiredValue(directory), existing: true), key, restoreInto, logs, parse.GetValue(replace), ct, parse.GetValue(allowGaps), parse.GetValue(waiting),
                    parse.GetValue(withoutAuditLogs)));
            }
            catch (IOException e) when (LocalPath.WriteFailure($"the restored database into --data-dir {restoreInto}", restoreInto, e) is { } failure)
            {
                // The filesystem filled up (or was remounted read-only) part way: the restore works
                // on a private copy and installs it last, so nothing was installed.
                throw new CliFailureException(failure.ExitCode,
                    $"{failure.Message}; nothing was installed: {Path.Combine(restoreInto, "kms.db")} is the database that was there, if any (a kms.db.restoring-* file left beside is not read: delete it)", e);
            }

            var json = ManifestJson(report.Manifest);
            json["reapplied"] = new JsonArray([.. report.Reapplied.Select(r => (JsonNode)new JsonObject { ["version"] = r.Version, ["source"] = r.Source })]);
            json["rescheduled"] = RescheduledJson(report.Rescheduled);
            json["kept"] = KeptJson(report.Kept);
            json["tenants_deleting"] = TenantsJson(report.TenantsDeleting);
            json["access_removed"] = AccessRemovedJson(report.AccessRemoved);
            json["access_review"] = new JsonArray([.. report.AccessReview.Select(s => (JsonNode)s)]);
            json["quorum_requests_voided"] = VoidedJson(report.QuorumRequestsVoided);
            json["skipped"] = new JsonArray([.. report.Skipped.Select(s => (JsonNode)s)]);
            json["replaced_database"] = report.ReplacedDatabase;
            json["replaced_checkpoints"] = report.ReplacedCheckpoints;
            json["encrypt_counts_carried"] = new JsonArray([.. report.EncryptCountsCarried.Select(c => (JsonNode)new JsonObject { ["version"] = c.Version, ["backup"] = c.Backup, ["replaced"] = c.Replaced })]);
            ctx.Output.Result(json, () =>
            {
                var rows = ManifestRows(report.Manifest).ToList();
                rows.Add(("re-applied", report.Reapplied.Count == 0 ? "none" : string.Join("; ", report.Reapplied.Select(r => $"{r.Version} ({r.Source})"))));
                rows.Add(("re-scheduled", RescheduledText(report.Rescheduled)));
                rows.Add(("tenants deleting", TenantsText(report.TenantsDeleting)));
                rows.Add(("stayed restricted", KeptText(report.Kept)));
                rows.Add(("access removed", AccessRemovedText(report.AccessRemoved)));
                rows.Add(("access to review", report.AccessReview.Count == 0 ? "none" : string.Join("; ", report.AccessReview)));
                rows.Add(("quorum requests voided", VoidedText(report.QuorumRequestsVoided)));
                rows.Add(("skipped", report.Skipped.Count == 0 ? "none" : string.Join("; ", report.Skipped)));
                rows.Add(("replaced database", report.ReplacedDatabase ?? "none"));
                rows.Add(("replaced checkpoints", report.ReplacedCheckpoints ?? "none"));
                rows.Add(("encrypt counts carried", report.EncryptCountsCarried.Count == 0 ? "none"
                    : string.Join("; ", report.EncryptCountsCarried.Select(c => $"{c.Version} {c.Backup.ToString(CultureInfo.InvariantCulture)} -> {c.Replaced.ToString(CultureInfo.InvariantCulture)}"))));
                return CliOutput.Properties(rows);
            });
            return ExitCodes.Ok;
        });
        return command;
    }

    // After a restore by other means (pg_restore of a dump), before any node starts on the database.
    private static Command ReapplyDestructions(CommandRunner runner)
    {
        var database = new DeploymentDatabase();
        var dataDir = new Option<string?>("--data-dir") { Description = "SQLite: the data directory whose kms.db was restored", HelpName = "DIR" };
        var auditLogs = new Option<string[]>("--audit-log")
        {
            Description = "an audit export or SIEM stream file whose destructions after the database's audit head are re-applied (repeatable)",
            HelpName = "FILE",
            Arity = ArgumentArity.OneOrMore,
            Required = true,
        };
        var after = new Option<long?>("--after-sequence")
        {
            Description = "re-apply destructions after this audit sequence number (default: the last event the logs share with the restored database's audit chain, i.e. the dump's head)",
            HelpName = "SEQ",
        };
        var publicKey = new Option<string?>("--public-key")
        {
            Description = "the audit signing key (PEM) as published: each audit export is verified against it before its destructions are read",
            HelpName = "PEM",
        };
        var allowGaps = AllowGapsOption();
        var waiting = WaitingPeriodOption();
        var command = new Command(
            "reapply-destructions",
            "re-apply every key destruction recorded in audit exports or SIEM streams after the point where they leave a restored database's audit chain, erasing the material again "
            + "(for a PostgreSQL dump restored with pg_restore; offline: before any node starts on the database)")
        {
            dataDir, auditLogs, after, publicKey, allowGaps, waiting,
        };
        database.AddTo(command);
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var logs = parse.GetRequiredValue(auditLogs).Select(log => LocalPath.File(ctx.Environment, log, "--audit-log")).ToList();
            var key = parse.GetValue(publicKey) is { } pem ? CeremonyCommands.PublicKeyFromPem(LocalPath.ReadAllText(ctx.Environment, pem, "--public-key")) : null;
            var target = database.Resolve(ctx, parse.GetValue(dataDir) is { } dir ? ctx.Environment.FullPath(dir) : null);
            await using var store = await target.OpenExistingAsync(ct)
                ?? throw new CliUsageException("no database to re-apply destructions in: give --data-dir (SQLite) or --storage-provider postgres");
            // SQLite: the data directory's checkpoints file goes aside if it pins a head the restored chain lacks (as restore does).
            var restoredDir = target.IsPostgres || parse.GetValue(dataDir) is not { } given ? null : ctx.Environment.FullPath(given);
            var report = await CheckedAsync(() => BackupRestore.ReapplyFromLogsAsync(store, logs, parse.GetValue(after), key, ct, parse.GetValue(allowGaps), parse.GetValue(waiting), restoredDir));
            var (reapplied, skipped, afterSequence) = report;
            var json = new JsonObject
            {
                ["database"] = target.Describe(),
                ["after_sequence"] = afterSequence,
                ["reapplied"] = new JsonArray([.. reapplied.Select(r => (JsonNode)new JsonObject { ["version"] = r.Version, ["source"] = r.Source })]),
                ["rescheduled"] = RescheduledJson(report.Rescheduled),
                ["kept"] = KeptJson(report.Kept),
                ["tenants_deleting"] = TenantsJson(report.TenantsDeleting),
                ["access_removed"] = AccessRemovedJson(report.AccessRemoved),
                ["access_review"] = new JsonArray([.. report.AccessReview.Select(s => (JsonNode)s)]),
                ["quorum_requests_voided"] = VoidedJson(report.QuorumRequestsVoided),
                ["skipped"] = new JsonArray([.. skipped.Select(s => (JsonNode)s)]),
                ["replaced_checkpoints"] = report.ReplacedCheckpoints,
            };
            ctx.Output.Result(json, () => CliOutput.Properties(
            [
                ("database", target.Describe()),
                ("replaced checkpoints", report.ReplacedCheckpoints ?? "none"),
                ("after audit sequence", afterSequence.ToString(CultureInfo.InvariantCulture)),
                ("re-applied", reapplied.Count == 0 ? "none" : string.Join("; ", reapplied.Select(r => $"{r.Version} ({r.Source})"))),
                ("re-scheduled", RescheduledText(report.Rescheduled)),
                ("tenants deleting", TenantsText(report.TenantsDeleting)),
                ("stayed restricted", KeptText(report.Kept)),
                ("access removed", AccessRemovedText(report.AccessRemoved)),
                ("access to review", report.AccessReview.Count == 0 ? "none" : string.Join("; ", report.AccessReview)),
                ("quorum requests voided", VoidedText(report.QuorumRequestsVoided)),
                ("skipped", skipped.Count == 0 ? "none" : string.Join("; ", skipped)),
            ]));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Option<bool> AllowGapsOption() =>
        new("--allow-gaps") { Description = "re-apply what the audit logs hold even where they leave out events after the backup (a stream that skipped, or began later); the missing ranges are listed among the skipped" };

    private static Option<TimeSpan?> WaitingPeriodOption() => new("--waiting-period")
    {
        Description = "the waiting period a scheduled destruction or deletion re-applied from an audit event counts from the event (it does not record the one asked for): "
            + "default 30d, Lifecycle:MaxWaitingPeriod's default — give yours if you raised it. The destroy time is never sooner than 7 days after the restore",
        HelpName = "DURATION",
        CustomParser = DurationText.Parse,
    };

    private static JsonArray VoidedJson(IReadOnlyList<VoidedQuorumRequest> voided) =>
        new([.. voided.Select(v => (JsonNode)new JsonObject { ["name"] = v.Name, ["operation"] = v.Operation, ["approvals"] = v.Approvals })]);

    // Each with its operation and approvals: officers make each again that is still wanted.
    private static string VoidedText(IReadOnlyList<VoidedQuorumRequest> voided) =>
        voided.Count == 0 ? "none" : string.Join("; ", voided.Select(v => $"{v.Name} ({v.Operation}, {v.Approvals.ToString(CultureInfo.InvariantCulture)} approvals): create it again if it is still wanted"));

    private static JsonArray AccessRemovedJson(IReadOnlyList<(string Resource, string Source)> removed) =>
        new([.. removed.Select(r => (JsonNode)new JsonObject { ["resource"] = r.Resource, ["source"] = r.Source })]);

    private static string AccessRemovedText(IReadOnlyList<(string Resource, string Source)> removed) =>
        removed.Count == 0 ? "none" : string.Join("; ", removed.Select(r => $"{r.Resource} ({r.Source})"));

    private static JsonArray RescheduledJson(IReadOnlyList<ReappliedScheduling> rescheduled) =>
        new([.. rescheduled.Select(r => (JsonNode)new JsonObject
        {
            ["resource"] = r.Resource,
            ["state"] = Kms.Core.Services.KeyTransitions.StateName(r.State),
            ["destroy_time"] = r.DestroyTime is { } time ? Kms.Core.Audit.AuditChain.Time(time) : null,
            ["source"] = r.Source,
        })]);

    private static JsonArray KeptJson(IReadOnlyList<KeptRestriction> kept) =>
        new([.. kept.Select(k => (JsonNode)new JsonObject
        {
            ["resource"] = k.Resource,
            ["state"] = Kms.Core.Services.KeyTransitions.StateName(k.State),
            ["reason"] = k.Reason,
        })]);

    private static string KeptText(IReadOnlyList<KeptRestriction> kept) =>
        kept.Count == 0 ? "none" : string.Join("; ", kept.Select(k => $"{k.Resource} {Kms.Core.Services.KeyTransitions.StateName(k.State)} ({k.Reason})"));

    private static JsonArray TenantsJson(IReadOnlyList<(string Tenant, string Source)> tenants) =>
        new([.. tenants.Select(t => (JsonNode)new JsonObject { ["tenant"] = t.Tenant, ["source"] = t.Source })]);

    private static string TenantsText(IReadOnlyList<(string Tenant, string Source)> tenants) =>
        tenants.Count == 0 ? "none" : string.Join("; ", tenants.Select(t => $"{t.Tenant} DELETING ({t.Source})"));

    private static string RescheduledText(IReadOnlyList<ReappliedScheduling> rescheduled) =>
        rescheduled.Count == 0 ? "none" : string.Join("; ", rescheduled.Select(r =>
            $"{r.Resource} {Kms.Core.Services.KeyTransitions.StateName(r.State)}{(r.DestroyTime is { } time ? " until " + Kms.Core.Audit.AuditChain.Time(time) : "")} ({r.Source})"));

    private static Option<string> PublicKeyOption() =>
        new("--public-key") { Description = "the audit signing key (PEM) as published, e.g. {DataDir}/audit/signing-key.pem", HelpName = "PEM", Required = true };

    private static JsonObject ManifestJson(BackupManifest manifest) => new()
    {
        ["verified"] = true,
        ["request"] = manifest.Request,
        ["create_time"] = Kms.Core.Audit.AuditChain.Time(manifest.CreateTime),
        ["schema_version"] = manifest.SchemaVersion,
        ["snapshot_sha256"] = manifest.SnapshotSha256,
        ["snapshot_size"] = manifest.SnapshotSize,
        ["audit_head_seq"] = manifest.AuditHead.Sequence,
        ["audit_head_hash"] = manifest.AuditHead.Hash,
        ["domain_kcv"] = manifest.DomainKcv,
        ["audit_key"] = manifest.AuditKey,
    };

    private static IEnumerable<(string, string?)> ManifestRows(BackupManifest manifest) =>
    [
        ("verified", $"signed by audit key {manifest.AuditKey}; snapshot SHA-256 matches"),
        ("request", manifest.Request),
        ("taken", Kms.Core.Audit.AuditChain.Time(manifest.CreateTime)),
        ("snapshot", $"{manifest.SnapshotSize.ToString(CultureInfo.InvariantCulture)} bytes, SHA-256 {manifest.SnapshotSha256}, schema {manifest.SchemaVersion.ToString(CultureInfo.InvariantCulture)}"),
        ("audit head", $"{manifest.AuditHead.Sequence.ToString(CultureInfo.InvariantCulture)} {manifest.AuditHead.Hash}"),
        ("domain key", $"check value {manifest.DomainKcv} (the token the server starts with must hold it)"),
    ];

    private static T Checked<T>(Func<T> action)
    {
        try
        {
            return action();
        }
        catch (KmsException e)
        {
            throw Failure(e);
        }
    }

    private static async Task<T> CheckedAsync<T>(Func<Task<T>> action)
    {
        try
        {
            return await action();
        }
        catch (KmsException e)
        {
            throw Failure(e);
        }
    }

    private static CliFailureException Failure(KmsException e) => new(e.Code switch
    {
        KmsErrorCode.PermissionDenied => ExitCodes.Denied,
        KmsErrorCode.InvalidArgument => ExitCodes.InvalidArgument,
        KmsErrorCode.FailedPrecondition or KmsErrorCode.AlreadyExists => ExitCodes.Conflict,
        KmsErrorCode.Unavailable => ExitCodes.Unavailable,
        _ => ExitCodes.Unexpected,
    }, "backup: " + e.Message);
}
