using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Kms.Ceremony;
using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;
using Kms.Cli.Ceremony;
using Kms.Cli.Infrastructure;
using Kms.Core.Files;
using Kms.Hsm;

namespace Kms.Cli.Commands;

/// <summary><c>kms ceremony rotate-domain</c>: the offline domain-key rotation (docs/ceremony.md, "Rotating the domain key").</summary>
internal static partial class CeremonyCommands
{
    private static Command RotateDomain(CommandRunner runner)
    {
        var rotationToken = new HsmSelection();
        var soPin = new SecretOption("so-pin", "the rotation token's security officer PIN (it is wiped at the end)");
        var oldShares = new Option<string[]>("--share") { Description = "an OLD custodian share file (repeat; at least M)", HelpName = "FILE", Arity = ArgumentArity.OneOrMore, Required = true };
        var newCustodians = new Option<string[]>("--new-custodian") { Description = "a NEW custodian's name (repeat; first run)", HelpName = "NAME", Arity = ArgumentArity.ZeroOrMore };
        var newThreshold = new Option<int?>("--new-threshold") { Description = "M for the new shares (first run)", HelpName = "M" };
        var newSharesDir = new Option<string?>("--new-shares-dir") { Description = "where the new share files are written (first run)", HelpName = "DIR" };
        var newShares = new Option<string[]>("--new-share") { Description = "a NEW share file written by an interrupted run (repeat; at least M): resumes with that key", HelpName = "FILE", Arity = ArgumentArity.ZeroOrMore };
        var dataDir = new Option<string>("--data-dir") { Description = "the deployment's data directory (server stopped)", HelpName = "DIR", Required = true };
        var restoreToken = new Option<string>("--restore-token-label") { Description = "a freshly initialised production token that receives the new domain key and signs the transcript", HelpName = "LABEL", Required = true };
        var restorePin = new SecretOption("restore-pin", "the user PIN of the --restore-token-label token");
        var passphrases = PassphraseFiles();
        var newPassphrases = ContextOption.Create("--new-passphrase-file", "CUSTODIAN=PATH: a NEW custodian's passphrase (repeatable; else prompted)");
        var options = CeremonyHostOptions.Create();
        var database = new DeploymentDatabase();
        var approval = CeremonyApproval.ForRotation();
        var command = new Command("rotate-domain",
            "re-wrap every stored key under a new domain key (server stopped; old key rebuilt from M old shares into a dedicated rotation token, wiped at the end); resumable")
        {
            oldShares, newCustodians, newThreshold, newSharesDir, newShares, dataDir, restoreToken, passphrases, newPassphrases,
        };
        rotationToken.AddTo(command);
        soPin.AddTo(command);
        restorePin.AddTo(command);
        options.AddTo(command);
        database.AddTo(command);
        approval.AddTo(command);
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var host = options.Prepare(ctx);

            // Every path, before the HSM, the database or the approval: a wrong one stops the
            // rotation before it begins, not half way.
            LocalPath.Directory(ctx.Environment, parse.GetRequiredValue(dataDir), "--data-dir", existing: true);
            foreach (var share in parse.GetValue(oldShares)!)
            {
                LocalPath.CheckReadable(ctx.Environment, share, "--share");
            }

            foreach (var share in parse.GetValue(newShares) ?? [])
            {
                LocalPath.CheckReadable(ctx.Environment, share, "--new-share");
            }

            if (parse.GetValue(newSharesDir) is { } givenSharesDir)
            {
                LocalPath.Directory(ctx.Environment, givenSharesDir, "--new-shares-dir");
            }

            approval.CheckPaths(ctx);
            CheckPassphraseFiles(ctx, parse.GetValue(passphrases)!, "--passphrase-file");
            CheckPassphraseFiles(ctx, parse.GetValue(newPassphrases)!, "--new-passphrase-file");

            // Where this run writes, checked with a file written and deleted again, before the
            // database, the approval, the HSM or any passphrase: the new share files (written before
            // the first blob moves; before, a directory that took no file was found after the old
            // key was rebuilt and the rotation recorded) and the data directory (its transcript is
            // written after the point of no return).
            if (parse.GetValue(newSharesDir) is { } writeSharesTo)
            {
                // Not created yet: an approval refused leaves nothing behind. Share files there
                // already (an earlier run's) are refused now too, as create-domain refuses them:
                // before, they were found at the first new share written, after the approval, the
                // PINs and the passphrases, with the old key rebuilt and the rotation recorded.
                var sharesTo = LocalPath.CheckWritableDirectory(ctx.Environment, writeSharesTo, "--new-shares-dir");
                RefuseShareFilesIn(sharesTo, "--new-shares-dir",
                    "move them away or give another --new-shares-dir (an interrupted run's new share files resume it: --new-share, docs/ceremony.md)");
            }

            LocalPath.WritableDirectory(ctx.Environment, parse.GetRequiredValue(dataDir), "--data-dir");

            // The HSM's files (module, configuration, profile) are checked before anything is read or locked.
            var rotationOptions = rotationToken.Options(ctx, "kms-rotation");
            var restoreOptions = rotationToken.Options(ctx, "pending");
            var dir = LocalPath.Directory(ctx.Environment, parse.GetRequiredValue(dataDir), "--data-dir");
            var target = database.Resolve(ctx, dir);
            await using var store = await target.OpenExistingAsync(ct)
                ?? throw new CliFailureException(ExitCodes.LocalIo, $"no database at {target.Describe()}");
            var inProgress = await store.GetDomainKeyRotationAsync(ct);
            var pinned = inProgress?.OldCheckValue ?? await store.GetSettingAsync(Kms.Core.Services.DomainKeyGuard.CheckValueSetting, ct)
                ?? throw new CliFailureException(ExitCodes.Conflict, "the database pins no domain key");
            var resumePaths = parse.GetValue(newShares) ?? [];
            if (inProgress is not null && resumePaths.Length == 0 && inProgress.Rewrapped > 0)
            {
                throw new CliUsageException($"a rotation to domain key {inProgress.NewCheckValue} is in progress ({inProgress.Rewrapped} blobs done): resume it with --new-share (M of the new share files)");
            }

            if (inProgress is null && resumePaths.Length > 0)
            {
                // Share files alone prove nothing about which key a crashed run chose: they would
                // rotate the deployment onto any key of the approved shape (an old, retired one, or
                // one split under passphrases the operator chose). Only a recorded rotation names it.
                throw new CliFailureException(ExitCodes.Conflict,
                    "no domain-key rotation is in progress on this database: --new-share resumes one (it rebuilds the key the rotation record names); start a rotation with --new-custodian, --new-threshold and --new-shares-dir");
            }

            // The share files, old and new, read and checked as sets (and the old ones against the
            // key the database is pinned to) before the lock, the approval or the HSM: a malformed or
            // mismatched file is said now, not once passphrases have been typed.
            var oldFiles = ReadShareFiles(ctx, parse.GetValue(oldShares)!, "--share", host.Kdf.Policy, domainId: null);
            var resumeFiles = resumePaths.Length > 0 ? ReadShareFiles(ctx, resumePaths, "--new-share", host.Kdf.Policy, domainId: null) : [];

            // A server holds the serving lock while it serves: refused before any share is written.
            if (!await store.TryHoldMaintenanceLockAsync(ct))
            {
                throw new CliFailureException(ExitCodes.Conflict, $"a server is serving this {store.Provider} database; stop every server before rotating the domain key");
            }

            var names = resumePaths.Length > 0 ? [] : CustodianNames(parse.GetValue(newCustodians) ?? [], null);
            var m = parse.GetValue(newThreshold) ?? 0;
            if (resumePaths.Length == 0 && (m < Shamir.MinThreshold || m > names.Count || parse.GetValue(newSharesDir) is null))
            {
                throw new CliUsageException("a first run needs --new-custodian (N), --new-threshold (2 ≤ M ≤ N) and --new-shares-dir");
            }

            // The officers' approval, verified before any share is read: for the key this database is
            // pinned to, and (first run) for the new share set's shape they signed.
            var approved = await approval.CheckAsync(ctx, Kms.Core.Quorum.QuorumOperation.RotateDomainKey, dir, target, pinned, request =>
                resumePaths.Length > 0 || (request.Parameter("new-custodians") == names.Count.ToString(CultureInfo.InvariantCulture)
                    && request.Parameter("new-threshold") == m.ToString(CultureInfo.InvariantCulture))
                    ? null
                    : $"it approves new shares {request.Parameter("new-threshold")} of {request.Parameter("new-custodians")}, not {m} of {names.Count}", ct);
            if (resumeFiles.Count > 0 && approved.Approval?.Request is { } signed
                && (signed.Parameter("new-custodians") != resumeFiles[0].Count.ToString(CultureInfo.InvariantCulture)
                    || signed.Parameter("new-threshold") != resumeFiles[0].Threshold.ToString(CultureInfo.InvariantCulture)))
            {
                throw new CliFailureException(ExitCodes.Conflict,
                    $"the approval of {signed.Name} approves new shares {signed.Parameter("new-threshold")} of {signed.Parameter("new-custodians")}, but the new share files are {resumeFiles[0].Threshold} of {resumeFiles[0].Count}");
            }

            // The old shares must be of the key the database is pinned to: said before any PIN or
            // passphrase (after the approval, whose own refusal of another key comes first).
            if (!string.Equals(oldFiles[0].DomainKcv, KeyCheckValue.Normalize(pinned), StringComparison.OrdinalIgnoreCase))
            {
                throw new CliFailureException(ExitCodes.Conflict,
                    $"--share: the share files are of the domain key with check value {oldFiles[0].DomainKcv}, but the deployment database ({target.Describe()}) is pinned to {pinned}; nothing was moved");
            }

            restoreOptions.TokenLabel = parse.GetRequiredValue(restoreToken);
            if (restoreOptions.TokenLabel == rotationOptions.TokenLabel)
            {
                throw new CliUsageException("--restore-token-label must name another token than the rotation token (which is wiped)");
            }

            using var pin = SecretInput.Read(ctx, rotationToken.Pin, $"user PIN of rotation token '{rotationOptions.TokenLabel}'");
            using var so = SecretInput.Read(ctx, soPin, $"security officer PIN of rotation token '{rotationOptions.TokenLabel}'");
            using var productionPin = SecretInput.Read(ctx, restorePin, $"user PIN of token '{restoreOptions.TokenLabel}'");
            var ceremonyId = Guid.NewGuid().ToString();
            var started = DateTimeOffset.UtcNow;
            var plannedId = resumeFiles.Count > 0 ? resumeFiles[0].DomainId : $"dk-{DateTime.UtcNow:yyyyMMdd}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}";

            // The token the new key goes to is first used after the point of no return (every blob
            // moved, the rotation token wiped): its PIN and its room for the key are checked now,
            // while a mistake still leaves everything as it was.
            restoreOptions.DomainKeyId = plannedId;
            ctx.Step("open the new domain key's token", restoreOptions.TokenLabel);
            using (OpenForDomainKey(ctx, restoreOptions, productionPin, checkValue: null))
            {
            }

            // And the rotation token, before any custodian types a passphrase: its security-officer
            // PIN, which the wipe presents after the point of no return (every blob moved: a refused
            // PIN there leaves the database rotated and the new key in no token), checked first while
            // no session of ours is logged in to it (PKCS#11 refuses the SO while the user is); then
            // its user PIN, and that it is empty (LoadRotationKeys refuses one that is not, after the
            // old key is rebuilt).
            ctx.Step("check the rotation token's security-officer PIN", rotationOptions.TokenLabel);
            HsmTokenSetup.CheckSecurityOfficerPin(rotationOptions.ModulePath, rotationOptions.TokenLabel, so.ToUtf8(), rotationOptions.ModuleEnvironment);
            ctx.Step("check the rotation token", rotationOptions.TokenLabel);
            using (var rotation = HsmCeremonySession.Open(rotationOptions, pin.ToUtf8()))
            {
                rotation.RequireEmptyForRotation();
            }

            // Disposed on every path from here (a refused new passphrase), and at the latest when the
            // keys are imported (the finally below).
            ctx.Step("read the custodians' passphrases");
            using var oldSecrets = CollectPassphrases(ctx, parse.GetValue(passphrases)!, [.. oldFiles.Select(f => f.Custodian).Distinct(StringComparer.Ordinal)], confirm: false);
            using var newSecrets = CollectPassphrases(ctx, parse.GetValue(newPassphrases)!,
                resumeFiles.Count > 0 ? [.. resumeFiles.Select(f => f.Custodian).Distinct(StringComparer.Ordinal)] : names, confirm: resumeFiles.Count == 0, "--new-passphrase-file");

            var oldKey = Array.Empty<byte>();
            var newKey = GC.AllocateArray<byte>(32, pinned: true);
            var opened = new List<(ShareFile File, Share Share)>();
            var written = new List<(string Custodian, int Index, string File, string Fingerprint)>();
            string newId;
            string newKcv;
            string? recorded = null;
            DomainKeyRotationOutcome outcome;
            try
            {
                ctx.Step("open the old share files");
                foreach (var file in oldFiles)
                {
                    opened.Add((file, file.Unprotect(oldSecrets[file.Custodian].Chars)));
                }

                // The old shares must rebuild the key this database is pinned to.
                ctx.Step("rebuild the old domain key");
                oldKey = DomainKeyRecovery.Combine(opened, oldFiles[0].DomainId, pinned);
                ctx.Step("open the rotation token", rotationOptions.TokenLabel);
                using var session = HsmCeremonySession.Open(rotationOptions, pin.ToUtf8());
                if (resumeFiles.Count > 0)
                {
                    ctx.Step("rebuild the new domain key");
                    var openedNew = resumeFiles.Select(f => (f, f.Unprotect(newSecrets[f.Custodian].Chars))).ToList();
                    try
                    {
                        var rebuilt = DomainKeyRecovery.Combine(openedNew, resumeFiles[0].DomainId, inProgress!.NewCheckValue);
                        rebuilt.CopyTo(newKey, 0);
                        CryptographicOperations.ZeroMemory(rebuilt);

                        // The check value is 3 bytes and the record is a database row: only the MAC
                        // under the old key, written by the run that chose the key, says these
                        // shares hold the key that run chose.
                        if (!RotationKeyMacMatches(inProgress.NewKeyMac, oldKey, newKey))
                        {
                            throw new CliFailureException(ExitCodes.Conflict,
                                $"the new share files rebuild a key with check value {inProgress.NewCheckValue}, but not the key the rotation chose (its record carries {(inProgress.NewKeyMac is null ? "no" : "another")} MAC of it under the old key); nothing was moved");
                        }
                    }
                    finally
                    {
                        foreach (var (_, share) in openedNew)
                        {
                            share.Dispose();
                        }
                    }

                    newId = resumeFiles[0].DomainId;
                    foreach (var (file, path) in resumeFiles.Zip(resumePaths))
                    {
                        written.Add((file.Custodian, file.Index, path, file.Fingerprint));
                    }
                }
                else
                {
                    // As create-domain: HSM RNG XOR OS RNG. The new shares are written before any blob
                    // depends on the new key, so no crash can leave data under a key nobody holds.
                    ctx.Step("generate the new domain key", rotationOptions.TokenLabel);
                    FillFromTwoSources(session, newKey);
                    newId = plannedId;
                    var kcv = HsmCeremonySession.AesCheckValue(newKey);

                    // The rotation is recorded (with the new key's check value) before its shares are
                    // written: a resumed run rebuilds exactly this key, never one the files alone name.
                    // A blob of a kind the rotation cannot move fails the listing first. A rotation
                    // recorded earlier that moved nothing yet (a crash before its shares were all
                    // written) is replaced: no blob depends on its key.
                    _ = await store.ListWrappedItemsAfterAsync(null, ct);
                    await store.BeginDomainKeyRotationAsync(pinned, kcv, DateTimeOffset.UtcNow, ct, replaceUnstarted: true,
                        newKeyMac: Convert.ToHexStringLower(RotationKeyMac(oldKey, newKey)));
                    recorded = kcv;
                    ctx.Step("write the new share files");
                    var outDir = LocalPath.CreateDirectory(ctx.Environment, parse.GetValue(newSharesDir)!, "--new-shares-dir");
                    var shares = Shamir.Split(newKey, m, names.Count);
                    try
                    {
                        WriteShareFiles(ctx, shares, newId, kcv, m, names, newSecrets, host.Kdf, outDir, written, "new share");
                    }
                    catch (Exception e)
                    {
                        // No blob depends on the new key yet: the share files this run wrote are of
                        // a key nobody will use (its record is taken back below). Deleted, so that
                        // none is kept as a share of the deployment, and the next run finds none.
                        var kept = written.Select(w => w.File).Where(file => !TryDeleteFile(file)).ToList();
                        if (e is CliFailureException { ExitCode: ExitCodes.LocalIo } io)
                        {
                            throw new CliFailureException(io.ExitCode,
                                $"{io.Message}; nothing was moved (the database is still under domain key {pinned}) and "
                                + (kept.Count == 0
                                    ? "the new share files written were deleted: run the command again"
                                    : $"the new share files {string.Join(", ", kept)} could not be deleted: delete them, then run the command again"), e);
                        }

                        throw;
                    }
                    finally
                    {
                        foreach (var share in shares)
                        {
                            share.Dispose();
                        }
                    }
                }

                ctx.Step("load both keys into the rotation token", rotationOptions.TokenLabel);
                using (var rewrapper = session.LoadRotationKeys(oldKey, newKey))
                {
                    ctx.Step("re-wrap the stored keys", rotationOptions.TokenLabel);
                    newKcv = rewrapper.NewCheckValue;
                    ctx.Output.Note($"rotating from domain key {rewrapper.OldCheckValue} to {newKcv}{(inProgress is null ? "" : $", resuming after {inProgress.Rewrapped} blobs")}");
                    outcome = await DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, stopAfter: null, ct);
                }

                session.Dispose();
                ctx.Step("wipe the rotation token", rotationOptions.TokenLabel);
                HsmTokenSetup.WipeToken(rotationOptions.ModulePath, rotationOptions.TokenLabel, so.ToUtf8(), rotationOptions.ModuleEnvironment);
                ctx.Output.Note($"rotation token '{rotationOptions.TokenLabel}' wiped (C_InitToken)");

                restoreOptions.DomainKeyId = newId;
                ctx.Step("import the new domain key", restoreOptions.TokenLabel);
                using var production = HsmCeremonySession.Open(restoreOptions, productionPin.ToUtf8());
                production.ImportDomainKey(newKey, restoreOptions.DomainKeyLabel, newId);
            }
            catch (Exception) when (recorded is not null)
            {
                // A first run that failed before its first blob moved (a share file in the way, the
                // HSM) takes its record back: the database serves under the old key as before.
                await AbandonQuietlyAsync(store, recorded);
                throw;
            }
            finally
            {
                CryptographicOperations.ZeroMemory(oldKey);
                CryptographicOperations.ZeroMemory(newKey);
                foreach (var (_, share) in opened)
                {
                    share.Dispose();
                }

                oldSecrets.Dispose();
                newSecrets.Dispose();
            }

            await store.DisposeAsync();
            var transcript = Transcript.Begin("rotate-domain", ceremonyId, started, host)
                .Add("old domain key check value", pinned)
                .Add("old shares used", $"{oldFiles.Count} of domain {oldFiles[0].DomainId}")
                .Add("new domain key id (CKA_ID)", newId)
                .Add("new domain key check value", newKcv)
                .Add("blobs re-wrapped", $"{outcome.Rewrapped} by this run, {outcome.ResumedAfter} by an earlier interrupted run")
                .Add("rotation token", $"'{rotationOptions.TokenLabel}', wiped with C_InitToken")
                .Add("new domain key imported into", $"token '{restoreOptions.TokenLabel}'")
                .Add("new share protection", resumeFiles.Count > 0
                    ? $"as written by the interrupted run ({resumeFiles.Count} files given here)"
                    : $"Argon2id m={host.Kdf.Parameters.MemoryKib} KiB t={host.Kdf.Parameters.Iterations} p={host.Kdf.Parameters.Parallelism}, AES-256-GCM{(host.Kdf.Policy == KdfPolicy.Production ? "" : " — WEAK TEST PARAMETERS")}");
            approved.AddTo(transcript);
            foreach (var (custodian, index, file, fingerprint) in written)
            {
                // A resumed run names the new share files it was given (M of them); the first run, all N.
                transcript.Add($"new share {index}", $"custodian {custodian}, file {Path.GetFileName(file)}, fingerprint {fingerprint}");
            }

            ctx.Step("record the rotation", restoreOptions.TokenLabel);
            Recorded result;
            var writing = "";
            try
            {
                result = await RecordAsync(ctx, dir, target, restoreOptions, productionPin, ceremonyId, "rotate-domain", transcript,
                    [.. written.Select(w => ($"share/{w.Index}/{w.Custodian}", w.Fingerprint))], $"domain/{newId}/kcv/{newKcv}/previous/{pinned}", ct, approved, what => writing = what);
            }
            catch (Exception e)
            {
                // Past the point of no return: nothing is taken back (the database is under the new
                // key, which only that token holds). The line says so, and what the officers do next.
                if (RecordWriteFailure("the rotation's record", writing, dir, target, e) is { } failure)
                {
                    var shareFiles = resumeFiles.Count > 0 ? "the new share files given with --new-share" : $"the new share files in {Path.GetDirectoryName(written[0].File)}";
                    throw new CliFailureException(failure.ExitCode,
                        $"{failure.Message}; the rotation itself is done: every stored key is re-wrapped under domain key {newId} (check value {newKcv}), the database is pinned to it, "
                        + $"the rotation token '{rotationOptions.TokenLabel}' was wiped and token '{restoreOptions.TokenLabel}' holds the new key — keep it and {shareFiles}; "
                        + $"only the record is missing (the audit log may hold this ceremony's ({ceremonyId}) first events, no transcript was signed): once {dir} takes files again, "
                        + $"record it with kms ceremony restore-domain --without-approval --check-value {newKcv} --data-dir {dir} and M of the new shares into another freshly initialised token "
                        + $"(docs/ceremony.md §8); servers start on token '{restoreOptions.TokenLabel}' with --Hsm:DomainKeyId={newId}", e);
                }

                throw;
            }

            var json = new JsonObject
            {
                ["domain_id"] = newId,
                ["check_value"] = newKcv,
                ["previous_check_value"] = pinned,
                ["rewrapped"] = outcome.Rewrapped,
                ["resumed_after"] = outcome.ResumedAfter,
                ["transcript"] = result.TranscriptPath,
                ["approval"] = ApprovalJson(approved),
                ["server_configuration"] = new JsonObject { ["Hsm:TokenLabel"] = restoreOptions.TokenLabel, ["Hsm:DomainKeyId"] = newId, ["Kms:DataDir"] = dir },
            };
            ctx.Output.Result(json, () => CliOutput.Properties(
            [
                ("domain key id", newId), ("check value", newKcv), ("previous", pinned), ("re-wrapped", $"{outcome.Rewrapped} (+{outcome.ResumedAfter} before)"),
                ("transcript", result.TranscriptPath), ("server", $"--Hsm:TokenLabel={restoreOptions.TokenLabel} --Hsm:DomainKeyId={newId} --Kms:DataDir={dir}"),
            ]));
            return ExitCodes.Ok;
        });
        return command;
    }

    // HMAC-SHA256 of the new domain key under the old one: binds a rotation record to the key its
    // first run chose, for whoever holds the old key (the custodians, through their shares).
    private static byte[] RotationKeyMac(byte[] oldKey, byte[] newKey)
    {
        var message = new byte[RotationMacLabel.Length + newKey.Length];
        try
        {
            RotationMacLabel.CopyTo(message, 0);
            newKey.CopyTo(message, RotationMacLabel.Length);
            return HMACSHA256.HashData(oldKey, message);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(message);
        }
    }

    private static bool RotationKeyMacMatches(string? recorded, byte[] oldKey, byte[] newKey)
    {
        if (recorded is not { Length: 64 } || !recorded.All(char.IsAsciiHexDigitLower))
        {
            return false;
        }

        return CryptographicOperations.FixedTimeEquals(Convert.FromHexString(recorded), RotationKeyMac(oldKey, newKey));
    }

    // Deletes a file this run wrote and is taking back; false if it is still there.
    private static bool TryDeleteFile(string path)
    {
        try
        {
            File.Delete(path);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static async Task AbandonQuietlyAsync(Kms.Storage.SqlStore store, string newCheckValue)
    {
        try
        {
            await store.AbandonUnstartedDomainKeyRotationAsync(newCheckValue, CancellationToken.None);
        }
        catch (Exception e) when (e is Kms.Core.Errors.KmsException or System.Data.Common.DbException)
        {
            // The original failure is what the operator must see; the record stays, and a new
            // first run replaces it (it moved nothing).
        }
    }

    private static readonly byte[] RotationMacLabel = "kms domain-key rotation: new key v1\0"u8.ToArray();
}
