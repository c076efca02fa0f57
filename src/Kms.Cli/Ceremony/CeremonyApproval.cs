using System.CommandLine;
using Kms.Cli.Infrastructure;
using Kms.Core.Errors;
using Kms.Core.Quorum;

namespace Kms.Cli.Ceremony;

/// <summary>
/// The officers' quorum over a domain-key ceremony (docs/ceremony.md, docs/quorum.md): the
/// ceremony takes the approval bundle <c>kms quorum export</c> wrote and verifies it OFFLINE,
/// before any share is read — the officer chain back to the pinned genesis, the rendering
/// recomputed here, M distinct signatures of the current set, the operation, the domain key,
/// the expiry.
/// </summary>
/// <remarks>
/// The approval is mandatory wherever officers are known: a genesis file in the data directory
/// (or given with <c>--genesis</c>), or an officer chain in its database. Without officers
/// (a deployment from before quorum existed) <c>--without-approval</c> says so explicitly.
/// Where no database holds the officer chain (a restore onto a fresh host) the genesis file is
/// authenticated by nothing on the host, so <c>--approval</c> also needs <c>--genesis-sha256</c>:
/// the hash the deployment pinned.
/// <c>restore-domain</c> also accepts <c>--without-approval</c> as a break-glass for disaster
/// recovery when no server is left to approve on; it is written in capitals in the transcript
/// and in the audit chain.
/// </remarks>
internal sealed class CeremonyApproval
{
    private CeremonyApproval(bool breakGlass)
    {
        BreakGlass = breakGlass;
        WithoutApproval = new Option<bool>("--without-approval")
        {
            Description = breakGlass
                ? "BREAK GLASS: restore without an officers' approval (disaster recovery with no server to approve on); recorded in capitals in the transcript and the audit log"
                : "rotate without an officers' approval: only for a deployment that pins no officers",
        };
    }

    public Option<string?> Approval { get; } = new("--approval")
    {
        Description = "the approval bundle of an APPROVED quorum request (kms quorum export), verified here before any share is read",
        HelpName = "FILE",
    };

    public Option<string?> Genesis { get; } = new("--genesis")
    {
        Description = "the genesis officer file to verify the approval against (default: DATA-DIR/quorum/genesis.json)",
        HelpName = "FILE",
    };

    public Option<string?> GenesisSha256 { get; } = new("--genesis-sha256")
    {
        Description = "the genesis hash from the create-domain transcript (Kms:Quorum:GenesisSha256); the genesis file must have it. Required with --approval where no deployment database holds the genesis (a fresh host)",
        HelpName = "HEX",
    };

    public Option<bool> WithoutApproval { get; }

    private bool BreakGlass { get; }

    /// <summary>The options of <c>rotate-domain</c>: <c>--without-approval</c> only where no officers are pinned.</summary>
    public static CeremonyApproval ForRotation() => new(breakGlass: false);

    /// <summary>The options of <c>restore-domain</c>: <c>--without-approval</c> is also the disaster-recovery break-glass.</summary>
    public static CeremonyApproval ForRestore() => new(breakGlass: true);

    public void AddTo(Command command)
    {
        command.Options.Add(Approval);
        command.Options.Add(Genesis);
        command.Options.Add(GenesisSha256);
        command.Options.Add(WithoutApproval);
    }

    /// <summary>
    /// Checks the files <c>--approval</c> and <c>--genesis</c> name (there, files, readable) without
    /// reading them: the ceremony calls this before any HSM or database step, so a wrong path
    /// stops it before it begins; <see cref="CheckAsync"/> reads them.
    /// </summary>
    public void CheckPaths(CliContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        if (ctx.ParseResult.GetValue(Approval) is { } bundle)
        {
            LocalPath.CheckReadable(ctx.Environment, bundle, "--approval");
        }

        if (ctx.ParseResult.GetValue(Genesis) is { } genesis)
        {
            LocalPath.CheckReadable(ctx.Environment, genesis, "--genesis");
        }
    }

    /// <summary>
    /// Verifies the approval for <paramref name="operation"/> on the domain key with check value
    /// <paramref name="domainKcv"/> (null: the bundle's own, which the caller then enforces on
    /// the rebuilt key); or checks that going without one is allowed.
    /// </summary>
    /// <param name="dataDir">The deployment's data directory (its genesis file), if any.</param>
    /// <param name="database">The deployment's database (its officer chain).</param>
    /// <param name="parameters">Checks the request's signed parameters against the command line; returns a problem or null.</param>
    public async Task<CeremonyApprovalOutcome> CheckAsync(
        CliContext ctx, QuorumOperation operation, string? dataDir, DeploymentDatabaseTarget database, string? domainKcv, Func<QuorumRequest, string?> parameters, CancellationToken ct)
    {
        var parse = ctx.ParseResult;
        var bundlePath = parse.GetValue(Approval);
        var without = parse.GetValue(WithoutApproval);
        if (bundlePath is not null && without)
        {
            throw new CliUsageException("give either --approval FILE or --without-approval, not both");
        }

        var genesisPath = parse.GetValue(Genesis) is { } given
            ? LocalPath.File(ctx.Environment, given, "--genesis")
            : dataDir is null ? null : Path.Combine(Path.GetFullPath(dataDir), "quorum", "genesis.json");
        var genesis = genesisPath is not null && (parse.GetValue(Genesis) is not null || File.Exists(genesisPath)) ? ReadGenesis(genesisPath, parse.GetValue(Genesis) is null ? null : "--genesis") : null;
        if (genesis is null && parse.GetValue(GenesisSha256) is not null)
        {
            throw new CliUsageException("--genesis-sha256 needs the genesis officer file it pins: give --genesis FILE (or a --data-dir holding quorum/genesis.json)");
        }

        if (genesis is not null && parse.GetValue(GenesisSha256) is { } pinned && !string.Equals(pinned, genesis.Hash, StringComparison.OrdinalIgnoreCase))
        {
            throw new CliFailureException(ExitCodes.DecryptionFailed, $"the genesis file {genesisPath} has hash {genesis.Hash}, not the pinned {pinned}");
        }

        var stored = await StoredChainAsync(database, ct);
        var (seen, recordPath) = ReadOfficerHead(dataDir);
        if (seen is not null && stored.Count > 0)
        {
            EnsureNotRolledBack(dataDir!, recordPath!, seen, stored);
        }
        if (genesis is not null && stored.Count > 0 && stored[0].Hash != genesis.Hash)
        {
            throw new CliFailureException(ExitCodes.DecryptionFailed,
                $"the genesis file {genesisPath} (hash {genesis.Hash}) is not the genesis the deployment's database holds (hash {stored[0].Hash})");
        }

        var operationName = QuorumOperations.NameOf(operation);
        if (bundlePath is null)
        {
            var officersKnown = genesis is not null || stored.Count > 0;
            if (!without)
            {
                throw new CliFailureException(ExitCodes.Conflict, officersKnown
                    ? $"this deployment has officers: the ceremony needs their approval. Ask for a {operationName} quorum request (kms quorum {(operation == QuorumOperation.RotateDomainKey ? "rotate-domain" : "restore-domain")}), have M officers approve it, export it (kms quorum export REQUEST --out FILE) and pass --approval FILE"
                    : $"no officer approval given: pass --approval FILE (with --genesis FILE), or --without-approval to go on without one (recorded in the transcript)");
            }

            if (officersKnown && !BreakGlass)
            {
                throw new CliFailureException(ExitCodes.Conflict, "this deployment has officers: a rotation needs their approval (--without-approval is only for deployments without officers)");
            }

            // A restore without approval is the break-glass wherever it runs: the first node of a
            // new site knows no officers, though the deployment it restores may well have them.
            var reason = officersKnown || BreakGlass
                ? "NONE — --without-approval (BREAK GLASS): the officers did not approve this ceremony"
                : "NONE — --without-approval: the deployment pins no officers";
            ctx.Output.Warn($"quorum approval: {reason}");
            return new CeremonyApprovalOutcome(null, genesis?.Hash, reason);
        }

        if (genesis is null)
        {
            throw new CliUsageException("--approval needs the genesis officer file to verify it against: give --genesis FILE (or a --data-dir holding quorum/genesis.json)");
        }

        // Without a database holding the deployment's genesis (a restore onto a fresh host), the
        // genesis file is the only root of the officer chain and nothing here vouches for it:
        // whoever can write the files this host reads could bring a genesis and a bundle of their
        // own, and the transcript would name their officers as the approval. The hash the
        // deployment pinned (the create-domain transcript; the server's Kms:Quorum:GenesisSha256)
        // is what authenticates it.
        var pinnedHash = parse.GetValue(GenesisSha256);
        if (stored.Count == 0 && pinnedHash is null)
        {
            throw new CliUsageException(
                $"no deployment database holds the genesis, so nothing here vouches for the genesis file {genesisPath}: give --genesis-sha256 HEX, "
                + "the genesis hash from the create-domain transcript (the server's Kms:Quorum:GenesisSha256)");
        }

        ApprovalBundle bundle;
        try
        {
            bundle = ApprovalBundle.Parse(await LocalPath.ReadAllTextAsync(ctx.Environment, bundlePath, "--approval", ct));
        }
        catch (KmsException e)
        {
            throw new CliFailureException(ExitCodes.InvalidArgument, $"{bundlePath}: {e.Message}");
        }

        // A host without the deployment's database (a fresh one, whose record was copied from a node
        // as docs/quorum.md says) checks the record against the bundle's chain instead: the record
        // vouches for the untimed approvals of the set it names, so the chain must hold that set.
        if (seen is not null && stored.Count == 0)
        {
            EnsureBundleHoldsRecordedSet(dataDir!, seen, bundle);
        }

        VerifiedApproval verified;
        try
        {
            // Approvals without a signed time (made before approvals were timed) count only in the
            // officer sets this data directory's server recorded as verified, which the loop below
            // checks the bundle's chain holds (the database's, which reaches the record).
            verified = bundle.Verify(genesis, operation, domainKcv ?? bundle.Request.DomainKcv, DateTimeOffset.UtcNow, seen?.Sequence ?? 0);
        }
        catch (KmsException e)
        {
            throw new CliFailureException(e.Code == KmsErrorCode.PermissionDenied ? ExitCodes.DecryptionFailed : ExitCodes.Conflict, e.Message);
        }

        // The bundle's chain must be the database's where both have a set, not a fork of it:
        // officers of a superseded set (or under a threshold since raised) could otherwise sign a
        // successor set of their own offline — valid from the genesis on — and approve with it.
        for (var i = 0; i < Math.Min(stored.Count, bundle.Chain.Count); i++)
        {
            if (stored[i].Hash != bundle.Chain[i].Hash)
            {
                throw new CliFailureException(ExitCodes.DecryptionFailed,
                    $"the approval of {verified.Request.Name} comes with an officer chain that is not the deployment database's: its officer set {i} has hash {bundle.Chain[i].Hash}, "
                    + $"the database's {stored[i].Hash}; create a new request, approved by the officers the database holds");
            }
        }

        // A bundle made before an officer change must not outvote the officers the database now holds.
        if (stored.Count > verified.OfficerSet.Sequence + 1)
        {
            throw new CliFailureException(ExitCodes.Conflict,
                $"the approval of {verified.Request.Name} was made for officer set {verified.OfficerSet.Sequence}, but the deployment's database holds officer set {stored.Count - 1}; create a new request");
        }

        if (parameters(verified.Request) is { } problem)
        {
            throw new CliFailureException(ExitCodes.Conflict, $"the approval of {verified.Request.Name} does not match this ceremony: {problem}");
        }

        var description = $"request {verified.Request.Name} ({operationName}), domain key {verified.Request.DomainKcv}, expires {QuorumRendering.Time(verified.Request.ExpireTime)}, "
            + $"officer set {verified.OfficerSet.Sequence} ({verified.OfficerSet.Hash}), {verified.Approvers.Count} of threshold {verified.OfficerSet.Threshold}, genesis {genesis.Hash} "
            + (stored.Count > 0 ? "(the deployment database's)" : "(pinned by --genesis-sha256)");
        ctx.Output.Note($"quorum approval verified: {description}");
        return new CeremonyApprovalOutcome(verified, genesis.Hash, description);
    }

    private static OfficerSet ReadGenesis(string path, string? flag)
    {
        try
        {
            return LocalPath.Read(path, GenesisFile.Read, flag);
        }
        catch (IOException e)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot read the genesis file {path}: {e.Message}");
        }
        catch (KmsException e)
        {
            throw new CliFailureException(ExitCodes.DecryptionFailed, $"{path}: {e.Message}");
        }
    }

    private static async Task<IReadOnlyList<OfficerSet>> StoredChainAsync(DeploymentDatabaseTarget database, CancellationToken ct)
    {
        await using var store = await database.OpenExistingAsync(ct);
        return store is null ? [] : await store.ListOfficerSetsAsync(ct);
    }

    // The server of this data directory records the newest officer set it verified
    // (quorum/officer-head, "SEQUENCE HASH"). Null when there is no such file.
    private static (OfficerHead? Seen, string? Path) ReadOfficerHead(string? dataDir)
    {
        var path = dataDir is null ? null : Path.Combine(Path.GetFullPath(dataDir), "quorum", "officer-head");
        if (path is null || !File.Exists(path))
        {
            return (null, path);
        }

        var seen = OfficerHead.Parse(File.ReadAllText(path))
            ?? throw new CliFailureException(ExitCodes.Conflict, $"{path} is not an officer head record (\"SEQUENCE HASH\")");
        return (seen, path);
    }

    // A database chain that no longer reaches the recorded set was rolled back, and an approval
    // made for the older set must not count (docs/quorum.md).
    private static void EnsureNotRolledBack(string dataDir, string path, OfficerHead seen, IReadOnlyList<OfficerSet> stored)
    {
        if (seen.Sequence >= stored.Count || stored[(int)seen.Sequence].Hash != seen.Hash)
        {
            throw new CliFailureException(ExitCodes.Conflict,
                $"the deployment's officer chain was rolled back: the server of {dataDir} verified officer set {seen.Sequence} ({seen.Hash}), which the database no longer holds; " +
                $"restore the officer sets, or remove {path} if the rollback is intended (docs/quorum.md)");
        }
    }

    // Without a database, the bundle's chain is the one judged against the record: it must hold
    // the recorded set (not a fork of it), and reach it (an approval made for an older set must
    // not outvote the officers the record names).
    private static void EnsureBundleHoldsRecordedSet(string dataDir, OfficerHead seen, ApprovalBundle bundle)
    {
        var name = bundle.Request.Name;
        if (seen.Sequence >= bundle.Chain.Count)
        {
            throw new CliFailureException(ExitCodes.Conflict,
                $"the approval of {name} was made for officer set {bundle.Chain.Count - 1}, but the server of {dataDir} verified officer set {seen.Sequence} ({seen.Hash}, quorum/officer-head); create a new request");
        }

        if (bundle.Chain[(int)seen.Sequence].Hash != seen.Hash)
        {
            throw new CliFailureException(ExitCodes.DecryptionFailed,
                $"the approval of {name} comes with an officer chain that is not the deployment's: its officer set {seen.Sequence} has hash {bundle.Chain[(int)seen.Sequence].Hash}, "
                + $"but the server of {dataDir} verified {seen.Hash} (quorum/officer-head); create a new request, approved by the deployment's officers");
        }
    }
}

/// <summary>What the ceremony records about its approval: the verified request (null: none) and a line for the transcript.</summary>
internal sealed record CeremonyApprovalOutcome(VerifiedApproval? Approval, string? GenesisHash, string Description)
{
    /// <summary>Adds the approval's lines to the transcript.</summary>
    public void AddTo(Transcript transcript)
    {
        transcript.Add("quorum approval", Description);
        foreach (var officer in Approval?.Approvers ?? [])
        {
            transcript.Add("approved by officer", $"{officer.Name}, key {officer.Fingerprint}");
        }
    }

    /// <summary>The audit resources of the approval: the request and each approving officer, or the absence of one.</summary>
    public IReadOnlyList<string> AuditResources() => Approval is { } verified
        ? [verified.Request.Name, .. verified.Approvers.Select(o => $"{verified.Request.Name}/approvals/{o.Fingerprint}")]
        : [Description.Contains("BREAK GLASS", StringComparison.Ordinal) ? "quorumRequests/none/break-glass" : "quorumRequests/none"];
}
