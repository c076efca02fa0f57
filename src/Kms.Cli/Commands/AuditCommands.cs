using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;
using Kms.Client.Audit;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms audit …</c>: the audit export (security officers), and its offline verification against
/// the pinned audit key (docs/audit-format.md, "Verification").
/// </summary>
internal static class AuditCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var audit = new Command("audit", "the tamper-evident audit log: list its events, export it, verify an export offline");
        audit.Subcommands.Add(List(runner));
        audit.Subcommands.Add(Export(runner));
        audit.Subcommands.Add(Verify(runner));
        return [audit];
    }

    private static Command List(CommandRunner runner)
    {
        var deployment = new Option<bool>("--deployment") { Description = "every tenant's and the deployment's events (security officers) instead of a tenant's" };
        var start = new Option<DateTimeOffset?>("--start") { Description = "events at or after this time (ISO 8601, e.g. 2026-12-01T00:00:00Z)", HelpName = "TIME" };
        var end = new Option<DateTimeOffset?>("--end") { Description = "events before this time (ISO 8601)", HelpName = "TIME" };
        var principal = new Option<string?>("--principal") { Description = "only this principal's events (token:NAME, cn:..., system:JOB)", HelpName = "PRINCIPAL" };
        var resource = new Option<string?>("--resource") { Description = "only events about this resource (its full name) or anything under it (a key and its versions, also as a ReEncrypt source or a batch's key version)", HelpName = "NAME" };
        var key = new Option<string?>("--key") { Description = "only events about this key, its versions included: KEY (of --tenant or the profile's tenant), TENANT/KEY, a full name, or KEY/versions/N for one version (not an alias: calls through one are recorded under its key)", HelpName = "KEY" };
        var newest = new Option<bool>("--newest") { Description = "the newest events (at most --limit), newest first, instead of the oldest" };
        var operation = new Option<string?>("--operation") { Description = "only this operation: a full method or its last part (Decrypt); one this kms does not know is refused (see --any-operation)", HelpName = "OPERATION" };
        var anyOperation = new Option<bool>("--any-operation")
        {
            Description = "send --operation as given, unchecked: an operation this kms does not know (a newer server's method), matched by the server exactly, case included",
        };
        var outcome = new Option<string?>("--outcome") { Description = "only this outcome (OK, PERMISSION_DENIED, ...)", HelpName = "CODE" };
        var limit = new Option<int>("--limit") { Description = "at most this many events (default 100): the oldest, or with --newest the newest", HelpName = "N", DefaultValueFactory = _ => 100 };
        var command = new Command("list", "list audit events, oldest first (--newest: newest first): a tenant's (--tenant or the profile's; its auditors) or --deployment (security officers); ReEncrypt and batch events with the key versions they used") { deployment, start, end, principal, resource, key, operation, anyOperation, outcome, limit, newest };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var max = ctx.ParseResult.GetValue(limit);
            if (max < 1)
            {
                throw new CliUsageException("--limit must be at least 1");
            }

            // The server matches an operation and an outcome exactly, case included: `--operation
            // reencrypt` (or NoSuchOp, or --outcome permission_denied) would list nothing, as if no
            // one had called ReEncrypt. A value no event can have is a mistake, not a filter —
            // unless the server is newer than this kms: --any-operation sends the name unchecked.
            var operationName = ctx.ParseResult.GetValue(operation) ?? "";
            var outcomeName = ctx.ParseResult.GetValue(outcome) ?? "";
            var passThrough = ctx.ParseResult.GetValue(anyOperation);
            if (passThrough && operationName.Length == 0)
            {
                throw new CliUsageException("--any-operation sends --operation unchecked: give --operation too (without either, every operation is listed)");
            }

            if (((passThrough ? null : AuditFilterValues.OperationProblem(operationName)) ?? AuditFilterValues.OutcomeProblem(outcomeName)) is { } problem)
            {
                throw new CliUsageException(problem);
            }

            var resourceName = ctx.ParseResult.GetValue(resource) ?? "";
            if (ctx.ParseResult.GetValue(key) is { } keyName)
            {
                if (resourceName.Length > 0)
                {
                    throw new CliUsageException("give --key or --resource, not both");
                }

                // KEY, TENANT/KEY, a full name, or one of its versions; a bare KEY is --tenant's
                // (or the profile's) even with --deployment, which only widens whose events are listed.
                resourceName = ResourceNames.KeyOrVersion(keyName, ctx.Tenant);

                // Not an alias, which other commands take for its key: a crypto call through an alias
                // is recorded under the key version it resolved to, so the alias's name would list
                // only the alias's own events and present them as the key's.
                if (resourceName.Split('/') is [_, _, "aliases", _])
                {
                    throw new CliUsageException($"--key takes a key, not an alias: the calls made through {resourceName} are recorded under the key it pointed at then (`kms aliases get` shows which it points at now); for the alias's own events (CreateAlias, UpdateAlias, DeleteAlias) give --resource {resourceName}");
                }
            }

            var query = new Kms.Contracts.V1.ListAuditEventsRequest
            {
                Tenant = ctx.ParseResult.GetValue(deployment) ? "" : ctx.TenantName(null),
                PageSize = Math.Min(max, 1000),
                StartTime = ctx.ParseResult.GetValue(start) is { } from ? Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(from) : null,
                EndTime = ctx.ParseResult.GetValue(end) is { } to ? Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(to) : null,
                Principal = ctx.ParseResult.GetValue(principal) ?? "",
                Resource = resourceName,
                Operation = operationName,
                Outcome = outcomeName,
                NewestFirst = ctx.ParseResult.GetValue(newest),
            };
            var events = new List<Kms.Contracts.V1.AuditEventInfo>();
            await foreach (var info in ctx.Client.ListAuditEventsAsync(query, ct))
            {
                events.Add(info);
                if (events.Count == max)
                {
                    break;
                }
            }

            ctx.Output.Result(
                new JsonObject { ["events"] = new JsonArray([.. events.Select(e => CliOutput.Proto(e))]) },
                () =>
                {
                    var table = CliOutput.Table("seq", "time", "principal", "operation", "resource", "key versions", "outcome", "count");
                    foreach (var e in events)
                    {
                        CliOutput.AddRow(table, e.Sequence.ToString(CultureInfo.InvariantCulture), KeysCommands.Time(e.Time), e.Principal, e.Operation[(e.Operation.LastIndexOf('/') + 1)..],
                            e.Resource, KeyVersions(e), e.Outcome, e.Count.ToString(CultureInfo.InvariantCulture));
                    }

                    return table;
                });
            return ExitCodes.Ok;
        });
        return command;
    }

    // The versions a ReEncrypt (its source) or a batch call used besides `resource`, one a line,
    // and how many more it resolved than the event lists (past 128).
    internal static string KeyVersions(Kms.Contracts.V1.AuditEventInfo info) =>
        string.Join('\n', info.KeyVersions.Concat(info.OtherKeyVersions > 0 ? [$"(+{info.OtherKeyVersions.ToString(CultureInfo.InvariantCulture)} more)"] : []));

    private static Command Export(CommandRunner runner)
    {
        var output = new Option<string>("--out") { Description = "where to write the export (JSON lines)", Required = true, HelpName = "FILE" };
        var from = new Option<long>("--from-sequence") { Description = "start at the newest checkpoint at or before this event (default: the oldest retained)", HelpName = "N" };
        var force = OutputFile.ForceOption();
        var command = new Command("export", "write the audit export: every retained event from a signed checkpoint on, with the checkpoints (security officers)") { output, from, force };
        runner.SetAction(command, async (ctx, ct) =>
        {
            await using (var target = OutputFile.Open(ctx.Environment, ctx.ParseResult.GetRequiredValue(output), ctx.ParseResult.GetValue(force), "--out"))
            {
                await using (var writer = new StreamWriter(target.Stream, new UTF8Encoding(false), bufferSize: 64 * 1024, leaveOpen: true))
                {
                    await ctx.Client.ExportAuditAsync(writer, ctx.ParseResult.GetValue(from), ct);
                }

                await target.CommitAsync(ct);
                if (target.Path is null)
                {
                    // Standard output holds the export: nothing after it.
                    return ExitCodes.Ok;
                }
            }

            ctx.Output.Result(new JsonObject { ["out"] = ctx.ParseResult.GetRequiredValue(output) }, $"wrote the audit export; check it offline with 'kms audit verify'");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Verify(CommandRunner runner)
    {
        var file = NameArgument.Create<string>("FILE", "an audit export (kms audit export, ExportAudit), or a copy of the SIEM stream");
        var publicKey = new Option<string>("--public-key") { Description = "the audit signing key (PEM) as published or pinned by the ceremony transcript, e.g. {DataDir}/audit/signing-key.pem", HelpName = "PEM", Required = true };
        var known = new Option<string?>("--known-checkpoint")
        {
            Description = "the last checkpoint known from outside the database (the log stream, checkpoints.jsonl copied off the host), as SEQ:HEAD_HASH: detects truncation and rewrites up to it",
            HelpName = "SEQ:HASH",
        };
        var partial = new Option<bool>("--partial") { Description = "the export was asked to start later (--from-sequence): no retention record is needed for its start" };
        var allowUnsigned = new Option<bool>("--allow-unsigned") { Description = "accept an export no checkpoint vouches for (consistent, but anyone could have written it): refused otherwise" };
        var command = new Command("verify", "check an audit export offline: hashes, the chain, checkpoint signatures by the pinned key (exit 7 naming the first bad sequence; exit 10 when only a torn last line was left unread; exit 11 when a SIEM stream copy verified with restart lines: the database was rolled back under the stream)") { file, publicKey, known, partial, allowUnsigned };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var key = CeremonyCommands.PublicKeyFromPem(await LocalPath.ReadAllTextAsync(ctx.Environment, ctx.ParseResult.GetRequiredValue(publicKey), "--public-key", ct));
            var lastKnown = ctx.ParseResult.GetValue(known) is { } text ? ParseKnown(text) : null;
            using var export = LocalPath.Read(LocalPath.File(ctx.Environment, ctx.ParseResult.GetRequiredValue(file)), path => new StreamReader(path, Encoding.UTF8));
            var result = AuditVerifier.Verify(export, key, lastKnown, ctx.ParseResult.GetValue(partial));
            var torn = result.TornTail > 0 && result.FirstBadSequence is null;
            if (!result.Valid && !torn)
            {
                throw new CliFailureException(ExitCodes.DecryptionFailed,
                    $"the export does not verify: first bad sequence {result.FirstBadSequence?.ToString(CultureInfo.InvariantCulture) ?? "none"}: {result.Problem}");
            }

            // Consistent is not vouched for: with its checkpoint lines removed, an export can be
            // rewritten end to end and still chain. Success means some event is signed.
            if (result.Events > 0 && result.LastSignedSequence <= result.AnchorSequence && !ctx.ParseResult.GetValue(allowUnsigned))
            {
                throw new CliFailureException(ExitCodes.DecryptionFailed,
                    $"the export does not verify: no checkpoint signed by this key vouches for any of its {result.Events} events, so anyone could have written them (give --known-checkpoint, or --allow-unsigned to accept a consistent export)");
            }

            var summary = new JsonObject
            {
                ["valid"] = !torn,
                ["events"] = result.Events,
                ["checkpoints"] = result.Checkpoints,
                ["anchor_sequence"] = result.AnchorSequence,
                ["last_signed_sequence"] = result.LastSignedSequence,
                ["unsigned_tail"] = result.UnsignedTail,
            };
            var vouched = result.LastSignedSequence > 0
                ? $"signed up to event {result.LastSignedSequence}"
                : "NOTHING SIGNED (--allow-unsigned): no checkpoint vouches for any event";
            var counts = $"{result.Events} events after {result.AnchorSequence}, {result.Checkpoints} checkpoints, {vouched}, {result.UnsignedTail} unsigned at the tail";

            // A rollback under the stream is itself what an auditor must see: never a plain "verified".
            var restarts = "";
            if (result.StreamRestarts is { } r)
            {
                summary["stream_restarts"] = new JsonObject
                {
                    ["count"] = r.Count,
                    ["replaced_events"] = r.ReplacedEvents,
                    ["replaced_checkpoints"] = r.ReplacedCheckpoints,
                    ["restarts"] = new JsonArray([.. r.Listed.Select(x => (JsonNode)new JsonObject
                    {
                        ["line"] = x.Line,
                        ["after_sequence"] = x.AfterSequence,
                        ["after_hash"] = x.AfterHash,
                        ["replaced_sequence"] = x.ReplacedSequence,
                        ["replaced_hash"] = x.ReplacedHash,
                    })]),
                };
                var listed = string.Join("; ", r.Listed.Select(x => string.Create(CultureInfo.InvariantCulture, $"line {x.Line}: after event {x.AfterSequence} ({x.AfterHash}), replacing events {x.AfterSequence + 1}..{x.ReplacedSequence} (event {x.ReplacedSequence}: {x.ReplacedHash})")));
                var more = r.Count > r.Listed.Count ? $"; and {r.Count - r.Listed.Count} more" : "";
                restarts = $"; THE STREAM RESTARTED {r.Count} TIME(S): the database's audit chain was rolled back under it ({listed}{more}); "
                    + $"{r.ReplacedEvents} events and {r.ReplacedCheckpoints} checkpoints of the chains replaced were verified and no longer count; the counts are of the chain the copy ends with";
            }

            // A crash's resend is at least once, not a gap: each event sent again was compared.
            if (result.StreamResends is { } sent)
            {
                summary["stream_resends"] = new JsonObject { ["count"] = sent.Count, ["resent_events"] = sent.ResentEvents };
                restarts += $"; the stream went on after a crash {sent.Count} time(s) (resend lines): {sent.ResentEvents} events came again, each the event verified before at its sequence, not counted twice";
            }

            if (torn)
            {
                // A copy of a SIEM stream taken mid-append, or a crash: what is there is checked,
                // but the export is not verified to its end, and never reported as if it were.
                var last = result.AnchorSequence + result.Events;
                summary["last_verified_sequence"] = last;
                summary["torn_tail_characters"] = result.TornTail;
                ctx.Output.Result(summary, $"NOT VERIFIED TO ITS END: its last line is torn ({result.TornTail} characters without a line end) and was not read; everything before it verified, up to event {last}: {counts}{restarts}");
                return ExitCodes.TornTail;
            }

            if (result.StreamRestarts is not null)
            {
                ctx.Output.Result(summary, $"VERIFIED WITH STREAM RESTARTS: {counts}{restarts}");
                return ExitCodes.StreamRestarts;
            }

            ctx.Output.Result(summary, $"verified: {counts}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static KnownCheckpoint ParseKnown(string text)
    {
        var colon = text.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || !long.TryParse(text[..colon], NumberStyles.None, CultureInfo.InvariantCulture, out var sequence) || text.Length - colon - 1 != 64 || !text[(colon + 1)..].All(char.IsAsciiHexDigit))
        {
            throw new CliUsageException("--known-checkpoint is SEQ:HASH, the checkpoint's sequence and its 64-hex head hash");
        }

        return new KnownCheckpoint(sequence, text[(colon + 1)..].ToLowerInvariant());
    }
}
