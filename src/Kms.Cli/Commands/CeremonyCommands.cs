using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Kms.Ceremony;
using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;
using Kms.Cli.Ceremony;
using Kms.Cli.Infrastructure;
using Kms.Core.Files;
using Kms.Core.Quorum;
using Kms.Hsm;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms ceremony …</c>: the security officers' commands on the offline ceremony host — token
/// set-up, the domain key with M-of-N custodian shares, its restore on another HSM, and
/// transcript checks (docs/ceremony.md).
/// </summary>
internal static partial class CeremonyCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var ceremony = new Command("ceremony", "key ceremony (offline host): token set-up, domain key and custodian shares, restore, verification");
        ceremony.Subcommands.Add(InitToken(runner));
        ceremony.Subcommands.Add(InspectToken(runner));
        ceremony.Subcommands.Add(CreateDomain(runner));
        ceremony.Subcommands.Add(RestoreDomain(runner));
        ceremony.Subcommands.Add(RotateDomain(runner));
        ceremony.Subcommands.Add(VerifyDomain(runner));
        ceremony.Subcommands.Add(VerifyTranscript(runner));
        return [ceremony];
    }

    private static Command InitToken(CommandRunner runner)
    {
        var hsm = new HsmSelection();
        var soPin = new SecretOption("so-pin", "the new token's security officer PIN");
        var command = new Command("init-token", "initialise a token on a free slot (SO PIN and user PIN), then check it against the HSM profile");
        hsm.AddTo(command);
        soPin.AddTo(command);
        runner.SetAction(command, (ctx, _) =>
        {
            var options = hsm.Options(ctx);
            using (var so = SecretInput.Read(ctx, soPin, "new security officer PIN"))
            using (var user = SecretInput.Read(ctx, hsm.Pin, "new user PIN"))
            {
                ctx.Step("initialise the token", options.TokenLabel);
                HsmTokenSetup.InitializeToken(options.ModulePath, options.TokenLabel, so.ToUtf8(), user.ToUtf8(), options.ModuleEnvironment);
            }

            ctx.Output.Note($"initialised token '{options.TokenLabel}'");
            ctx.Step("inspect the token", options.TokenLabel);
            return Task.FromResult(Report(ctx, TokenInspection.Inspect(options)));
        });
        return command;
    }

    private static Command InspectToken(CommandRunner runner)
    {
        var hsm = new HsmSelection();
        var command = new Command("inspect-token", "show a token's identity, mechanisms and PIN flags, checked against the HSM profile (no login)");
        hsm.AddTo(command, withPin: false);
        runner.SetAction(command, (ctx, _) => Task.FromResult(Report(ctx, TokenInspection.Inspect(hsm.Options(ctx)))));
        return command;
    }

    private static int Report(CliContext ctx, TokenReport report)
    {
        var json = new JsonObject
        {
            ["label"] = report.Label,
            ["manufacturer"] = report.Manufacturer,
            ["model"] = report.Model,
            ["serial_number"] = report.SerialNumber,
            ["firmware_version"] = report.FirmwareVersion,
            ["library"] = report.LibraryDescription,
            ["profile"] = report.Profile,
            ["usable"] = report.Usable,
            ["missing_mechanisms"] = new JsonArray([.. report.MissingMechanisms.Select(m => (JsonNode)m)]),
            ["mechanisms"] = new JsonArray([.. report.Mechanisms.Select(m => (JsonNode)m)]),
            ["user_pin_count_low"] = report.UserPinCountLow,
            ["user_pin_final_try"] = report.UserPinFinalTry,
            ["user_pin_locked"] = report.UserPinLocked,
        };
        ctx.Output.Result(json, () => CliOutput.Properties(
        [
            ("token", report.Label),
            ("HSM", $"{report.Manufacturer} {report.Model}, serial {report.SerialNumber}, firmware {report.FirmwareVersion}"),
            ("library", report.LibraryDescription),
            ("profile", report.Profile),
            ("mechanisms", report.Mechanisms.Count.ToString(CultureInfo.InvariantCulture)),
            ("missing", report.MissingMechanisms.Count == 0 ? "none" : string.Join(", ", report.MissingMechanisms)),
            ("user PIN", report.UserPinLocked ? "LOCKED" : report.UserPinFinalTry ? "final try" : report.UserPinCountLow ? "a recent failed login" : "ok"),
            ("usable", report.Usable ? "yes" : "NO"),
        ]));
        return report.Usable ? ExitCodes.Ok : ExitCodes.Conflict;
    }

    private static Command CreateDomain(CommandRunner runner)
    {
        var hsm = new HsmSelection();
        var custodians = new Option<string[]>("--custodian")
        {
            Description = "a custodian's name, in share order (repeat once per custodian; N = how many)",
            HelpName = "NAME",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var count = new Option<int?>("--custodians") { Description = "N custodians named custodian-1 … custodian-N (instead of --custodian)", HelpName = "N" };
        var threshold = new Option<int>("--threshold") { Description = "M: how many shares rebuild the domain key (2 ≤ M ≤ N)", HelpName = "M", Required = true };
        var sharesDir = new Option<string>("--shares-dir") { Description = "where the share files are written (one per custodian)", HelpName = "DIR", Required = true };
        var dataDir = new Option<string>("--data-dir") { Description = "the deployment's data directory: its database, audit key and transcripts", HelpName = "DIR", Required = true };
        var domainId = new Option<string?>("--domain-id") { Description = "the domain key's CKA_ID (default dk-DATE-RANDOM)", HelpName = "ID" };
        var passphrases = PassphraseFiles();
        var officers = ContextOption.Create("--officer", "NAME=PUBLIC-KEY.pem: a security officer of the genesis officer set (repeatable; keys from kms officer keygen)");
        var officerThreshold = new Option<int>("--officer-threshold") { Description = "approvals of distinct officers a quorum request needs", HelpName = "K", Required = true };
        var options = CeremonyHostOptions.Create();
        var database = new DeploymentDatabase();
        var command = new Command("create-domain", "generate the domain key (HSM RNG XOR OS RNG), import it into the token, split it into M-of-N custodian shares, register the officers, and record the ceremony")
        {
            custodians, count, threshold, sharesDir, dataDir, domainId, passphrases, officers, officerThreshold,
        };
        hsm.AddTo(command);
        options.AddTo(command);
        database.AddTo(command);
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;

            // Passphrase files are read last, once the token is open: one not there, or not
            // readable, is said before anything else is checked, made or asked.
            CheckPassphraseFiles(ctx, parse.GetValue(passphrases)!, "--passphrase-file");
            var names = CustodianNames(parse.GetValue(custodians) ?? [], parse.GetValue(count));
            var m = parse.GetValue(threshold);
            if (m < Shamir.MinThreshold || m > names.Count)
            {
                throw new CliUsageException($"--threshold must be between {Shamir.MinThreshold} and the number of custodians ({names.Count}); got {m}");
            }

            OfficerSet genesis;
            try
            {
                genesis = OfficerSet.CreateDeploymentGenesis(OfficerCommands.ReadOfficers(ctx.Environment, parse.GetValue(officers)!), parse.GetValue(officerThreshold));
            }
            catch (Kms.Core.Errors.KmsException e)
            {
                throw new CliUsageException($"officer set: {e.Message}");
            }

            // A new domain starts a new deployment: refuse before anything is generated.
            var deploymentDir = LocalPath.Directory(ctx.Environment, parse.GetRequiredValue(dataDir), "--data-dir");
            LocalPath.Directory(ctx.Environment, parse.GetRequiredValue(sharesDir), "--shares-dir");
            var genesisPath = Path.Combine(deploymentDir, "quorum", "genesis.json");
            if (File.Exists(Path.Combine(deploymentDir, "kms.db")) || File.Exists(genesisPath))
            {
                throw new CliFailureException(ExitCodes.Conflict, $"{deploymentDir} holds a deployment already (kms.db or quorum/genesis.json); a new domain starts in an empty data directory");
            }

            // On PostgreSQL the database must be reachable, and hold no domain yet, before anything is generated.
            var target = database.Resolve(ctx, deploymentDir);
            if (target.IsPostgres && await PinnedCheckValueAsync(target, ct) is { } existing)
            {
                throw new CliFailureException(ExitCodes.Conflict, $"the deployment database ({target.Describe()}) is pinned to domain key {existing} already; a new domain starts in an empty database");
            }

            var host = options.Prepare(ctx);
            var id = parse.GetValue(domainId) ?? $"dk-{DateTime.UtcNow:yyyyMMdd}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}";
            var hsmOptions = hsm.Options(ctx, id);

            // Where the genesis, the records and the share files go must take them before a key
            // exists that would need undoing, or anyone has typed a PIN or a passphrase: each
            // directory is created and a file written there and deleted again (before, a shares
            // directory that existed but took no file was found at the first share file, after the
            // import, and the key was destroyed again).
            // What this run creates is tracked from here, so that a failure takes back exactly
            // that: never a file another process put there meanwhile.
            var runFiles = new RunFiles();
            runFiles.WillCreateDirectory(Path.GetDirectoryName(genesisPath)!);
            LocalPath.CreateDirectory(ctx.Environment, Path.GetDirectoryName(genesisPath)!);
            LocalPath.WritableDirectory(ctx.Environment, deploymentDir, "--data-dir");
            runFiles.WillCreateDirectory(ctx.Environment.FullPath(parse.GetRequiredValue(sharesDir)));
            var outDir = LocalPath.WritableDirectory(ctx.Environment, parse.GetRequiredValue(sharesDir), "--shares-dir");
            RefuseShareFilesIn(outDir, "--shares-dir", "move them away, or give another --shares-dir");

            // The token is checked before any custodian types a passphrase: the PIN, its
            // mechanisms, and its room for the key.
            using var pin = SecretInput.Read(ctx, hsm.Pin, $"user PIN of token '{hsmOptions.TokenLabel}'");
            var ceremonyId = Guid.NewGuid().ToString();
            var started = DateTimeOffset.UtcNow;
            ctx.Step("inspect the token", hsmOptions.TokenLabel);
            var report = RequireUsable(TokenInspection.Inspect(hsmOptions));

            string kcv;
            var written = new List<(string Custodian, int Index, string File, string Fingerprint)>();
            var domainKey = GC.AllocateArray<byte>(32, pinned: true);
            Share[] shares = [];
            var imported = false;
            ctx.Step("open the token", hsmOptions.TokenLabel);
            using (var session = OpenForDomainKey(ctx, hsmOptions, pin, checkValue: null))
            {
                // Disposed on every path from here (the finally below, and the using if collecting fails).
                ctx.Step("read the custodians' passphrases");
                using var secrets = CollectPassphrases(ctx, parse.GetValue(passphrases)!, names, confirm: true);
                try
                {
                    ctx.Step("import the domain key", hsmOptions.TokenLabel);
                    FillFromTwoSources(session, domainKey);
                    kcv = session.ImportDomainKey(domainKey, hsmOptions.DomainKeyLabel, id);
                    imported = true;
                    ctx.Output.Note($"domain key {id} imported into token '{hsmOptions.TokenLabel}', check value {kcv}");
                    ctx.Step("split the domain key into shares");
                    shares = Shamir.Split(domainKey, m, names.Count);
                    ctx.Step("write the share files");
                    WriteShareFiles(ctx, shares, id, kcv, m, names, secrets, host.Kdf, outDir, written, "share");
                }
                catch (Exception e)
                {
                    // All or nothing: a domain key whose shares were not all written is no domain key.
                    // (Only the one this run imported: a refused import leaves the token as it was.)
                    // What cannot be taken back is said with the failure, never in its place: before,
                    // a share file that could not be deleted was the error reported, not why the run failed.
                    List<string> left = [];
                    if (imported && DestroyDomainKeyOrSay(session, hsmOptions, id) is { } kept)
                    {
                        left.Add(kept);
                    }

                    foreach (var (_, _, path, _) in written)
                    {
                        runFiles.Wrote(path);
                    }

                    left.AddRange(runFiles.TakeBack());
                    if (e is CliFailureException { ExitCode: ExitCodes.LocalIo } io)
                    {
                        throw new CliFailureException(io.ExitCode, left.Count == 0
                            ? $"{io.Message}; {(imported ? "the domain key this run imported was destroyed again and " : "")}the share files written were deleted: nothing was kept, run the command again"
                            : $"{io.Message}; this run was taken back except: {string.Join("; ", left)} — then run the command again", e);
                    }

                    foreach (var note in left)
                    {
                        ctx.Output.Note($"not taken back: {note}");
                    }

                    throw;
                }
                finally
                {
                    CryptographicOperations.ZeroMemory(domainKey);
                    foreach (var share in shares)
                    {
                        share.Dispose();
                    }

                    // Not needed past the share files: not kept for the record.
                    secrets.Dispose();
                }
            }

            var transcript = Transcript.Begin("create-domain", ceremonyId, started, host)
                .Add("hsm", Describe(report))
                .Add("hsm library", report.LibraryDescription)
                .Add("domain key id (CKA_ID)", id)
                .Add("domain key label (CKA_LABEL)", hsmOptions.DomainKeyLabel)
                .Add("domain key check value", kcv)
                .Add("domain key entropy", "32 bytes HSM C_GenerateRandom XOR 32 bytes OS CSPRNG")
                .Add("domain key attributes", "token, private, sensitive, never extractable, wrap/unwrap only (CKM_AES_KEY_WRAP_PAD), unmodifiable")
                .Add("shares", $"{m} of {names.Count} (Shamir over GF(2^8))")
                .Add("share protection", $"Argon2id m={host.Kdf.Parameters.MemoryKib} KiB t={host.Kdf.Parameters.Iterations} p={host.Kdf.Parameters.Parallelism}, AES-256-GCM{(host.Kdf.Policy == KdfPolicy.Production ? "" : " — WEAK TEST PARAMETERS")}");
            foreach (var (custodian, index, file, fingerprint) in written)
            {
                transcript.Add($"share {index}", $"custodian {custodian}, file {Path.GetFileName(file)}, fingerprint {fingerprint}");
            }

            Recorded result;
            ctx.Step("record the ceremony", hsmOptions.TokenLabel);
            var writing = $"the genesis file {genesisPath}";
            try
            {
                // The genesis officer set: pinned by the server (Kms:Quorum:GenesisFile and its hash),
                // recorded here so a database writer cannot install officers of their own.
                runFiles.WillWrite(genesisPath);
                GenesisFile.Write(genesisPath, genesis);
                transcript.Add("officer set (genesis)", $"threshold {genesis.Threshold} of {genesis.Officers.Count}, hash {genesis.Hash}, file {genesisPath}");
                foreach (var officer in genesis.Officers)
                {
                    transcript.Add("officer", $"{officer.Name}, key {officer.Fingerprint}");
                }

                result = await RecordAsync(ctx, parse.GetRequiredValue(dataDir), target, hsmOptions, pin, ceremonyId, "create-domain", transcript,
                    [.. written.Select(w => ($"share/{w.Index}/{w.Custodian}", w.Fingerprint)), .. genesis.Officers.Select(o => ($"officer/{o.Name}", o.Fingerprint)), ("officer-set/genesis", genesis.Hash)],
                    $"domain/{id}/kcv/{kcv}", ct, writing: what => writing = what, files: runFiles);
            }
            catch (Exception e)
            {
                // Said as what the filesystem refused, found out before anything is deleted (a
                // deletion frees the room whose lack it may have to tell).
                var failure = RecordWriteFailure("the ceremony's record", writing, deploymentDir, target, e);

                // Still all or nothing: what this run wrote is taken back — its files, not a file
                // another process put in the data directory meanwhile. A PostgreSQL database keeps
                // what was written.
                foreach (var (_, _, path, _) in written)
                {
                    runFiles.Wrote(path);
                }

                var left = UndoCreateDomain(hsmOptions, pin, id, runFiles, target.IsPostgres);

                // A record the filesystem refused (full, read-only, not writable) is said in one
                // line, as a share file's is — not in .NET's words, which name a temporary file —
                // with what this run left behind, which the officers must know before they go on.
                if (failure is not null)
                {
                    throw new CliFailureException(failure.ExitCode, $"{failure.Message}; {AfterUndo(id, hsmOptions.TokenLabel, left)}", e);
                }

                foreach (var note in left)
                {
                    ctx.Output.Note($"not taken back: {note}");
                }

                throw;
            }

            var json = new JsonObject
            {
                ["domain_id"] = id,
                ["check_value"] = kcv,
                ["threshold"] = m,
                ["shares"] = new JsonArray([.. written.Select(w => (JsonNode)new JsonObject { ["custodian"] = w.Custodian, ["index"] = w.Index, ["file"] = w.File, ["fingerprint"] = w.Fingerprint })]),
                ["transcript"] = result.TranscriptPath,
                ["audit_key_fingerprint"] = result.AuditKeyFingerprint,
                ["officer_set_hash"] = genesis.Hash,
                ["server_configuration"] = new JsonObject
                {
                    ["Hsm:TokenLabel"] = hsmOptions.TokenLabel,
                    ["Hsm:DomainKeyLabel"] = hsmOptions.DomainKeyLabel,
                    ["Hsm:DomainKeyId"] = id,
                    ["Kms:DataDir"] = Path.GetFullPath(parse.GetRequiredValue(dataDir)),
                    ["Kms:Quorum:GenesisFile"] = genesisPath,
                    ["Kms:Quorum:GenesisSha256"] = genesis.Hash,
                },
            };
            if (target.IsPostgres)
            {
                json["server_configuration"]!["Storage:Provider"] = DeploymentDatabase.Postgres;
            }
            ctx.Output.Result(json, () => CliOutput.Properties(
            [
                ("domain key id", id), ("check value", kcv), ("shares", $"{m} of {names.Count} in {outDir}"),
                ("transcript", result.TranscriptPath), ("audit key", result.AuditKeyFingerprint),
                ("officers", $"{genesis.Threshold} of {genesis.Officers.Count}, genesis {genesis.Hash}"),
                ("server", $"--Hsm:TokenLabel={hsmOptions.TokenLabel} --Hsm:DomainKeyId={id} --Kms:DataDir={Path.GetFullPath(parse.GetRequiredValue(dataDir))} --Kms:Quorum:GenesisFile={genesisPath} --Kms:Quorum:GenesisSha256={genesis.Hash}"),
            ]));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command RestoreDomain(CommandRunner runner)
    {
        var hsm = new HsmSelection();
        var shareFiles = new Option<string[]>("--share") { Description = "a custodian's share file (repeat; at least M)", HelpName = "FILE", Arity = ArgumentArity.OneOrMore, Required = true };
        var domainId = new Option<string?>("--domain-id") { Description = "the domain to restore; every share must be of it (default: the shares' own)", HelpName = "ID" };
        var expectedKcv = new Option<string?>("--check-value") { Description = "the domain's check value from the transcript; the rebuilt key must match it", HelpName = "HEX" };
        var dataDir = new Option<string?>("--data-dir") { Description = "the deployment's data directory, to record the restore in its audit log and sign a transcript", HelpName = "DIR" };
        var passphrases = PassphraseFiles();
        var options = CeremonyHostOptions.Create();
        var database = new DeploymentDatabase();
        var approval = CeremonyApproval.ForRestore();
        var command = new Command("restore-domain", "rebuild the domain key from M custodian shares and import it into another token (new node, disaster recovery), as M officers approved")
        {
            shareFiles, domainId, expectedKcv, dataDir, passphrases,
        };
        hsm.AddTo(command);
        options.AddTo(command);
        database.AddTo(command);
        approval.AddTo(command);
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var host = options.Prepare(ctx);

            // The paths, before the database, the approval or the HSM: a wrong one stops the
            // ceremony before it begins, not half way. (The share files follow the database's pin,
            // below: a database that cannot be reached is said first.)
            if (parse.GetValue(dataDir) is { } givenDataDir)
            {
                LocalPath.Directory(ctx.Environment, givenDataDir, "--data-dir");
            }

            approval.CheckPaths(ctx);
            CheckPassphraseFiles(ctx, parse.GetValue(passphrases)!, "--passphrase-file");

            // The restore is recorded there after the import: a data directory that takes no file
            // is said now, not by taking the imported key back out of the token.
            if (parse.GetValue(dataDir) is { } recordIn)
            {
                LocalPath.WritableDirectory(ctx.Environment, recordIn, "--data-dir");
            }

            var target = database.Resolve(ctx, parse.GetValue(dataDir));
            if (target.IsPostgres && parse.GetValue(dataDir) is null)
            {
                throw new CliUsageException("--storage-provider postgres records the restore in the deployment database: give --data-dir too (for the signed transcript and the audit key)");
            }

            // The officers' approval is verified before any share is read. The domain key it names is
            // the transcript's (--check-value) or the database's; else its own, which the rebuilt key must have.
            var tokenLabel = parse.GetRequiredValue(hsm.TokenLabel);
            var givenKcv = parse.GetValue(expectedKcv);
            if (givenKcv is not null && KeyCheckValue.Normalize(givenKcv) is null)
            {
                throw new CliUsageException($"--check-value {givenKcv} is not a check value: 6 hex digits, as the transcript prints it");
            }

            var databaseKcv = await PinnedCheckValueAsync(target, ct);

            // Every share file, before the approval is verified, the token opened or anyone asked for
            // anything: there, readable, a share file (its public fields: nothing is decrypted, no
            // passphrase is read), of one domain (--domain-id's when given) and split, at least M of
            // them, and of the key the database pins. Before, a missing or malformed file was found
            // only once the approval had been checked.
            var files = ReadShareFiles(ctx, parse.GetValue(shareFiles)!, "--share", host.Kdf.Policy, parse.GetValue(domainId));
            RefuseOtherDomain(target, databaseKcv, files[0].DomainKcv);
            var pinnedKcv = givenKcv ?? databaseKcv;
            var approved = await approval.CheckAsync(ctx, QuorumOperation.RestoreDomain, parse.GetValue(dataDir), target, pinnedKcv,
                request => request.Parameter("token-label") == tokenLabel ? null : $"it restores into token '{request.Parameter("token-label")}', not '{tokenLabel}'", ct);
            if (approved.Approval is null && parse.GetValue(dataDir) is null)
            {
                // The break-glass is allowed because the officers see it afterwards: unrecorded, they would not.
                throw new CliUsageException("--without-approval is the break-glass and is recorded: give --data-dir (the deployment's, or the new node's) for its audit event and signed transcript; nothing was imported");
            }

            var requiredKcv = pinnedKcv ?? approved.Approval?.Request.DomainKcv;
            var id = parse.GetValue(domainId) ?? files[0].DomainId;

            // The rebuilt key must be the key the deployment's data is sealed under, and the share
            // files cannot say which that is: they name the key they rebuild, whichever deployment
            // they come from. So its check value comes from a record of the deployment — its
            // database's pin, the officers' approval (its signed domain key), or the transcript's
            // value typed as --check-value — and a restore with none of them (the break-glass onto a
            // new node) is refused before the token is opened or any passphrase is read.
            var anchors = CheckValueAnchors(target, databaseKcv, approved, givenKcv);
            if (requiredKcv is null)
            {
                throw new CliUsageException(
                    $"nothing here names the domain key this deployment's data is sealed under: no deployment database ({target.Describe()}) pins one, and --without-approval brings no officers' approval naming one. "
                    + "Give --check-value HEX, the domain key's check value as the create-domain transcript (after a rotation, the rotate-domain transcript) or the ceremony checklist records it — "
                    + "not as a share file says it: a share file names only the key its own shares rebuild; nothing was imported");
            }

            if (!string.Equals(KeyCheckValue.Normalize(requiredKcv), files[0].DomainKcv, StringComparison.OrdinalIgnoreCase))
            {
                throw new CliFailureException(ExitCodes.Conflict,
                    $"the share files are of the domain key with check value {files[0].DomainKcv}, but {anchors[0]} names {requiredKcv}: shares of another deployment, or of a domain key rotated away; nothing was imported");
            }

            // The token is checked before any custodian types a passphrase: the PIN, its mechanisms,
            // and its room for the key (writable, no domain key there yet).
            var hsmOptions = hsm.Options(ctx, id);
            using var pin = SecretInput.Read(ctx, hsm.Pin, $"user PIN of token '{hsmOptions.TokenLabel}'");
            var ceremonyId = Guid.NewGuid().ToString();
            var started = DateTimeOffset.UtcNow;
            ctx.Step("inspect the token", hsmOptions.TokenLabel);
            var report = RequireUsable(TokenInspection.Inspect(hsmOptions));
            ctx.Step("open the token", hsmOptions.TokenLabel);
            string kcv;
            using (var session = OpenForDomainKey(ctx, hsmOptions, pin, requiredKcv ?? files[0].DomainKcv))
            {
                // Disposed on every path from here, and at the latest once the key is imported.
                ctx.Step("read the custodians' passphrases");
                using var secrets = CollectPassphrases(ctx, parse.GetValue(passphrases)!, [.. files.Select(f => f.Custodian).Distinct(StringComparer.Ordinal)], confirm: false);
                var opened = new List<(ShareFile File, Share Share)>();
                byte[] domainKey = [];
                try
                {
                    ctx.Step("open the share files");
                    foreach (var file in files)
                    {
                        opened.Add((file, file.Unprotect(secrets[file.Custodian].Chars)));
                    }

                    ctx.Step("rebuild the domain key");
                    domainKey = DomainKeyRecovery.Combine(opened, id, requiredKcv);
                    ctx.Step("import the domain key", hsmOptions.TokenLabel);
                    kcv = session.ImportDomainKey(domainKey, hsmOptions.DomainKeyLabel, id);
                }
                finally
                {
                    CryptographicOperations.ZeroMemory(domainKey);
                    foreach (var (_, share) in opened)
                    {
                        share.Dispose();
                    }

                    secrets.Dispose();
                }
            }

            ctx.Output.Note($"domain key {id} restored into token '{hsmOptions.TokenLabel}' from {files.Count} shares, check value {kcv}");
            var transcript = Transcript.Begin("restore-domain", ceremonyId, started, host)
                .Add("hsm", Describe(report))
                .Add("domain key id (CKA_ID)", id)
                .Add("domain key check value", kcv)
                .Add("check value required by", string.Join("; ", anchors))
                .Add("shares used", $"{files.Count} (threshold {files[0].Threshold} of {files[0].Count})");
            foreach (var file in files)
            {
                transcript.Add($"share {file.Index}", $"custodian {file.Custodian}, fingerprint {file.Fingerprint}");
            }

            approved.AddTo(transcript);

            var json = new JsonObject
            {
                ["domain_id"] = id,
                ["check_value"] = kcv,
                ["token"] = hsmOptions.TokenLabel,
                ["shares_used"] = files.Count,
                ["approval"] = ApprovalJson(approved),
            };
            if (parse.GetValue(dataDir) is { } dir)
            {
                Recorded result;
                ctx.Step("record the restore", hsmOptions.TokenLabel);
                var writing = "";
                try
                {
                    result = await RecordAsync(ctx, dir, target, hsmOptions, pin, ceremonyId, "restore-domain", transcript,
                        [.. files.Select(f => ($"share/{f.Index}/{f.Custodian}", f.Fingerprint))], $"domain/{id}/kcv/{kcv}/token/{hsmOptions.TokenLabel}", ct, approved, what => writing = what);
                }
                catch (Exception e)
                {
                    // A restore is recorded or not done: no key serves from this token unrecorded.
                    // The record may have begun (events appended before the failure): it says
                    // the restore started, and this says it was taken back.
                    var failure = RecordWriteFailure("the restore's record", writing, ctx.Environment.FullPath(dir), target, e);
                    var kept = DestroyImportedKey(hsmOptions, pin, id);
                    var state = (kept is null ? $"the domain key {id} was taken out of token '{hsmOptions.TokenLabel}' again: nothing was restored" : $"nothing was restored, but {kept}")
                        + $"; the audit log may hold this ceremony's ({ceremonyId}) first events without its transcript";
                    if (failure is not null)
                    {
                        // One line, as create-domain's: what was being written, where, why, and what is left.
                        throw new CliFailureException(failure.ExitCode, $"{failure.Message}; {state}; once {ctx.Environment.FullPath(dir)} takes files again, run the command again", e);
                    }

                    ctx.Output.Note($"the restore could not be recorded: {state}");
                    throw;
                }

                json["transcript"] = result.TranscriptPath;
                json["audit_key_fingerprint"] = result.AuditKeyFingerprint;
            }
            else
            {
                ctx.Output.Warn("no --data-dir: the restore is not recorded in an audit log and no signed transcript is written");
            }

            ctx.Output.Result(json, () => CliOutput.Properties([("domain key id", id), ("check value", kcv), ("token", hsmOptions.TokenLabel), ("transcript", json["transcript"]?.GetValue<string>() ?? "none")]));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command VerifyDomain(CommandRunner runner)
    {
        var hsm = new HsmSelection();
        var domainId = new Option<string>("--domain-id") { Description = "the domain key's CKA_ID", HelpName = "ID", Required = true };
        var command = new Command("verify-domain", "print the check value the HSM reports for the token's domain key, after checking its attributes") { domainId };
        hsm.AddTo(command);
        runner.SetAction(command, (ctx, _) =>
        {
            var options = hsm.Options(ctx, ctx.ParseResult.GetRequiredValue(domainId));
            using var pin = SecretInput.Read(ctx, hsm.Pin, $"user PIN of token '{options.TokenLabel}'");
            ctx.Step("open the token", options.TokenLabel);
            using var session = HsmCeremonySession.Open(options, pin.ToUtf8());
            ctx.Step("read the domain key", options.TokenLabel);
            var kcv = session.ReadDomainKeyCheckValue(options.DomainKeyLabel, options.DomainKeyId!)
                ?? throw new CliFailureException(ExitCodes.NotFound, $"token '{options.TokenLabel}' holds no domain key labelled '{options.DomainKeyLabel}' or with CKA_ID '{options.DomainKeyId}'");
            ctx.Output.Result(new JsonObject { ["domain_id"] = options.DomainKeyId, ["check_value"] = kcv, ["token"] = options.TokenLabel }, kcv);
            return Task.FromResult(ExitCodes.Ok);
        });
        return command;
    }

    private static Command VerifyTranscript(CommandRunner runner)
    {
        var file = NameArgument.Create<string>("TRANSCRIPT", "the transcript file (its signature is FILE.sig)");
        var publicKey = new Option<string>("--public-key") { Description = "the audit signing key (PEM) as published, e.g. {DataDir}/audit/signing-key.pem", HelpName = "PEM", Required = true };
        var command = new Command("verify-transcript", "check a ceremony transcript's signature with the audit key") { file, publicKey };
        runner.SetAction(command, (ctx, _) =>
        {
            var key = PublicKeyFromPem(LocalPath.ReadAllText(ctx.Environment, ctx.ParseResult.GetRequiredValue(publicKey), "--public-key"));
            var problem = LocalPath.Read(LocalPath.File(ctx.Environment, ctx.ParseResult.GetRequiredValue(file)), path => Transcript.Verify(path, key));
            if (problem is not null)
            {
                throw new CliFailureException(ExitCodes.DecryptionFailed, problem);
            }

            var fingerprint = Kms.Core.Audit.AuditChain.Fingerprint(key);
            ctx.Output.Result(new JsonObject { ["verified"] = true, ["audit_key_fingerprint"] = fingerprint }, $"verified: signed by audit key {fingerprint}");
            return Task.FromResult(ExitCodes.Ok);
        });
        return command;
    }

    /// <summary>
    /// Fills <paramref name="key"/> from two independent sources, the HSM's RNG XOR the OS CSPRNG:
    /// a weak generator on either side alone cannot weaken the key.
    /// </summary>
    private static void FillFromTwoSources(HsmCeremonySession session, byte[] key)
    {
        var fromHsm = session.GenerateRandom(key.Length);
        RandomNumberGenerator.Fill(key);
        for (var i = 0; i < key.Length; i++)
        {
            key[i] ^= fromHsm[i];
        }

        CryptographicOperations.ZeroMemory(fromHsm);
    }

    /// <summary>One share file per custodian (share i for names[i]), each recorded in <paramref name="written"/> as soon as it is on disk.</summary>
    private static void WriteShareFiles(
        CliContext ctx, Share[] shares, string domainId, string kcv, int threshold, List<string> names, CustodianSecrets secrets,
        KdfChoice kdf, string outDir, List<(string Custodian, int Index, string File, string Fingerprint)> written, string what)
    {
        for (var i = 0; i < shares.Length; i++)
        {
            var file = ShareFile.Protect(shares[i], new ShareMetadata(domainId, kcv, names[i], threshold, names.Count), secrets[names[i]].Chars, kdf.Parameters, kdf.Policy);
            var path = Path.Combine(outDir, $"share-{shares[i].Index}-{SafeFileName(names[i])}.json");
            try
            {
                DurableFile.Write(path, file.ToBytes(), DurableFile.OwnerOnly, overwrite: false);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // A refusal of the filesystem said as such (not .NET's message, naming a temporary
                // file); the caller takes back what the run did and says so.
                throw (Exception?)LocalPath.WriteFailure($"share file {path}", outDir, e) ?? new IOException($"cannot write share file {path}: {e.Message}", e);
            }

            written.Add((names[i], shares[i].Index, path, file.Fingerprint));
            ctx.Output.Note($"{what} {shares[i].Index} of {names.Count} for {names[i]}: {path}");
        }
    }

    /// <summary>
    /// The share files <paramref name="given"/> by <paramref name="flag"/>, read and checked as a set
    /// before any work is done for them: each there and readable (as the other paths: exit
    /// <see cref="ExitCodes.LocalIo"/>, a directory exit <see cref="ExitCodes.Usage"/>), a share
    /// file (its public fields: nothing is decrypted), and together of one domain
    /// (<paramref name="domainId"/> when given), one check value and one split, at least M
    /// (<see cref="DomainKeyRecovery.CheckFiles"/>). A refusal is one line naming the flag, with the
    /// exit code of its kind (<see cref="ErrorReport.FromCeremony"/>).
    /// </summary>
    private static List<ShareFile> ReadShareFiles(CliContext ctx, IEnumerable<string> given, string flag, KdfPolicy policy, string? domainId)
    {
        var files = new List<ShareFile>();
        try
        {
            foreach (var share in given)
            {
                files.Add(ShareFile.Read(LocalPath.CheckReadable(ctx.Environment, share, flag), policy));
            }

            DomainKeyRecovery.CheckFiles(files, domainId);
        }
        catch (CeremonyException e)
        {
            throw new CliFailureException(ErrorReport.FromCeremony(e).ExitCode, $"{flag}: {e.Message}", e);
        }

        return files;
    }

    /// <summary>
    /// Refuses a directory share files are to be written into that holds share files already
    /// (<c>share-*.json</c>), naming them: share files are never overwritten, and one left by an
    /// earlier run is found here, before any PIN, passphrase or HSM call, not at the first share
    /// written. <paramref name="next"/> says what to do instead.
    /// </summary>
    private static void RefuseShareFilesIn(string directory, string flag, string next)
    {
        if (!Directory.Exists(directory))
        {
            return;
        }

        var found = Directory.EnumerateFileSystemEntries(directory, "share-*.json").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        if (found.Count > 0)
        {
            throw new CliFailureException(ExitCodes.Conflict,
                $"{flag} {directory} holds share files already ({string.Join(", ", found)}): share files are never overwritten; {next}");
        }
    }

    // A token that lacks what the profile and the ceremony need is refused before anything is generated.
    private static TokenReport RequireUsable(TokenReport report) => report.Usable
        ? report
        : throw new HsmConfigurationException($"token '{report.Label}' lacks {string.Join(", ", report.MissingMechanisms)}") { Failure = HsmFailure.MechanismMissing };

    /// <summary>
    /// Opens the token a domain key goes into (a refused PIN fails here) and checks that it can
    /// take the key: writable, room left, no domain key there yet. Run before anyone is asked for
    /// a passphrase or a share, so a token that cannot take the key costs no custodian's time.
    /// </summary>
    private static HsmCeremonySession OpenForDomainKey(CliContext ctx, HsmOptions hsmOptions, Secret pin, string? checkValue)
    {
        var session = HsmCeremonySession.Open(hsmOptions, pin.ToUtf8());
        try
        {
            ctx.Step("check the token", hsmOptions.TokenLabel);
            session.RequireRoomForDomainKey(hsmOptions.DomainKeyLabel, hsmOptions.DomainKeyId!, checkValue);
            return session;
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    private static string Describe(TokenReport report) =>
        $"token '{report.Label}', {report.Manufacturer} {report.Model}, serial {report.SerialNumber}, firmware {report.FirmwareVersion}, profile {report.Profile}";

    /// <summary>
    /// Refuses, before anything is imported, shares of another domain key than the one the data
    /// directory's database pins (e.g. old shares after a rotation): the server would refuse the
    /// token anyway, and the token would be left holding a key nobody can use.
    /// </summary>
    private static void RefuseOtherDomain(DeploymentDatabaseTarget database, string? pinned, string sharesCheckValue)
    {
        if (pinned is not null && !string.Equals(pinned, sharesCheckValue, StringComparison.OrdinalIgnoreCase))
        {
            throw new CliFailureException(ExitCodes.Conflict,
                $"the deployment database ({database.Describe()}) was made under the domain key with check value {pinned}, but these shares rebuild {sharesCheckValue}; nothing was imported");
        }
    }

    /// <summary>
    /// The records that name the domain key a restore must rebuild, in the order the required
    /// check value is taken from them (each one present agrees with it, or the restore was refused
    /// already: the approval is verified against the first, the database's pin against the shares).
    /// Empty when none does.
    /// </summary>
    private static List<string> CheckValueAnchors(DeploymentDatabaseTarget database, string? databaseKcv, CeremonyApprovalOutcome approved, string? givenKcv)
    {
        List<string> anchors = [];
        if (givenKcv is not null)
        {
            anchors.Add("--check-value");
        }

        if (databaseKcv is not null)
        {
            anchors.Add($"the deployment database ({database.Describe()})");
        }

        if (approved.Approval is { } verified)
        {
            anchors.Add($"the approval of {verified.Request.Name}");
        }

        return anchors;
    }

    /// <summary>The domain key check value the deployment's database pins, if it exists and has one.</summary>
    private static async Task<string?> PinnedCheckValueAsync(DeploymentDatabaseTarget database, CancellationToken ct)
    {
        await using var store = await database.OpenExistingAsync(ct);
        return store is null ? null : await store.GetSettingAsync(Kms.Core.Services.DomainKeyGuard.CheckValueSetting, ct);
    }

    private static JsonObject ApprovalJson(CeremonyApprovalOutcome outcome) => outcome.Approval is { } verified
        ? new JsonObject
        {
            ["request"] = verified.Request.Name,
            ["officer_set"] = verified.OfficerSet.Sequence,
            ["approved_by"] = new JsonArray([.. verified.Approvers.Select(o => (JsonNode)new JsonObject { ["name"] = o.Name, ["fingerprint"] = o.Fingerprint })]),
            ["genesis_sha256"] = outcome.GenesisHash,
        }
        : new JsonObject { ["request"] = null, ["without_approval"] = outcome.Description };

    private sealed record Recorded(string TranscriptPath, string AuditKeyFingerprint);

    /// <summary>The custodians' passphrases of one ceremony, by custodian: disposing this zeroes every one.</summary>
    private sealed class CustodianSecrets(Dictionary<string, Secret> secrets) : IDisposable
    {
        public Secret this[string custodian] => secrets[custodian];

        public void Dispose()
        {
            foreach (var secret in secrets.Values)
            {
                secret.Dispose();
            }
        }
    }

    // Takes back a create-domain that failed after its key was imported and its shares written:
    // the key, and what the run wrote (RunFiles: the share files, and in the data directory the
    // database, the genesis, the published audit key, a transcript, and the directories it made,
    // if nothing else is in them). What cannot be taken back is returned, each as what to do about
    // it, to be said, not hidden behind the failure that is rethrown.
    private static List<string> UndoCreateDomain(HsmOptions hsmOptions, Secret pin, string id, RunFiles files, bool postgres)
    {
        List<string> left = [];
        if (DestroyImportedKey(hsmOptions, pin, id) is { } kept)
        {
            left.Add(kept);
        }

        left.AddRange(files.TakeBack());
        if (postgres)
        {
            left.Add("the deployment database may hold this run's records: empty it before running again");
        }

        return left;
    }

    // The state a create-domain taken back by UndoCreateDomain leaves, as the end of its failure's line.
    private static string AfterUndo(string id, string tokenLabel, List<string> left) => left.Count == 0
        ? $"the domain key {id} this run imported was destroyed again in token '{tokenLabel}', and the share files and every file this run wrote in --data-dir were deleted: nothing was kept, run the command again"
        : $"this run was taken back except: {string.Join("; ", left)} — then run the command again";

    /// <summary>
    /// The one-line failure of a ceremony's <paramref name="record"/> ("the ceremony's record")
    /// that the filesystem or the SQLite database refused (<paramref name="writing"/>: what was
    /// being written in <paramref name="dataDir"/>): permission denied, a read-only or a full
    /// filesystem, as <see cref="LocalPath.WriteFailure"/> says them; null for any other failure,
    /// whose own message stands. Called before anything is taken back: a deletion frees the room
    /// whose lack the probe below may have to find.
    /// </summary>
    /// <remarks>
    /// SQLite says ENOSPC as SQLITE_FULL, but keeps the operating system's cause of SQLITE_IOERR
    /// ("disk I/O error": e.g. a page of the WAL's index or a journal that could not be extended on
    /// a nearly full filesystem), SQLITE_READONLY and SQLITE_CANTOPEN (a new database on a
    /// read-only filesystem) to itself. For those a probe file is written in
    /// <paramref name="dataDir"/> now: a full or read-only filesystem, or a permission denied, that
    /// it meets is said as above; an I/O error the probe does not explain is said as one ("disk I/O
    /// error writing the database …"), exit 9 too — a local file that could not be written, not an
    /// unexpected error (exit 1, as it was).
    /// </remarks>
    private static CliFailureException? RecordWriteFailure(string record, string writing, string dataDir, DeploymentDatabaseTarget database, Exception exception)
    {
        var named = $"{record} ({writing})";
        return exception switch
        {
            IOException or UnauthorizedAccessException => LocalPath.WriteFailure(named, dataDir, exception),
            Microsoft.Data.Sqlite.SqliteException { SqliteErrorCode: SqliteFull } when !database.IsPostgres =>
                new(ExitCodes.LocalIo, $"cannot write {named}: no space left on the filesystem holding {dataDir}", exception),
            Microsoft.Data.Sqlite.SqliteException { SqliteErrorCode: SqliteIoError or SqliteReadOnly or SqliteCannotOpen } sqlite when !database.IsPostgres =>
                (LocalPath.ProbeFailure(dataDir) is { } cause ? LocalPath.WriteFailure(named, dataDir, cause) : null)
                    ?? (sqlite.SqliteErrorCode == SqliteIoError
                        ? new(ExitCodes.LocalIo, $"cannot write {named}: disk I/O error writing the database {database.Describe()} (SQLITE_IOERR)", exception)
                        : null),
            _ => null,
        };
    }

    // SQLite's primary result codes.
    private const int SqliteReadOnly = 8;
    private const int SqliteIoError = 10;
    private const int SqliteFull = 13;
    private const int SqliteCannotOpen = 14;

    // A domain key this run imported and cannot record is taken out of the token again; what to
    // do when it cannot be, or null.
    private static string? DestroyImportedKey(HsmOptions hsmOptions, Secret pin, string id)
    {
        try
        {
            using var session = HsmCeremonySession.Open(hsmOptions, pin.ToUtf8());
            session.DestroyDomainKey(hsmOptions.DomainKeyLabel, id);
            return null;
        }
        catch (HsmConfigurationException e)
        {
            return $"the domain key {id} could not be destroyed in token '{hsmOptions.TokenLabel}' ({e.GetType().Name}): destroy it before running again";
        }
    }

    // As above, through the session the key was imported in.
    private static string? DestroyDomainKeyOrSay(HsmCeremonySession session, HsmOptions hsmOptions, string id)
    {
        try
        {
            session.DestroyDomainKey(hsmOptions.DomainKeyLabel, id);
            return null;
        }
        catch (HsmConfigurationException e)
        {
            return $"the domain key {id} could not be destroyed in token '{hsmOptions.TokenLabel}' ({e.GetType().Name}): destroy it before running again";
        }
    }

    /// <summary>Appends the steps to the deployment's audit chain, signs the transcript with the audit key, checkpoints.</summary>
    private static async Task<Recorded> RecordAsync(
        CliContext ctx, string dataDir, DeploymentDatabaseTarget database, HsmOptions hsmOptions, Secret pin, string ceremonyId, string operation, Transcript transcript,
        IReadOnlyList<(string Resource, string Fingerprint)> shares, string domainResource, CancellationToken ct, CeremonyApprovalOutcome? approval = null, Action<string>? writing = null,
        RunFiles? files = null)
    {
        // What is being written, for a failure's message; and (create-domain's) what this run
        // writes where nothing was, for its take-back.
        writing?.Invoke($"the deployment database {database.Describe()} and the audit key in {Path.Combine(Path.GetFullPath(dataDir), "audit")}");
        if (files is not null)
        {
            DeploymentRecord.WillWrite(files, dataDir, database);
        }

        await using var record = await DeploymentRecord.OpenAsync(dataDir, database, hsmOptions, pin.ToUtf8(), ctx.Output.Note, ct, ctx.Log);
        await record.AppendAsync(ceremonyId, operation, domainResource, ct);
        foreach (var resource in approval?.AuditResources() ?? [])
        {
            await record.AppendAsync(ceremonyId, operation + "/approval", resource, ct);
        }

        foreach (var (resource, fingerprint) in shares)
        {
            await record.AppendAsync(ceremonyId, operation + "/share", $"{resource}/{fingerprint}", ct);
        }

        transcript.Add("deployment database", database.Describe());
        transcript.Add("audit signing key", record.AuditKeyFingerprint);
        var content = transcript.ToBytes();
        var path = Path.Combine(Path.GetFullPath(dataDir), "ceremonies", $"{DateTime.UtcNow:yyyyMMddTHHmmssZ}-{operation}-{ceremonyId[..8]}.txt");
        writing?.Invoke($"the transcript {path}");
        files?.WillCreateDirectory(Path.GetDirectoryName(path)!);
        files?.WillWrite(path);
        files?.WillWrite(path + ".sig");
        DurableFile.CreateDirectory(Path.GetDirectoryName(path)!);
        var signature = await record.SignAsync(Transcript.Kind, content, ct);
        await Transcript.WriteAsync(path, content, record.AuditKeyFingerprint, signature, ct);
        writing?.Invoke($"the deployment database {database.Describe()} and the audit checkpoints in {Path.Combine(Path.GetFullPath(dataDir), "audit")}");
        await record.AppendAsync(ceremonyId, operation + "/transcript", "transcript/sha256:" + Convert.ToHexStringLower(SHA256.HashData(content)), ct);
        await record.CheckpointAsync(ct);
        ctx.Output.Note($"transcript signed by audit key {record.AuditKeyFingerprint}: {path}");
        return new Recorded(path, record.AuditKeyFingerprint);
    }

    private static Option<Dictionary<string, string>> PassphraseFiles() =>
        ContextOption.Create("--passphrase-file", "CUSTODIAN=PATH: read that custodian's passphrase from the file's first line (repeatable; else each custodian is prompted)");

    // Each passphrase file (CUSTODIAN=PATH) there, a file, and readable, without reading it (the
    // secret is read when it is needed, once the token is open).
    private static void CheckPassphraseFiles(CliContext ctx, Dictionary<string, string> files, string flag)
    {
        foreach (var file in files.Values)
        {
            var path = ctx.Environment.FullPath(file);
            SecretInput.RequireFile(path, flag);
            LocalPath.RequireReadable(path, $"{flag} {path}");
        }
    }

    private static CustodianSecrets CollectPassphrases(CliContext ctx, Dictionary<string, string> files, IReadOnlyList<string> custodians, bool confirm, string flag = "--passphrase-file")
    {
        var unknown = files.Keys.Except(custodians, StringComparer.Ordinal).ToList();
        if (unknown.Count > 0)
        {
            throw new CliUsageException($"{flag} names no custodian of this ceremony: {string.Join(", ", unknown)}");
        }

        var secrets = new Dictionary<string, Secret>(StringComparer.Ordinal);
        try
        {
            foreach (var custodian in custodians)
            {
                var secret = files.TryGetValue(custodian, out var path)
                    ? SecretInput.ReadFile(ctx.Environment.FullPath(path), $"passphrase of {custodian}", flag)
                    : Prompt(ctx, custodian, confirm);
                secrets[custodian] = secret;
                // Checked before anything is generated (share files enforce the same policy, test KDF or not).
                if (confirm && Passphrases.Check(secret.Chars) is { } problem)
                {
                    throw new CliUsageException($"the passphrase of {custodian} is refused: {problem}");
                }
            }

            return new CustodianSecrets(secrets);
        }
        catch
        {
            foreach (var secret in secrets.Values)
            {
                secret.Dispose();
            }

            throw;
        }
    }

    private static Secret Prompt(CliContext ctx, string custodian, bool confirm)
    {
        if (!ctx.Environment.Interactive)
        {
            throw new CliUsageException($"no passphrase for {custodian}: give --passphrase-file {custodian}=PATH, or run at a terminal to be prompted");
        }

        var first = SecretInput.Prompt(ctx.Output.ErrorConsole, $"{custodian}, type your share passphrase (at least {Passphrases.MinLength} characters)");
        if (!confirm)
        {
            return first;
        }

        using var again = SecretInput.Prompt(ctx.Output.ErrorConsole, $"{custodian}, type it again");
        if (!first.Chars.SequenceEqual(again.Chars))
        {
            first.Dispose();
            throw new CliUsageException($"the two passphrases of {custodian} differ");
        }

        return first;
    }

    private static List<string> CustodianNames(string[] names, int? count)
    {
        if (names.Length > 0 && count is not null)
        {
            throw new CliUsageException("give either --custodian NAME (repeated) or --custodians N, not both");
        }

        var list = names.Length > 0
            ? [.. names]
            : count is { } n and >= 2 and <= Shamir.MaxShares
                ? Enumerable.Range(1, n).Select(i => $"custodian-{i}").ToList()
                : throw new CliUsageException($"name the custodians (--custodian NAME, repeated) or give --custodians N (2 to {Shamir.MaxShares})");
        if (list.Count < 2 || list.Distinct(StringComparer.Ordinal).Count() != list.Count)
        {
            throw new CliUsageException("at least two custodians, each named once");
        }

        // Refused here, before the token or a directory is touched, not when the first share file is written.
        if ((list.Select(CustodianName.Check).FirstOrDefault(p => p is not null) ?? CustodianName.CheckSet(list)) is { } problem)
        {
            throw new CliUsageException($"--custodian: {problem}");
        }

        return list;
    }

    private static string SafeFileName(string custodian) =>
        new([.. custodian.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_')]);

    internal static byte[] PublicKeyFromPem(string pem)
    {
        using var key = ECDsa.Create();
        try
        {
            key.ImportFromPem(pem);
        }
        catch (Exception e) when (e is ArgumentException or CryptographicException)
        {
            // CryptographicException: a PEM public key of another kind (RSA, a PKCS#1 block).
            throw new CliUsageException($"--public-key is not the PEM of an ECDSA public key (the audit key): {e.Message}");
        }

        return key.ExportSubjectPublicKeyInfo();
    }
}
