using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Kms.Core.Audit;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Writes the audit log: group commit (many requests' events in one durable transaction;
/// each caller waits until its event is durable), aggregation of refusal floods, signed
/// checkpoints with the HSM-held audit key, retention, and forwarding of written events
/// to subscribers (SIEM stream, security alerts).
/// </summary>
/// <remarks>
/// Keys: the checkpoint signing key is an ECDSA P-256 key generated in the HSM and stored
/// wrapped under the domain key; the context-hash key is derived in the HSM from an AES key
/// stored the same way, so the database alone does not let anyone test guesses of a
/// context value against its hash.
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "The housekeeping gate's wait handle is never asked for: nothing to dispose.")]
public sealed partial class AuditLog(IAuditStore store, IKeyStore settings, IHsm hsm, TimeProvider time, AuditOptions options, ILeaderLease? lease = null)
{
    private const string SigningKeySetting = "audit.signing-key.v1";
    private const string ContextKeySetting = "audit.context-key.v1";
    private const int ForwardPage = 1000;

    // The SIEM stream's restart points kept in memory (see ForwardedPoint), for a stream the host cannot read back.
    private const int MaxForwardedPoints = 1024;
    private static readonly KeyVersionId SigningKeyId = FixedId("kms audit signing key");
    private static readonly KeyVersionId ContextKeyId = FixedId("kms audit context key");

    private readonly Channel<Pending> _queue = Channel.CreateBounded<Pending>(new BoundedChannelOptions(65_536) { SingleReader = true });
    private readonly Dictionary<(string Principal, string Operation, string Outcome), RefusalWindow> _refusals = [];
    private readonly Lock _refusalLock = new();
    private KeyMaterialRef? _signingKey;
    private byte[]? _contextKey;
    private byte[]? _pageTokenKey;
    private AuditHead _lastCheckpoint = AuditChain.Empty;
    private DateTimeOffset _lastCheckpointTime;
    private long _forwarded = -1;
    private string _forwardedHash = AuditChain.Genesis; // the hash of event _forwarded, as the stream was sent it
    private AuditHead? _forwardedHead; // the last event forwarded (null: none yet since the start)
    private List<AuditHead> _forwardedPoints = []; // where the stream's content goes on after, oldest first (ForwardedPoint)
    private long _lastCommitFailureTicks; // UTC ticks; 0: none since the last success
    private int _failedCommits;
    private long _checkpointRefusedTicks; // UTC ticks; 0: checkpoints are signed
    private bool _streamBehind; // the last pass's forwarding ended at ForwardBudget, with events left
    private StreamSearch? _search; // a restart's search for where the stream goes on, under way across passes (SharedPointAsync)

    // One housekeeping pass at a time: the loop's, and a caller's (shutdown, tests).
    private readonly SemaphoreSlim _housekeeping = new(1, 1);

    /// <summary>
    /// How long one housekeeping pass forwards events to the SIEM stream (<see cref="EventsWritten"/>)
    /// at most: half the one-second pass interval. A stream still behind then is forwarded on by
    /// the next pass, which follows at once.
    /// </summary>
    public static readonly TimeSpan ForwardBudget = TimeSpan.FromMilliseconds(500);

    /// <summary>The audit signing key's public key (DER SubjectPublicKeyInfo).</summary>
    public byte[] PublicKey { get; private set; } = [];

    /// <summary>The signing key's fingerprint (<see cref="AuditChain.Fingerprint"/>).</summary>
    public string Fingerprint { get; private set; } = "";

    /// <summary>Called with each checkpoint after it is stored (the log stream and the checkpoint file).</summary>
    public event Action<AuditCheckpoint>? CheckpointWritten;

    /// <summary>Called with events after they are durable, in sequence order, whichever path wrote them.</summary>
    public event Action<IReadOnlyList<AuditEvent>>? EventsWritten;

    /// <summary>
    /// Called before the events of a restarted stream (<see cref="StreamRestart"/>): the database's
    /// chain no longer holds the last event <see cref="EventsWritten"/> was given. The host marks
    /// it in the stream; a handler that throws leaves the stream where it was, for the next pass.
    /// </summary>
    public event Action<StreamRestart>? StreamRestarted;

    /// <summary>
    /// What the SIEM stream holds, newest first (the host reads its file back; null: a stream
    /// that cannot be read back, stdout): where a stream whose last event the chain no longer holds
    /// restarts — after the first of these the chain still holds.
    /// </summary>
    public Func<IEnumerable<AuditHead>>? StreamHistory { get; set; }

    /// <summary>
    /// Set by the host when it could not tell at start where the SIEM stream goes on (its file's
    /// read-back waited in vain for another writer's lock): each housekeeping pass calls it before
    /// forwarding, and forwards nothing until it returns true. It reads the stream back again and
    /// calls <see cref="ForwardAfter"/> with the last event it holds (none for an empty stream: it
    /// goes on after the head at start), or returns false while the stream still cannot be read back.
    /// Before, the stream went on from the head at start, and the events between the stream's last
    /// and that head were never forwarded.
    /// </summary>
    public Func<CancellationToken, bool>? StreamReadBack { get; set; }

    /// <summary>Called when a housekeeping pass (refusal windows, forwarding, checkpoint) failed; it is retried.</summary>
    public event Action<Exception>? HousekeepingFailed;

    /// <summary>
    /// Called at the end of every housekeeping pass that was not cancelled, after its failures (if
    /// any) were reported through <see cref="HousekeepingFailed"/>: a kind of failure not reported
    /// since the previous pass has stopped.
    /// </summary>
    public event Action? HousekeepingPassEnded;

    /// <summary>
    /// Called for each checkpoint row a retention pass passed over as no place to cut: its sequence
    /// and why (the audit key did not sign it as a checkpoint, or signed another head than the
    /// chain's event there). A row a database writer inserted; the pass cuts at the newest row that
    /// is one of the chain's checkpoints instead, and after <see cref="MaxCheckpointRowsPassedOver"/>
    /// of them, nowhere.
    /// </summary>
    public event Action<long, string>? RetentionPassedOver;

    /// <summary>
    /// Called for a checkpoint row a database writer put where this node's checkpoints go: its
    /// sequence and what was done. Either the head where no event is stored (retention cut the
    /// whole log) came from a row the audit key did not sign as this chain's, and no checkpoint is
    /// signed over it (the call fails UNAVAILABLE); or the row stored at the sequence of a
    /// checkpoint this node signed was another, and was replaced with the signed one. Logged by the
    /// server as event 1331.
    /// </summary>
    public event Action<long, string>? CheckpointRowRefused;

    /// <summary>
    /// Called when an append — the group commit's batch, a mutation's own event — was refused
    /// <c>UNAVAILABLE</c>, nothing written: no event is stored, and the chain's head would be the
    /// checkpoint row at this sequence, which the audit key did not sign as a checkpoint of that head
    /// (a database writer's row; <see cref="IAuditStore.RequireSignedCheckpointHead"/>). Logged by
    /// the server as event 1340. Called for each refused append; the server logs a row once a run.
    /// </summary>
    public event Action<long>? AppendRefused;

    /// <summary>
    /// How many checkpoint rows one retention pass passes over (<see cref="RetentionPassedOver"/>)
    /// before it stops, cutting nothing: each costs a signature check and a log line. The next pass
    /// goes on where it stopped, so rows a database writer planted slow retention down, a hundred
    /// rows a pass, but never stop it.
    /// </summary>
    public const int MaxCheckpointRowsPassedOver = 100;

    /// <summary>
    /// Called when a retention cut deleted checkpoint rows below it that are not the audit key's
    /// checkpoints (rows passed over as no place to cut, <see cref="RetentionPassedOver"/>, or any
    /// other the key did not sign): the cut's sequence and theirs, ascending. They stood over events
    /// the cut deleted, so they go with them; the audit key's own checkpoints below the cut are
    /// covered by the signed record of the cut and not reported. Logged by the server as event 1344.
    /// </summary>
    public event Action<long, IReadOnlyList<long>>? RetentionRowsDeleted;

    /// <summary>Called after each group commit with its size and the oldest event's wait.</summary>
    public event Action<int, TimeSpan>? BatchWritten;

    /// <summary>Loads the audit keys, creating them in the HSM on first start.</summary>
    public async Task InitializeAsync(CancellationToken cancellationToken)
    {
        if (await settings.GetSettingAsync(SigningKeySetting, cancellationToken) is not { } signing)
        {
            var pair = await hsm.GenerateEcKeyPairAsync(EcCurve.P256, cancellationToken);
            signing = await settings.SetSettingIfAbsentAsync(SigningKeySetting, JsonSerializer.Serialize(new StoredKeyPair(
                Convert.ToBase64String(pair.PrivateKey.Bytes.Span), Convert.ToBase64String(pair.SubjectPublicKeyInfo))), cancellationToken);
        }

        var stored = JsonSerializer.Deserialize<StoredKeyPair>(signing) ?? throw KmsErrors.Internal("the audit signing key setting is unreadable");
        _signingKey = new KeyMaterialRef(SigningKeyId, new WrappedKeyMaterial(Convert.FromBase64String(stored.Wrapped)));
        PublicKey = Convert.FromBase64String(stored.PublicKey);
        Fingerprint = AuditChain.Fingerprint(PublicKey);

        // The public key is only a database row: prove the HSM-held private key matches it, so a
        // database writer cannot get another key published (and then forge checkpoints).
        var probe = SHA256.HashData(Encoding.UTF8.GetBytes("kms audit signing key probe " + Fingerprint));
        byte[] signature;
        try
        {
            signature = await hsm.SignEcdsaAsync(_signingKey, EcCurve.P256, probe, cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.Internal)
        {
            // Also the one proof at start that the domain key is the database's: its 3-byte check
            // value matched the pin, but a key of someone else's can be made to match it.
            throw KmsErrors.FailedPrecondition(
                $"the audit signing key stored in this database does not open under the HSM's domain key ({e.Message}), although the check values match: the token's domain key is not the one this database was created under (a check value can be forged), or the stored key is damaged; refusing to start");
        }

        using (var verifier = ECDsa.Create())
        {
            verifier.ImportSubjectPublicKeyInfo(PublicKey, out _);
            if (!verifier.VerifyHash(probe, signature))
            {
                throw KmsErrors.FailedPrecondition("the audit signing key's stored public key does not match its private key in the HSM; refusing to start");
            }
        }

        // The key proven: from now on no append chains onto a head no event has unless the key
        // signed it (a database writer's checkpoint row in a log with no event: AppendRefused).
        store.RequireSignedCheckpointHead(ChainableCheckpoint);

        if (await settings.GetSettingAsync(ContextKeySetting, cancellationToken) is not { } context)
        {
            var wrapped = await hsm.GenerateAes256KeyAsync(cancellationToken);
            context = await settings.SetSettingIfAbsentAsync(ContextKeySetting, Convert.ToBase64String(wrapped.Bytes.Span), cancellationToken);
        }

        // AES-GCM of 32 zero bytes under a fixed IV, computed once per start: AES used as a PRF
        // (the same input always, so the fixed IV encrypts nothing else). The key never leaves the HSM.
        var derived = await hsm.EncryptAesGcmAsync(
            new KeyMaterialRef(ContextKeyId, new WrappedKeyMaterial(Convert.FromBase64String(context))),
            new byte[12],
            Encoding.UTF8.GetBytes("kms audit context hmac v1"),
            new byte[32],
            cancellationToken);
        _contextKey = derived[..32];
        CryptographicOperations.ZeroMemory(derived);
        // Not HMAC(context key, a text): that is HashContextValue of the text, which any caller
        // can have written into the audit log as the hash of an encryption-context value. A
        // leading 0xFF is never in UTF-8, so no context value's hash is this key.
        _pageTokenKey = HMACSHA256.HashData(_contextKey, (byte[])[0xFF, .. "kms audit page token v1"u8]);

        var latest = await NewestSignedCheckpointAsync(0, cancellationToken);
        _lastCheckpoint = latest is null ? AuditChain.Empty : new AuditHead(latest.Sequence, latest.HeadHash);
        _lastCheckpointTime = latest is null ? time.GetUtcNow() : Earlier(latest.Time, time.GetUtcNow());
        var head = await store.GetAuditHeadAsync(cancellationToken);
        (_forwarded, _forwardedHash, _forwardedPoints) = (head.Sequence, head.Hash, [head]);
    }

    /// <summary>
    /// Forwards the events after <paramref name="streamed"/> (the last event a SIEM stream already
    /// holds, its sequence and hash, read back by the host) instead of only those written from now
    /// on: events committed before a crash, or while the stream could not be written, are not
    /// skipped. Where the chain no longer holds that event (a database rolled back behind it, or
    /// rewritten there), the stream restarts (<see cref="StreamRestarted"/>): after the newest event
    /// of <see cref="StreamHistory"/> the chain holds. Sequence 0 is the chain's start, whatever its hash.
    /// </summary>
    public void ForwardAfter(AuditHead streamed)
    {
        if (_forwarded >= 0 && streamed.Sequence >= 0)
        {
            (_forwarded, _forwardedHash, _forwardedPoints) = (streamed.Sequence, streamed.Hash, [streamed]);
        }
    }

    /// <summary>
    /// The SIEM stream's position: the last event it was sent, or, before any was since the start,
    /// the event it goes on after (the chain's head at the start, or <see cref="ForwardAfter"/>'s).
    /// Read by the host at start and in its handlers (which run in the housekeeping pass).
    /// </summary>
    public AuditHead StreamPosition => new(_forwarded, _forwardedHash);

    /// <summary>
    /// <see cref="ForwardAfter"/> <paramref name="streamed"/> if the database's chain passes through
    /// it (the event at its sequence has that hash, the next one links to it, or retention cut past
    /// it, its record of the cut signed; sequence 0 with the chain's genesis hash: the start); else
    /// nothing changes (the stream goes on from the head) and this returns false. For a position
    /// kept outside the stream (a stream the host cannot read back, <c>stream-position.json</c>): one
    /// the chain does not hold (a rollback, another database) is not a place to go on from, and
    /// restarting from it would send the whole chain again after a restart line naming an event the
    /// stream may not end with.
    /// </summary>
    public Task<bool> ForwardAfterIfHeldAsync(AuditHead streamed, CancellationToken cancellationToken) =>
        ForwardAfterIfHeldAsync(streamed, [], cancellationToken);

    /// <summary>
    /// <see cref="ForwardAfterIfHeldAsync(AuditHead, CancellationToken)"/>, and when it is held, the
    /// stream's restart points (where a rollback under the running node restarts it, for a stream
    /// the host cannot read back) begin with <paramref name="earlier"/> — the events the stream holds
    /// before <paramref name="streamed"/>, in any order, as its position record lists them — not with
    /// <paramref name="streamed"/> alone. Before, a rollback behind <paramref name="streamed"/> under
    /// the running node found no point older than what this run sent, and the stream was sent again
    /// from the chain's start.
    /// </summary>
    public async Task<bool> ForwardAfterIfHeldAsync(AuditHead streamed, IEnumerable<AuditHead> earlier, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(earlier);
        var held = streamed.Sequence == 0
            ? streamed.Hash == AuditChain.Genesis
            : streamed.Sequence > 0 && (await ChainHoldsAsync(store, streamed, cancellationToken) || await PrunedByRetentionAsync(streamed.Sequence, cancellationToken));
        if (held)
        {
            ForwardAfter(streamed);
            if (_forwarded >= 0)
            {
                // Oldest first, as ForwardedPoint keeps them; the stream's lineage, so a chain that
                // holds one holds those before it (or retention cut them: the search stops there).
                _forwardedPoints = [.. earlier.Where(p => p.Sequence > 0 && p.Sequence < streamed.Sequence).DistinctBy(p => p.Sequence).OrderBy(p => p.Sequence).TakeLast(MaxForwardedPoints - 1), streamed];
            }
        }

        return held;
    }

    /// <summary>
    /// For a position kept outside the stream whose last event the database's chain does not hold
    /// (<see cref="ForwardAfterIfHeldAsync(AuditHead, CancellationToken)"/> returned false: the database went back behind
    /// <paramref name="streamed"/> while the node was stopped, or was rewritten there): the newest of
    /// <paramref name="earlier"/> (events the stream holds before <paramref name="streamed"/>, in any
    /// order) that the chain holds, hash for hash, as <see cref="ChainHoldsAsync"/> checks it. When one
    /// is, the stream restarts after it at the next forwarding, as it does under a running node
    /// (<see cref="StreamRestarted"/>, replacing <paramref name="streamed"/>: chains that agree at an
    /// event agree before it), and it is returned. When retention cut past the next older one
    /// before one held is found (those newer not held: the chain went back behind them; the rest
    /// deleted, so nothing older can be checked), the stream restarts as a running node's does when
    /// its search reaches the cut (<see cref="SharedPointAsync"/>): after the last event cut (the one
    /// before the oldest the chain retains), which is returned — an event not among
    /// <paramref name="earlier"/> — and every event the chain retains follows the restart line.
    /// Before, the stream then began at the chain's head, and the new chain's events were never
    /// sent. Else (none held and none cut: the chain rewritten from before the oldest listed, or none
    /// listed; or retention cut past <paramref name="streamed"/> itself, without the record of that
    /// cut <see cref="ForwardAfterIfHeldAsync(AuditHead, CancellationToken)"/> takes) nothing changes
    /// (the stream goes on from the head) and this returns null. Sequence 0 is not taken (a stream
    /// that started on a written chain does not hold the chain's start).
    /// </summary>
    public async Task<AuditHead?> RestartAfterHeldAsync(AuditHead streamed, IEnumerable<AuditHead> earlier, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(earlier);
        if (_forwarded < 0)
        {
            return null;
        }

        var oldest = await OldestRetainedAsync(cancellationToken);
        foreach (var point in earlier.Where(p => p.Sequence > 0 && p.Sequence < streamed.Sequence).OrderByDescending(p => p.Sequence))
        {
            if (point.Sequence < oldest.Sequence)
            {
                // Retention cut past it, and past every older one: nothing older can be checked, and
                // a running node's search restarts after the last event cut (SharedPointAsync). Not
                // when the cut passed the replaced event too: the first pass could not tell the
                // chain does not hold it, and would go on from the oldest retained with no restart line.
                return streamed.Sequence >= oldest.Sequence ? RestartAfter(oldest) : null;
            }

            if (await ChainHoldsAsync(store, point, cancellationToken))
            {
                return RestartAfter(point);
            }
        }

        return null;

        AuditHead RestartAfter(AuditHead point)
        {
            // The position stays the replaced event: the first pass finds the chain does not hold
            // it and restarts after the one point it has, marked (the host's restart line).
            (_forwarded, _forwardedHash, _forwardedPoints) = (streamed.Sequence, streamed.Hash, [point]);
            return point;
        }
    }

    // The event before the oldest the chain retains (after a retention cut: the last event cut,
    // its hash as the oldest retained links to it; else the chain's start), or the head of a chain
    // that holds none: where a stream restarts when no event it holds is held.
    private async Task<AuditHead> OldestRetainedAsync(CancellationToken cancellationToken) =>
        await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, cancellationToken) is [var first]
            ? new AuditHead(first.Sequence - 1, first.PreviousHash)
            : await store.GetAuditHeadAsync(cancellationToken);

    /// <summary>The keyed hash of an encryption-context value (HMAC-SHA256, hex), so equal values can be correlated without being revealed.</summary>
    public string HashContextValue(string value)
    {
        var key = _contextKey ?? throw new InvalidOperationException("the audit log is not initialised");
        return Convert.ToHexStringLower(HMACSHA256.HashData(key, Encoding.UTF8.GetBytes(value)));
    }

    /// <summary>
    /// The tag (HMAC-SHA256) that binds a page token to the RPC, caller, filter and position it was
    /// issued for (the List RPCs', ListAuditEvents' among them: ListPageTokens in the server). Its key is derived from the context-hash key (so every node of the
    /// deployment has the same one, and it survives restarts and domain-key rotations), and is
    /// used for nothing else.
    /// </summary>
    public byte[] PageTokenTag(ReadOnlySpan<byte> data)
    {
        var key = _pageTokenKey ?? throw new InvalidOperationException("the audit log is not initialised");
        return HMACSHA256.HashData(key, data);
    }

    /// <summary>
    /// When the latest group commit failed, if no commit has succeeded since: every call waiting
    /// for it was answered UNAVAILABLE (a database that reads but cannot write — a full disk, a
    /// standby after a failover — fails only here). Null once a commit succeeds.
    /// </summary>
    public DateTimeOffset? LastCommitFailure => Volatile.Read(ref _lastCommitFailureTicks) is var ticks and not 0 ? new DateTimeOffset(ticks, TimeSpan.Zero) : null;

    /// <summary>Group commits that failed in a row (0 once one succeeds).</summary>
    public int FailedCommitsInARow => Volatile.Read(ref _failedCommits);

    /// <summary>
    /// Since when a checkpoint is refused because the database's chain no longer passes through
    /// the last checkpoint this process signed or read (from the database or, at start, from the
    /// node's own record), or through the audit head this node recorded (<c>head.json</c>,
    /// <see cref="ReadOwnHeadAsync"/>), at start or while it runs; null while checkpoints are signed. Cleared
    /// when one is signed again, and the latter also when the chain passes through the record again.
    /// </summary>
    public DateTimeOffset? CheckpointRefusedSince
    {
        get
        {
            var (chain, record) = (Volatile.Read(ref _checkpointRefusedTicks), Volatile.Read(ref _headRecordRefusedTicks));
            var ticks = chain == 0 ? record : record == 0 ? chain : Math.Min(chain, record);
            return ticks == 0 ? null : new DateTimeOffset(ticks, TimeSpan.Zero);
        }
    }

    /// <summary>Appends one event; returns once it is durable.</summary>
    /// <exception cref="KmsException">Unavailable when the audit store cannot write it: the request must not be answered.</exception>
    public async Task AppendAsync(AuditEntry entry, CancellationToken cancellationToken)
    {
        var pending = new Pending(entry, time.GetTimestamp());
        try
        {
            await _queue.Writer.WriteAsync(pending, cancellationToken);
        }
        catch (ChannelClosedException)
        {
            throw KmsErrors.Unavailable("the server is stopping; the request was not answered");
        }

        await pending.Done.Task.WaitAsync(cancellationToken);
    }

    /// <summary>
    /// A refused request: the first of its (principal, operation, outcome) in a window is
    /// appended like any event (durable before the answer); the rest of the window are counted
    /// and written as one event with the count when the window closes.
    /// </summary>
    public Task RefusedAsync(AuditEntry entry, CancellationToken cancellationToken)
    {
        (string Principal, string Operation, string Outcome) key = (entry.Principal == "anonymous" ? "anonymous@" + AuditEntry.AddressOf(entry.Client) : entry.Principal, entry.Operation, entry.Outcome);
        lock (_refusalLock)
        {
            if (!_refusals.TryGetValue(key, out var window) && _refusals.Count >= options.MaxRefusalWindows)
            {
                key = ("overflow", "*", "*");
                _refusals.TryGetValue(key, out window);
            }

            if (window is not null)
            {
                window.Add(entry);
                return Task.CompletedTask;
            }

            _refusals[key] = new RefusalWindow(entry.Time + options.RefusalWindow, key.Principal == "overflow" ? entry with { Principal = "overflow", Operation = "*", Outcome = "*", Resource = null, Tenant = null, Client = null, Context = [] } : entry);
        }

        return AppendAsync(entry, cancellationToken);
    }

    /// <summary>
    /// The group-commit loop; runs until cancelled. Beside it, once a second, housekeeping: closes
    /// refusal windows, forwards events, signs due checkpoints.
    /// </summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var batch = new List<Pending>(options.MaxBatch);
        // Housekeeping stops with the loop, whatever ended it.
        using var loopEnded = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var housekeeping = HousekeepingLoopAsync(loopEnded.Token);
        try
        {
            await LoopAsync(batch, cancellationToken);
        }
        finally
        {
            await loopEnded.CancelAsync();
            // Stopped (or failed): nobody will write what is still queued, so its callers get UNAVAILABLE.
            _queue.Writer.TryComplete();
            foreach (var pending in batch)
            {
                pending.Done.TrySetException(KmsErrors.Unavailable("the server is stopping; the request was not answered"));
            }

            while (_queue.Reader.TryRead(out var left))
            {
                left.Done.TrySetException(KmsErrors.Unavailable("the server is stopping; the request was not answered"));
            }

            await housekeeping;
        }
    }

    private async Task LoopAsync(List<Pending> batch, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            // Idle: wait for an event. Under load events are already queued, and the wait is skipped.
            if (!_queue.Reader.TryPeek(out _))
            {
                try
                {
                    await _queue.Reader.WaitToReadAsync(cancellationToken);
                }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                {
                    return;
                }
            }

            // Let the calls that are about to append (continuations already scheduled) join this batch.
            await Task.Yield();
            while (batch.Count < options.MaxBatch && _queue.Reader.TryRead(out var next))
            {
                batch.Add(next);
            }

            if (batch.Count > 0)
            {
                await CommitAsync(batch, cancellationToken);
                batch.Clear();
            }
        }
    }

    // Not in the commit loop: a pass reads the head, may sign a checkpoint in the HSM and write it,
    // and forwards events — 0.6–17 ms measured, during which no batch would commit and every
    // waiting call would wait (a stalled HSM or disk: indefinitely). The store serialises the
    // writes (the audit writer's transaction reads the chain head itself), so passes and batches
    // can interleave.
    // The first pass at once (as the loop did): a node takes the checkpoint lease and forwards its
    // backlog when it starts, then once a second (at once while the stream is still behind).
    private async Task HousekeepingLoopAsync(CancellationToken cancellationToken)
    {
        await Task.Yield(); // the commit loop starts without waiting for the first pass
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                await RunHousekeepingAsync(cancellationToken);

                // A stream still behind (its pass spent ForwardBudget) goes on at once, the pass's
                // other work done on the way: waiting a second between such passes capped the
                // stream at what a pass forwards, below a sustained load.
                if (Volatile.Read(ref _streamBehind))
                {
                    await Task.Yield();
                }
                else
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), time, cancellationToken);
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
        }
    }

    /// <summary>Closes due refusal windows, forwards new events, summarises the blocks written (on the leader), signs a checkpoint if due. Failures wait for the next tick.</summary>
    public Task RunHousekeepingAsync(CancellationToken cancellationToken) => RunHousekeepingAsync(forwardUntil: null, cancellationToken);

    /// <summary>
    /// The last housekeeping pass, at stop: as <see cref="RunHousekeepingAsync(CancellationToken)"/>,
    /// but it forwards until the SIEM stream has the head or <paramref name="forwardUntil"/> is
    /// cancelled (checked between pages), not for <see cref="ForwardBudget"/> only: a stream far
    /// behind at the stop is not left so until the next start (which forwards the rest, from the
    /// database). The rest of the pass then runs on <paramref name="cancellationToken"/>.
    /// </summary>
    public Task RunFinalHousekeepingAsync(CancellationToken forwardUntil, CancellationToken cancellationToken) =>
        RunHousekeepingAsync((CancellationToken?)forwardUntil, cancellationToken);

    private async Task RunHousekeepingAsync(CancellationToken? forwardUntil, CancellationToken cancellationToken)
    {
        try
        {
            await _housekeeping.WaitAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        try
        {
            try
            {
                await FlushRefusalsAsync(force: false, cancellationToken);
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                // A summary that cannot be written must not stop the stream and the checkpoints.
                HousekeepingFailed?.Invoke(e);
            }

            // The head this node sees, read before forwarding (which then reaches it) and recorded
            // once forwarded, on every node, leader or not (ReadOwnHeadAsync).
            AuditHead? seen = null;
            if (_headRecord is not null)
            {
                try
                {
                    seen = await store.GetAuditHeadAsync(cancellationToken);
                }
                catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
                {
                    HousekeepingFailed?.Invoke(e);
                }
            }

            try
            {
                await ForwardAsync(forwardUntil, cancellationToken);
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                // Nor may a stream that cannot be written (a full disk under the SIEM file): the
                // checkpoints are what keeps the unsigned tail short. It is forwarded again next time.
                HousekeepingFailed?.Invoke(e);
            }

            try
            {
                await RecordHeadAsync(seen, atStop: false, cancellationToken);
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                // Nor a record that cannot be written: the one before it stands (older: never a false refusal).
                HousekeepingFailed?.Invoke(e);
            }

            // Checkpoints are the leader's (several nodes share one chain); the latest may be another node's.
            // A node that refuses to sign them (by its own record: the checks above, or its last
            // attempt) leaves the lease to a node that does not. Before, a refusing leader kept it,
            // and no node of the deployment signed a checkpoint for one node's record.
            if (lease is not null && !await lease.HoldAsync(standAside: CheckpointRefusedSince is not null, cancellationToken))
            {
                return;
            }

            try
            {
                // The time summary of the blocks written since the last pass (AuditPages): the
                // leader's too, though a block two nodes summarise is stored once either way.
                await store.SummariseAuditBlocksAsync(Math.Max(1, options.SummaryBlockEvents), Math.Max(1, options.SummaryBlocksPerPass), cancellationToken);
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                // Listings with a time range walk the unsummarised blocks meanwhile; the checkpoint is signed all the same.
                HousekeepingFailed?.Invoke(e);
            }

            // While the chain does not pass through the head this node recorded (the record check
            // above refused, and reported it), CheckpointAsync would refuse for the same reason:
            // one report a pass, so the reminders' counts are passes.
            if (Volatile.Read(ref _headRecordRefusedTicks) != 0)
            {
                return;
            }

            await AdoptLatestCheckpointAsync(cancellationToken);
            var head = await store.GetAuditHeadAsync(cancellationToken);
            if (head.Sequence > _lastCheckpoint.Sequence
                && (head.Sequence - _lastCheckpoint.Sequence >= options.CheckpointEveryEvents || time.GetUtcNow() - _lastCheckpointTime >= options.CheckpointInterval))
            {
                await CheckpointAsync(cancellationToken);
            }
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            // Housekeeping must never stop the group commit: report and retry at the next tick.
            HousekeepingFailed?.Invoke(e);
        }
        finally
        {
            try
            {
                // Also after a pass that left the checkpoint to the leader: what it did try worked.
                if (!cancellationToken.IsCancellationRequested)
                {
                    HousekeepingPassEnded?.Invoke();
                }
            }
            finally
            {
                _housekeeping.Release();
            }
        }
    }

    /// <summary>Writes every open refusal window's count now (shutdown, tests); returns once they are written.</summary>
    public async Task FlushRefusalsAsync(CancellationToken cancellationToken)
    {
        // After a housekeeping pass under way: it may have taken windows that closed and not yet
        // written them, and a caller that counts the events once this returns must find them.
        await _housekeeping.WaitAsync(cancellationToken);
        try
        {
            await FlushRefusalsAsync(force: true, cancellationToken);
        }
        finally
        {
            _housekeeping.Release();
        }
    }

    /// <summary>Signs a checkpoint of the current head (if there is anything new since the last one).</summary>
    public async Task<AuditCheckpoint?> CheckpointAsync(CancellationToken cancellationToken)
    {
        // Another node's checkpoint first (a signed one only), then the head: that node's retention
        // may have cut the chain past the last checkpoint this process knew, which would otherwise
        // look like a rewrite.
        await AdoptLatestCheckpointAsync(cancellationToken);
        var (head, fromCheckpointRow) = await store.GetAuditHeadSourceAsync(cancellationToken);
        if (head.Sequence == 0 || (head.Sequence == _lastCheckpoint.Sequence && !_heldAtOwnRecord))
        {
            return null;
        }

        if (fromCheckpointRow)
        {
            await ThrowUnlessTheCheckpointRowHeadIsSignedAsync(head, cancellationToken);
        }

        try
        {
            await ThrowUnlessTheChainPassesThroughAsync(_lastCheckpoint, head, cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
        {
            RefuseCheckpoints();
            throw;
        }

        // Nor over a chain that went back behind the head this node recorded (head.json) since
        // its last checkpoint: that refusal counts on its own, and ends when the chain passes
        // through the record again.
        await ThrowUnlessTheChainPassesThroughTheRecordAsync(head, cancellationToken);

        var now = Clock.Now(time);
        var body = AuditChain.CheckpointBody(head.Sequence, head.Hash, now, Fingerprint);
        var signature = await hsm.SignEcdsaAsync(_signingKey ?? throw new InvalidOperationException("the audit log is not initialised"), EcCurve.P256, AuditChain.CheckpointDigest(body), cancellationToken);
        var checkpoint = new AuditCheckpoint(head.Sequence, head.Hash, now, Fingerprint, body, signature);
        if (await store.AddAuditCheckpointAsync(checkpoint, cancellationToken) is { } replaced
            && !(SignedHead(replaced) is { } other && other == head))
        {
            // Not another node's checkpoint of the same head: a row a database writer inserted
            // ahead of the chain, which (before) kept this one out of the database for good.
            CheckpointRowRefused?.Invoke(head.Sequence, "the row stored at the sequence of the checkpoint this node signed was not it (one the audit key did not sign as a checkpoint of this head, inserted ahead of the chain); it was replaced with the signed checkpoint");
        }

        _lastCheckpoint = head;
        _lastCheckpointTime = now;
        Volatile.Write(ref _checkpointRefusedTicks, 0);

        // A hold on the node's own checkpoint (checkpoints.jsonl) ends as the head record's does
        // when the chain passes through it again: signed over it just now. Before, the hold stayed
        // set for the rest of the run: every later call signed the same head again (each
        // GetAuditCheckpoint or export another checkpoints.jsonl line and 1302), and another
        // node's later checkpoint was never adopted.
        _heldAtOwnRecord = false;
        CheckpointWritten?.Invoke(checkpoint);
        return checkpoint;
    }

    // The store takes the head from the last event; only where none is stored (retention cut the
    // whole log) from the newest checkpoint row, which a database writer without the HSM could
    // have inserted. Such a head is signed over only if that row is a checkpoint the audit key
    // signed, of that head: else UNAVAILABLE and CheckpointRowRefused (event 1331). The store's
    // head read says which it is (AuditHeadSource): a head that is an event's costs no statement
    // here. Before, every checkpoint listed the event at the head's sequence to find out.
    private async Task ThrowUnlessTheCheckpointRowHeadIsSignedAsync(AuditHead head, CancellationToken cancellationToken)
    {
        if (await store.FindAuditCheckpointAtOrBeforeAsync(head.Sequence, cancellationToken) is { } row && row.Sequence == head.Sequence
            && SignedHead(row) is { } signed && signed == head)
        {
            return;
        }

        CheckpointRowRefused?.Invoke(head.Sequence, "no event is stored and the newest checkpoint row, the chain's head, is not one the audit key signed as a checkpoint of that head; no checkpoint is signed over it");
        throw KmsErrors.Unavailable(
            $"audit: the chain's head {head.Sequence} is no event's and the checkpoint row there is not one the audit key signed; no checkpoint signed (a database writer's row: compare the database with the checkpoints kept off the host)");
    }

    // The database's newest checkpoint, when newer than the last this process signed or read and
    // signed by the audit key: another node's (several nodes share one chain), whose retention
    // may since have deleted the events through it.
    private async Task AdoptLatestCheckpointAsync(CancellationToken cancellationToken)
    {
        // While the chain is refused for not passing through this node's own record, no later row
        // is taken instead: a node restarted without its file could have signed the rewrite.
        if (!_heldAtOwnRecord && await NewestSignedCheckpointAsync(_lastCheckpoint.Sequence, cancellationToken) is { } latest)
        {
            _lastCheckpoint = new AuditHead(latest.Sequence, latest.HeadHash);
            _lastCheckpointTime = Earlier(latest.Time, time.GetUtcNow());
        }
    }

    /// <summary>
    /// The newest stored checkpoint the audit key signed (<c>GetAuditCheckpoint</c>'s answer when
    /// there is nothing new to sign), or null: rows it did not sign — a database writer's — are
    /// passed over, at most <see cref="MaxCheckpointRowsPassedOver"/> of them.
    /// </summary>
    public Task<AuditCheckpoint?> LatestSignedCheckpointAsync(CancellationToken cancellationToken) => NewestSignedCheckpointAsync(0, cancellationToken);

    // The newest checkpoint row above `above` the audit key signed (SignedHead), rows it did not
    // passed over: before, only the newest row was looked at, so a row a database writer inserted
    // above the others hid every checkpoint below it (the start took none, another node's later
    // checkpoint was not adopted, GetAuditCheckpoint answered the writer's row).
    private async Task<AuditCheckpoint?> NewestSignedCheckpointAsync(long above, CancellationToken cancellationToken)
    {
        var row = await store.GetLatestAuditCheckpointAsync(cancellationToken);
        for (var passedOver = 0; row is not null && row.Sequence > above; passedOver++)
        {
            if (SignedHead(row) is not null)
            {
                return row;
            }

            if (passedOver == MaxCheckpointRowsPassedOver)
            {
                return null;
            }

            row = await store.FindAuditCheckpointAtOrBeforeAsync(row.Sequence - 1, cancellationToken);
        }

        return null;
    }

    /// <summary>
    /// Refuses to sign <paramref name="head"/> unless the chain in the database still passes
    /// through <paramref name="last"/>, the last checkpoint this process signed or read (and
    /// checked): whoever can write the database could otherwise remove or rewrite signed events,
    /// delete the checkpoints that signed them, and have this server sign the result — after
    /// which a verifier without a checkpoint kept off the host finds nothing wrong.
    /// </summary>
    /// <remarks>
    /// The event at <paramref name="last"/>'s sequence is hashed from its body (the hash column
    /// is the database's word only); after a retention cut through it, the next event's link must
    /// name it. What lies after it is the unsigned tail (docs/audit-format.md, SECURITY.md).
    /// </remarks>
    private async Task ThrowUnlessTheChainPassesThroughAsync(AuditHead last, AuditHead head, CancellationToken cancellationToken)
    {
        if (last.Sequence == 0)
        {
            return;
        }

        if (head.Sequence < last.Sequence || !await ChainHoldsAsync(store, last, cancellationToken))
        {
            throw KmsErrors.FailedPrecondition(
                $"the audit chain in the database (head {head.Sequence}) no longer passes through checkpoint {last.Sequence} ({last.Hash}), the last this server signed or read: "
                + "signed events were removed or rewritten, and the checkpoints after them deleted; refusing to sign a checkpoint over it. Compare the database with the checkpoints kept off the host"
                + OwnRecordAdvice(last));
        }
    }

    /// <summary>
    /// Whether the chain in <paramref name="store"/> passes through <paramref name="checkpoint"/>:
    /// the event at its sequence hashes, from its body, to its head (the hash column is the
    /// database's word only), or, after a retention cut through it, the next event's link names
    /// it. The one test of the server's refusal, a ceremony's, and the restore's and
    /// reapply-destructions' decision to move <c>checkpoints.jsonl</c> aside.
    /// </summary>
    public static async Task<bool> ChainHoldsAsync(IAuditStore store, AuditHead checkpoint, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        var found = await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = checkpoint.Sequence - 1, Limit = 1 }, cancellationToken) switch
        {
            [var e] when e.Sequence == checkpoint.Sequence => AuditChain.HashOf(e.Body),
            [var e] when e.Sequence == checkpoint.Sequence + 1 => e.PreviousHash,
            _ => null,
        };
        return found == checkpoint.Hash;
    }

    // A checkpoint row counts only if the audit key signed its body, the body is a version-1
    // checkpoint of this key (the offline verifier's rule: whatever else the audit key might ever
    // sign over a bare SHA-256 of a body is not read as a checkpoint; today's other statements are
    // domain-separated, SignedStatement) and it says what its columns say: a database writer could
    // otherwise insert one (and delete it again once read) to move the head this process takes as
    // signed.
    private AuditHead? SignedHead(AuditCheckpoint checkpoint)
    {
        try
        {
            using (var document = JsonDocument.Parse(checkpoint.Body))
            {
                var body = document.RootElement;
                if (body.ValueKind != JsonValueKind.Object
                    || !body.TryGetProperty("v", out var version) || version.ValueKind != JsonValueKind.Number || !version.TryGetInt32(out var v) || v != AuditChain.FormatVersion
                    || !body.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || type.GetString() != "checkpoint"
                    || body.GetProperty("key").GetString() != Fingerprint
                    || body.GetProperty("seq").GetInt64() != checkpoint.Sequence || body.GetProperty("head").GetString() != checkpoint.HeadHash)
                {
                    return null;
                }
            }

            using var verifier = ECDsa.Create();
            verifier.ImportSubjectPublicKeyInfo(PublicKey, out _);
            return verifier.VerifyHash(AuditChain.CheckpointDigest(checkpoint.Body), checkpoint.Signature)
                ? new AuditHead(checkpoint.Sequence, checkpoint.HeadHash)
                : null;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }

    // The store's check of a checkpoint row before an append chains onto its head (no event stored).
    private bool ChainableCheckpoint(AuditCheckpoint row)
    {
        if (SignedHead(row) is not null)
        {
            return true;
        }

        AppendRefused?.Invoke(row.Sequence);
        return false;
    }

    // The first refusal's time is kept until a checkpoint is signed again.
    private void RefuseCheckpoints() => Interlocked.CompareExchange(ref _checkpointRefusedTicks, time.GetUtcNow().UtcTicks, 0);

    // A checkpoint's time column is the database's word: one in the future would hold off the
    // interval's checkpoints (the unsigned tail growing to CheckpointEveryEvents) until then.
    private static DateTimeOffset Earlier(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;

    /// <summary>
    /// Signs a document outside the chain with the audit key (<see cref="SignedStatement"/>): a
    /// ceremony transcript, a backup manifest. Returns the P1363 signature.
    /// </summary>
    public async Task<byte[]> SignStatementAsync(string kind, ReadOnlyMemory<byte> content, CancellationToken cancellationToken) =>
        await hsm.SignEcdsaAsync(
            _signingKey ?? throw new InvalidOperationException("the audit log is not initialised"),
            EcCurve.P256,
            SignedStatement.Digest(kind, content.Span),
            cancellationToken);

    /// <summary>
    /// Retention: deletes events older than the retention period, back to the newest
    /// checkpoint whose events are all that old, so the remaining chain starts right after a
    /// signed checkpoint.
    /// </summary>
    /// <param name="now">The lifecycle's trusted time (<see cref="LifecycleClock"/>), not the bare clock.</param>
    /// <param name="cancellationToken">Cancels the pass.</param>
    /// <returns>How many events were deleted.</returns>
    public async Task<long> PruneAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        if (options.Retention is not { } retention)
        {
            return 0;
        }

        // Nor while checkpoints are refused (the chain does not pass through this node's last
        // checkpoint or its head record; reported as such, CheckpointRefusedSince): a cut is made
        // only under a checkpoint signed after its record. Before, every pass chained an
        // audit/Retention event naming a cut it then did not make, and failed.
        if (CheckpointRefusedSince is not null)
        {
            return 0;
        }

        var cutoff = now - retention;
        var oldest = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, cancellationToken);
        if (oldest.Count == 0 || oldest[0].Entry.Time >= cutoff)
        {
            return 0;
        }

        // The first event at or after the cutoff (in sequence order: times are not monotonic in
        // it); everything before it may go, but only up to a checkpoint. Its walk starts at the
        // first block of the time summary that can hold it, not at the oldest event.
        var kept = await AuditPages.FirstAtOrAfterAsync(store, cutoff, oldest[0].Sequence - 1, cancellationToken);
        var limit = kept is null ? long.MaxValue : kept.Sequence - 1;

        // At most MaxPrunedPerPass events a pass, cut at a checkpoint (one every
        // CheckpointEveryEvents at most); the next pass goes on from there.
        var bounded = Math.Min(limit, oldest[0].Sequence - 1 + Math.Max(1, options.MaxPrunedPerPass));
        var passedOver = new HashSet<long>();
        if (await CutAnchorAsync(oldest[0].Sequence, bounded, limit, passedOver, cancellationToken) is not { } anchor)
        {
            return 0;
        }

        // Which events are old was asked of the time column and its summary, which only index the
        // bodies: the event the cut ends at must be that old by its body too, or a database writer
        // who aged either would have this server delete recent events under a signed record of a cut.
        if (await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = anchor.Sequence - 1, Limit = 1 }, cancellationToken) is not [var last]
            || last.Sequence != anchor.Sequence || last.Entry.Time >= cutoff)
        {
            throw KmsErrors.FailedPrecondition(
                $"audit retention: event {anchor.Sequence}, where the cut would end, is not older than the retention period by its body ({cutoff:O}), though the database's time column or its summary (audit_blocks) says so: one was edited; nothing deleted");
        }

        return await PruneThroughAsync(anchor.Sequence, passedOver, cancellationToken);
    }

    // Where a retention pass may cut: the newest checkpoint row from `oldest` through `bounded` (the
    // per-pass bound) that is one of this chain's, else, none among them (checkpoints further apart
    // than the bound, or none signed while the HSM was away), the first after `bounded` through
    // `limit`, if it may go. One of this chain's: the audit key signed it as a checkpoint
    // (SignedHead) over the hash of the event the chain holds at its sequence, from its body. Any
    // other row — one a database writer inserted, with a bogus signature, another statement, or a
    // checkpoint of another chain — is passed over and reported (RetentionPassedOver, event 1332):
    // before, the newest row was the cut whatever it was, so a writer without the HSM had this
    // server delete events up to a point no checkpoint of the chain covers.
    // At most MaxCheckpointRowsPassedOver a pass; past them the pass cuts nothing, and the next
    // goes on from the row after the last it looked at (_cutSearch), in the same order, while the
    // oldest event is the same: each pass looks at rows no pass of the search looked at, so a
    // search ends (at most one row a sequence number) and the rows passed over below the cut go
    // with it (RetentionRowsDeleted). Before, every pass started again at `bounded`: a database
    // writer who inserted 100 rows just below it stopped retention for good.
    private async Task<AuditCheckpoint?> CutAnchorAsync(long oldest, long bounded, long limit, HashSet<long> passedOverRows, CancellationToken cancellationToken)
    {
        // A search left unfinished goes on only over the events it was made for: none cut since
        // (another node's retention), and its bound still old enough (the period not shortened).
        var search = _cutSearch is { } left && left.Oldest == oldest && left.Bounded <= limit ? left : new CutSearch(oldest, bounded, bounded, false);
        _cutSearch = null;
        var passedOver = 0;
        bool PassOver(AuditCheckpoint row, string reason)
        {
            passedOverRows.Add(row.Sequence);
            RetentionPassedOver?.Invoke(row.Sequence, reason);
            return ++passedOver == MaxCheckpointRowsPassedOver;
        }

        if (!search.Upward)
        {
            for (var row = await store.FindAuditCheckpointAtOrBeforeAsync(search.Next, cancellationToken); row is not null && row.Sequence >= oldest;
                row = await store.FindAuditCheckpointAtOrBeforeAsync(row.Sequence - 1, cancellationToken))
            {
                if (await NoCutAtAsync(row, cancellationToken) is not { } reason)
                {
                    return row;
                }

                if (PassOver(row, reason))
                {
                    _cutSearch = search with { Next = row.Sequence - 1 };
                    return null;
                }
            }

            search = search with { Next = search.Bounded, Upward = true };
        }

        const int Page = 100;
        for (var after = search.Next; after < limit;)
        {
            var rows = await store.ListAuditCheckpointsAsync(after, Page, cancellationToken);
            foreach (var row in rows)
            {
                if (row.Sequence > limit)
                {
                    return null;
                }

                if (await NoCutAtAsync(row, cancellationToken) is not { } reason)
                {
                    return row;
                }

                if (PassOver(row, reason))
                {
                    _cutSearch = search with { Next = row.Sequence };
                    return null;
                }
            }

            if (rows.Count < Page)
            {
                return null;
            }

            after = rows[^1].Sequence;
        }

        return null;
    }

    // An unfinished search for a cut (CutAnchorAsync): the oldest event it searches above, the bound
    // it searched down from, and where it goes on: downward at or before Next, then (Upward) the
    // rows after Next. Only the lifecycle worker's retention pass reads and writes it, one at a time.
    private sealed record CutSearch(long Oldest, long Bounded, long Next, bool Upward);

    private CutSearch? _cutSearch;

    // Why retention may not cut at a checkpoint row (null: it may): the audit key did not sign it
    // as a checkpoint, or what it signed is not the hash of the chain's event there.
    private async Task<string?> NoCutAtAsync(AuditCheckpoint row, CancellationToken cancellationToken)
    {
        if (SignedHead(row) is not { } signed)
        {
            return "the audit key did not sign it as a checkpoint (its signature does not verify, or its body is no version-1 checkpoint of this key naming the row's sequence and head)";
        }

        return await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = row.Sequence - 1, Limit = 1 }, cancellationToken) is [var e]
            && e.Sequence == row.Sequence && AuditChain.HashOf(e.Body) == signed.Hash
            ? null
            : $"it is signed, but over another head than the hash of the chain's event {row.Sequence} (a checkpoint of another chain, or the event was edited)";
    }

    /// <summary>
    /// Deletes the events through <paramref name="sequence"/> (a checkpoint's), after chaining an
    /// event that records the cut, signed by the audit key — so a verifier can tell retention from
    /// someone deleting the start of the log.
    /// </summary>
    /// <remarks>
    /// The record carries the HSM's signature of the cut (<see cref="AuditChain.RetentionCutStatement"/>:
    /// the audit key, the last event deleted and its hash, read from its body): a database writer
    /// who deletes a prefix cannot make one, and a copy of an older record names another cut.
    /// </remarks>
    public Task<long> PruneThroughAsync(long sequence, CancellationToken cancellationToken) => PruneThroughAsync(sequence, [], cancellationToken);

    // passedOver: the rows this pass passed over as no place to cut (signed, some of them, but over
    // another head): reported when the cut deletes them, as every row the audit key did not sign.
    private async Task<long> PruneThroughAsync(long sequence, HashSet<long> passedOver, CancellationToken cancellationToken)
    {
        // The hash the first event kept links to: event `sequence`'s, from its body, or (already
        // deleted) the next one's link.
        var head = await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = sequence - 1, Limit = 1 }, cancellationToken) switch
        {
            [var e] when e.Sequence == sequence => AuditChain.HashOf(e.Body),
            [var e] when e.Sequence == sequence + 1 => e.PreviousHash,
            _ => throw KmsErrors.FailedPrecondition($"audit retention: the chain holds neither event {sequence} nor the one after it; no cut recorded, nothing deleted"),
        };

        // Only at a checkpoint of this chain: the audit key's, over that hash. The row a cut keeps
        // anchors what remains (the export's start), and one a database writer inserted must not
        // have events deleted up to a point no checkpoint of the chain covers.
        if (await store.FindAuditCheckpointAtOrBeforeAsync(sequence, cancellationToken) is not { } row || row.Sequence != sequence
            || SignedHead(row) is not { } signed || signed.Hash != head)
        {
            throw KmsErrors.FailedPrecondition(
                $"audit retention: no checkpoint the audit key signed over event {sequence} of this chain is stored (none at {sequence}, or a row it did not sign as such, or signed over another head); no cut recorded, nothing deleted");
        }
        var signature = await SignStatementAsync(AuditChain.RetentionCutKind, AuditChain.RetentionCutStatement(sequence, head, Fingerprint), cancellationToken);
        await store.AppendAuditAsync(
        [
            new AuditEntry
            {
                Time = Clock.Now(time),
                RequestId = CallIds.New(),
                Principal = AuditChain.RetentionPrincipal,
                Operation = AuditChain.RetentionOperation,
                Resource = AuditChain.RetentionResource(sequence),
                Outcome = "OK",
                RetentionCut = new AuditRetentionCut(sequence, head, signature),
            },
        ], cancellationToken);

        // Signed before anything is deleted: a verifier counts the record of a cut only under a
        // checkpoint (anyone holding an export could chain an unsigned one onto its tail).
        await CheckpointAsync(cancellationToken);
        var pruned = await store.PruneAuditAsync(sequence, cancellationToken);

        // The checkpoint rows below the cut went with the events they stood over. The audit key's
        // checkpoints among them are covered by the record of the cut; any other row — a database
        // writer's, passed over as no place to cut, or never looked at — is reported with its
        // sequence: before, the cut deleted them without a word.
        var unsigned = pruned.CheckpointRows.Where(row => passedOver.Contains(row.Sequence) || SignedHead(row) is null).Select(row => row.Sequence).ToList();
        if (unsigned.Count > 0)
        {
            RetentionRowsDeleted?.Invoke(sequence, unsigned);
        }

        return pruned.Events;
    }

    /// <summary>
    /// The export: every retained event from the newest checkpoint at or before
    /// <paramref name="fromSequence"/> (or the oldest retained event) to the head, with the
    /// checkpoints, in the documented JSON-lines format.
    /// </summary>
    public async IAsyncEnumerable<string> ExportAsync(long fromSequence, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var head = await store.GetAuditHeadAsync(cancellationToken);
        var first = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, cancellationToken);
        var anchor = first.Count == 0 ? head : first[0].Sequence == 1 ? AuditChain.Empty : new AuditHead(first[0].Sequence - 1, first[0].PreviousHash);
        var start = await store.FindAuditCheckpointAtOrBeforeAsync(Math.Max(fromSequence, anchor.Sequence), cancellationToken);
        if (start is not null && start.Sequence >= anchor.Sequence)
        {
            anchor = new AuditHead(start.Sequence, start.HeadHash);
        }

        yield return AuditExport.Header(anchor, Fingerprint, PublicKey);
        if (start is not null && start.Sequence == anchor.Sequence)
        {
            // The anchor's own checkpoint vouches for where the export starts.
            yield return AuditExport.Checkpoint(start);
        }

        var checkpoints = new Queue<AuditCheckpoint>();
        var checkpointsAfter = anchor.Sequence;
        for (var after = anchor.Sequence; ;)
        {
            var page = await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = after, Limit = 1000 }, cancellationToken);
            foreach (var e in page)
            {
                yield return AuditExport.Event(e);
                if (checkpoints.Count == 0 && checkpointsAfter < e.Sequence)
                {
                    foreach (var c in await store.ListAuditCheckpointsAsync(checkpointsAfter, 1000, cancellationToken))
                    {
                        checkpoints.Enqueue(c);
                        checkpointsAfter = c.Sequence;
                    }

                    if (checkpoints.Count == 0)
                    {
                        checkpointsAfter = long.MaxValue;
                    }
                }

                while (checkpoints.Count > 0 && checkpoints.Peek().Sequence <= e.Sequence)
                {
                    yield return AuditExport.Checkpoint(checkpoints.Dequeue());
                }
            }

            if (page.Count < 1000)
            {
                yield break;
            }

            after = page[^1].Sequence;
        }
    }

    private async Task CommitAsync(List<Pending> batch, CancellationToken cancellationToken)
    {
        try
        {
            await store.AppendAuditAsync(batch.Select(p => p.Entry).ToList(), cancellationToken);
            var waited = time.GetElapsedTime(batch[0].Enqueued);

            // Cleared before the callers are woken: one that reads the health state next (or asks
            // the health check) must not find the failures this commit ended.
            if (_failedCommits != 0)
            {
                // Written by this loop only; read by the health check.
                Volatile.Write(ref _failedCommits, 0);
                Volatile.Write(ref _lastCommitFailureTicks, 0);
            }

            foreach (var pending in batch)
            {
                pending.Done.TrySetResult();
            }

            BatchWritten?.Invoke(batch.Count, waited);
        }
        catch (Exception e)
        {
            Volatile.Write(ref _failedCommits, _failedCommits + 1);
            Volatile.Write(ref _lastCommitFailureTicks, time.GetUtcNow().UtcTicks);
            var failure = e as KmsException is { Code: KmsErrorCode.Unavailable } unavailable
                ? unavailable
                : KmsErrors.Unavailable("the audit log cannot be written; the request was not answered", e);
            foreach (var pending in batch)
            {
                pending.Done.TrySetException(failure);
            }

            if (failure.GaveUpWaiting)
            {
                // The store waited out its timeout for the write lock (or the database): the events
                // queued meanwhile fail with this batch, at once. Each has waited less than that
                // timeout; another batch would wait as long again for a lock just found held, and
                // its callers would answer after up to two timeouts — past a deadline set for one
                // (DEADLINE_EXCEEDED, where UNAVAILABLE is the answer to retry). Later events try
                // the lock again, each waiting at most one timeout. Those events failed as a batch
                // of their own would have: one more failed commit for the health check, which
                // drains the node after three in a row (without it, calls failing this way kept the
                // count below three and the node Serving while every audited call failed).
                // Counted before those callers are woken (as this batch's failure is, above): one
                // that reads the health state next must find its own failure counted.
                var behind = new List<Pending>();
                for (var queued = _queue.Reader.Count; queued > 0 && _queue.Reader.TryRead(out var next); queued--)
                {
                    behind.Add(next);
                }

                if (behind.Count > 0)
                {
                    Volatile.Write(ref _failedCommits, _failedCommits + 1);
                }

                foreach (var pending in behind)
                {
                    pending.Done.TrySetException(failure);
                }
            }
        }
    }

    // Written directly, never through the queue: this runs in the housekeeping loop beside the
    // group-commit loop, and its append takes the writer's gate as a batch's does. A failed write
    // puts the counts back for the next pass.
    private async Task FlushRefusalsAsync(bool force, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        List<((string, string, string) Key, RefusalWindow Window)> closed = [];
        lock (_refusalLock)
        {
            foreach (var (key, window) in _refusals.Where(w => force || w.Value.Closes <= now).ToList())
            {
                _refusals.Remove(key);
                if (window.Count > 0)
                {
                    closed.Add((key, window));
                }
            }
        }

        if (closed.Count == 0)
        {
            return;
        }

        try
        {
            await store.AppendAuditAsync(closed.Select(c => c.Window.Summary()).ToList(), cancellationToken);
        }
        catch
        {
            lock (_refusalLock)
            {
                foreach (var (key, window) in closed)
                {
                    if (_refusals.TryGetValue(key, out var current))
                    {
                        current.Absorb(window);
                    }
                    else
                    {
                        _refusals[key] = window;
                    }
                }
            }

            throw;
        }
    }

    // Forwards pages of events until the stream has the head, or until the pass has spent
    // ForwardBudget on it (the final pass: until forwardUntil is cancelled): a stream far behind
    // (resumed after a long outage) then catches up over passes that follow one another at once
    // (HousekeepingLoopAsync), each closing the refusal windows and signing a due checkpoint on its
    // way, rather than holding them up. Before, a pass forwarded at most ten pages, once a second:
    // the stream could not keep up with more than ~10,000 events a second, and fell behind for as
    // long as such a load lasted.
    // Each page starts at the last event the stream was sent, which the chain must still hold with
    // the hash the stream has (or, after a retention cut through it, the next event must link to
    // it): a bare sequence number skipped, after a rollback, the new chain's events up to it —
    // numbers the stream held for the old chain's — and the SIEM never received them.
    private async Task ForwardAsync(CancellationToken? forwardUntil, CancellationToken cancellationToken)
    {
        Volatile.Write(ref _streamBehind, false); // a failing stream is retried a second later, not at once
        if (EventsWritten is null || _forwarded < 0)
        {
            return;
        }

        if (StreamReadBack is { } readBack)
        {
            if (!readBack(cancellationToken))
            {
                return; // where the stream goes on is not known yet: nothing is sent until it is
            }

            StreamReadBack = null;
        }

        var started = time.GetTimestamp();
        var restarted = false;
        while (true)
        {
            var checkedEvent = _forwarded > 0 ? 1 : 0;
            var page = await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = _forwarded - checkedEvent, Limit = ForwardPage + checkedEvent }, cancellationToken);
            if (checkedEvent == 1 && !StreamContinues(page))
            {
                if (restarted)
                {
                    return; // the chain moved again meanwhile: the next pass looks again
                }

                try
                {
                    if (!await RestartStreamAsync(started, forwardUntil, cancellationToken))
                    {
                        // The pass's time for the stream ran out in the search: nothing marked, the
                        // position unmoved; the next pass, which follows at once, goes on with the
                        // search where it stopped.
                        Volatile.Write(ref _streamBehind, true);
                        return;
                    }
                }
                catch (OperationCanceledException) when (forwardUntil is { IsCancellationRequested: true } && !cancellationToken.IsCancellationRequested)
                {
                    // The stop's time for the stream ran out in the search: nothing marked, the
                    // position unmoved; the next start restarts the stream.
                    EndSearch();
                    Volatile.Write(ref _streamBehind, true);
                    return;
                }
                catch
                {
                    EndSearch(); // cancelled, or the store failed: the next pass searches afresh
                    throw;
                }

                restarted = true;
                continue;
            }

            EndSearch(); // the chain holds the stream's last event (again): no search goes on
            IReadOnlyList<AuditEvent> events = page.Count > 0 && page[0].Sequence == _forwarded ? page.Skip(1).ToList() : page;
            if (events.Count == 0)
            {
                return;
            }

            try
            {
                EventsWritten?.Invoke(events);
            }
            catch (AuditStreamNotTakenException e) when (e.Reached is { } part)
            {
                // The stream took the events through this one, not the rest: they come again from there.
                Forwarded(part);
                throw;
            }

            Forwarded(new AuditHead(events[^1].Sequence, events[^1].Hash));
            if (events.Count < ForwardPage)
            {
                return;
            }

            if (forwardUntil is { } until ? until.IsCancellationRequested : time.GetElapsedTime(started) >= ForwardBudget)
            {
                Volatile.Write(ref _streamBehind, true);
                return;
            }
        }
    }

    // Whether the chain still holds the last event the stream was sent, page[0] being the first
    // event at or after it. A gap after it (retention cut past it: the events the stream lacks are
    // gone) cannot be checked, and the stream goes on from the oldest event retained, as before.
    private bool StreamContinues(IReadOnlyList<AuditEvent> page) => page switch
    {
        [] => false, // the chain ends before it
        [var e, ..] when e.Sequence == _forwarded => e.Hash == _forwardedHash,
        [var e, ..] when e.Sequence == _forwarded + 1 => e.PreviousHash == _forwardedHash,
        _ => true,
    };

    // The stream's last event is not the chain's: the stream goes on after the newest event it
    // holds that the chain holds (the chains agree up to there, hash for hash), so every event of
    // the chain after it reaches the stream, marked as a restart; some the stream has already,
    // again. The mark is given before the position moves: a handler that throws leaves it. False:
    // the pass's time for the stream ran out in the search, which the next pass resumes.
    private async Task<bool> RestartStreamAsync(long started, CancellationToken? forwardUntil, CancellationToken cancellationToken)
    {
        var replaced = new AuditHead(_forwarded, _forwardedHash);
        if (await SharedPointAsync(replaced, started, forwardUntil, cancellationToken) is not { } after)
        {
            return false;
        }

        try
        {
            StreamRestarted?.Invoke(new StreamRestart(after, replaced));
        }
        catch (AuditStreamNotTakenException e) when (e.Reached is { } part)
        {
            // The stream's last line, cut short by a full pipe before, was completed: it ends with
            // that event, and the next pass looks again from there.
            Forwarded(part);
            throw;
        }

        (_forwarded, _forwardedHash, _forwardedHead, _forwardedPoints) = (after.Sequence, after.Hash, after.Sequence > 0 ? after : (AuditHead?)null, [after]);
        return true;
    }

    // The newest event of what the stream holds (its history, newest first, then the points kept in
    // memory) that the chain holds, checked a window of events at a time; else the event before the
    // oldest one retained (the chain's start when none is).
    // The stream's history is read back a line at a time from a file that may hold GBs, lines above
    // the chain's head passed over without a look at the database: the search stops when told to
    // (the host's stop; at stop, the stream's share of it), checked at every line. An ordinary pass
    // searches for what is left of its ForwardBudget, then returns null, the search kept where it
    // stopped (_search): the next pass goes on from there, not from the file's end again, and a pass
    // still closes refusal windows, records the head, summarises and signs a due checkpoint (before,
    // a long search held all of that up for as long as it took: minutes over a stream of GBs).
    private async Task<AuditHead?> SharedPointAsync(AuditHead replaced, long started, CancellationToken? forwardUntil, CancellationToken cancellationToken)
    {
        // Read again each pass: a retention cut or new events meanwhile. Points already passed over
        // stay passed: a point the chain did not hold then is one of a chain the database left, and
        // a chain restored again under the search makes it restart earlier (more events again), never later.
        var oldest = await OldestRetainedAsync(cancellationToken);
        var head = await store.GetAuditHeadAsync(cancellationToken);
        if (_search is not { } search || search.Replaced != replaced)
        {
            EndSearch();
            search = _search = new StreamSearch(replaced, (StreamHistory?.Invoke() ?? []).Concat(Enumerable.Reverse(_forwardedPoints)).GetEnumerator());
        }

        IReadOnlyList<AuditEvent> window = [];
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            forwardUntil?.ThrowIfCancellationRequested();
            if (forwardUntil is null && time.GetElapsedTime(started) >= ForwardBudget)
            {
                return null;
            }

            if (!search.Points.MoveNext())
            {
                break;
            }

            var point = search.Points.Current;
            if (point.Sequence <= 0 || point.Sequence < oldest.Sequence)
            {
                break; // before what the chain retains: nothing older can be checked either
            }

            if (point.Sequence > head.Sequence || point == replaced)
            {
                continue;
            }

            if (point.Sequence == oldest.Sequence)
            {
                if (point.Hash == oldest.Hash)
                {
                    EndSearch();
                    return point;
                }

                continue;
            }

            if (window.Count == 0 || point.Sequence < window[0].Sequence || point.Sequence > window[^1].Sequence)
            {
                window = await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = Math.Max(oldest.Sequence, point.Sequence - ForwardPage), Limit = ForwardPage }, cancellationToken);
            }

            var index = window.Count > 0 ? point.Sequence - window[0].Sequence : -1;
            if (index >= 0 && index < window.Count && window[(int)index].Sequence == point.Sequence && window[(int)index].Hash == point.Hash)
            {
                EndSearch();
                return point;
            }
        }

        EndSearch();
        return oldest;
    }

    // Ends a restart's search under way, if any (its history closed: the stream file's handle).
    private void EndSearch()
    {
        _search?.Points.Dispose();
        _search = null;
    }

    // The stream was sent the events through this one.
    private void Forwarded(AuditHead reached)
    {
        (_forwarded, _forwardedHash, _forwardedHead) = (reached.Sequence, reached.Hash, reached);
        ForwardedPoint(reached);
    }

    // The last event of each page forwarded: where the stream's content goes on after, for a
    // restart when the host cannot read the stream back. At most MaxForwardedPoints: when full,
    // every other one goes, oldest first, so they reach back further the longer the node runs.
    private void ForwardedPoint(AuditHead point)
    {
        if (_forwardedPoints.Count >= MaxForwardedPoints)
        {
            _forwardedPoints = [.. _forwardedPoints.Where((_, i) => i % 2 == 1)];
        }

        _forwardedPoints.Add(point);
    }

    private static KeyVersionId FixedId(string label) => KeyVersionId.FromBytes(SHA256.HashData(Encoding.UTF8.GetBytes(label)).AsSpan(0, KeyVersionId.Length));

    private sealed record StoredKeyPair(string Wrapped, string PublicKey);

    // A restart's search under way: the stream position it is for, and the points not yet looked at.
    private sealed record StreamSearch(AuditHead Replaced, IEnumerator<AuditHead> Points);

    private sealed class Pending(AuditEntry entry, long enqueued)
    {
        public AuditEntry Entry { get; } = entry;

        public long Enqueued { get; } = enqueued;

        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    // Refusals after the first of a window: counted, written as one event when it closes, with
    // the first few distinct resources they named (each with its count) and a count of the rest.
    private sealed class RefusalWindow(DateTimeOffset closes, AuditEntry first)
    {
        // At most AuditEntry.MaxListedResources: a linear search is the cheapest lookup.
        private readonly List<KeyValuePair<string, long>> _resources = [];

        public DateTimeOffset Closes { get; } = closes;

        public long Count { get; private set; }

        public DateTimeOffset First { get; private set; }

        public DateTimeOffset Last { get; private set; }

        public long OtherResources { get; private set; }

        public void Add(AuditEntry entry)
        {
            if (Count++ == 0)
            {
                First = entry.Time;
            }

            Last = entry.Time;
            CountResource(entry.Resource, 1);
        }

        // Counts of a window whose summary could not be written, folded into this one.
        public void Absorb(RefusalWindow other)
        {
            if (other.Count == 0)
            {
                return;
            }

            First = Count == 0 || other.First < First ? other.First : First;
            Last = other.Last > Last ? other.Last : Last;
            Count += other.Count;
            OtherResources += other.OtherResources;
            foreach (var (resource, count) in other._resources)
            {
                CountResource(resource, count);
            }
        }

        public AuditEntry Summary() => first with
        {
            Time = First,
            Count = Count,
            LastTime = Last,
            RequestId = "aggregated",
            Client = first.Client,
            Resources = [.. _resources.OrderBy(r => r.Key, StringComparer.Ordinal)],
            OtherResources = OtherResources,
        };

        private void CountResource(string? resource, long count)
        {
            if (resource is null)
            {
                return;
            }

            var index = _resources.FindIndex(r => string.Equals(r.Key, resource, StringComparison.Ordinal));
            if (index >= 0)
            {
                _resources[index] = KeyValuePair.Create(resource, _resources[index].Value + count);
            }
            else if (_resources.Count < AuditEntry.MaxListedResources && ReadersMaySee(resource))
            {
                _resources.Add(KeyValuePair.Create(resource, count));
            }
            else
            {
                OtherResources += count;
            }
        }

        // The summary's readers: security officers, the principal's tenant's auditors, and for a
        // principal without a tenant the auditors of the tenant its resource is in. A name of
        // another tenant in such an event would show them what was asked of that tenant's names,
        // which its own event would not have shown them (SqlStore's tenant filter).
        private bool ReadersMaySee(string resource) =>
            first.Tenant is not null || TenantId.OfResourceName(first.Resource) is not { } tenant || TenantId.OfResourceName(resource) == tenant;
    }
}
