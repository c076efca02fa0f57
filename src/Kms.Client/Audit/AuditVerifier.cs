using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Kms.Client.Audit;

/// <summary>A checkpoint known from outside the export (a log stream, an earlier export): its sequence number and head hash.</summary>
public sealed record KnownCheckpoint(long Sequence, string HeadHash);

/// <summary>The outcome of <see cref="AuditVerifier.Verify"/>.</summary>
/// <param name="Valid">Whether everything checked out.</param>
/// <param name="Events">Events whose hash and link were verified.</param>
/// <param name="Checkpoints">Checkpoints whose signature and head were verified.</param>
/// <param name="LastSignedSequence">The newest sequence number covered by a verified checkpoint (0: none).</param>
/// <param name="UnsignedTail">Events after the last verified checkpoint: intact as far as the chain shows, but a truncation there is only detectable against a later checkpoint.</param>
/// <param name="FirstBadSequence">The sequence number at which verification failed (null when valid).</param>
/// <param name="Problem">What failed, in words.</param>
/// <param name="AnchorSequence">The event the export follows: 0 for the whole history, else a signed cut (retention, or a partial export).</param>
/// <param name="TornTail">
/// The characters of a torn last line (no line end, and not JSON: a copy of a SIEM stream taken
/// while it was appended to, or a crash) that were not read; 0 when there is none. With a torn
/// line and <see cref="FirstBadSequence"/> null, everything before it verified, events up to
/// <see cref="AnchorSequence"/> + <see cref="Events"/>, and the other counts are of that part; yet
/// <see cref="Valid"/> is false, because the export was not verified to its end.
/// </param>
/// <param name="StreamRestarts">
/// The restart lines of a SIEM stream copy (docs/audit-format.md "Export"): the database's chain was
/// rolled back under the stream, which then went on after an earlier event. Null when there are
/// none. With restarts, the other counts are of the chain the copy ends with; the events and
/// checkpoints of the chains it replaced were verified too, and are counted here. A rollback is
/// itself something an auditor must see: a copy with restarts is <see cref="Valid"/> when every
/// chain in it verifies, but it is not a clean copy.
/// </param>
/// <param name="StreamResends">
/// The resend lines of a SIEM stream copy (docs/audit-format.md "Export"): the server went on after
/// a crash from its stream's position record, which lags what it sent, and sent some events again.
/// Each event sent again was checked to be the one verified before at its sequence, hash for hash,
/// and is not counted in <see cref="Events"/> again. Null when there are none; a copy with resends
/// alone is <see cref="Valid"/> and complete (at least once: nothing is missing or changed).
/// </param>
public sealed record AuditVerification(bool Valid, long Events, long Checkpoints, long LastSignedSequence, long UnsignedTail, long? FirstBadSequence, string? Problem, long AnchorSequence = 0, long TornTail = 0, AuditStreamRestarts? StreamRestarts = null, AuditStreamResends? StreamResends = null);

/// <summary>The resends of a SIEM stream copy (<see cref="AuditVerification.StreamResends"/>).</summary>
/// <param name="Count">How many resend lines were verified.</param>
/// <param name="ResentEvents">The events that came again after them, each identical to the one verified before.</param>
public sealed record AuditStreamResends(long Count, long ResentEvents);

/// <summary>
/// A SIEM stream's restart line, verified: the stream went on after event <paramref name="AfterSequence"/>
/// (which the copy holds with that hash), and its events after it through <paramref name="ReplacedSequence"/>,
/// the last it had been sent, are not in the database's chain any more.
/// </summary>
/// <param name="Line">The line of the copy it is on (1: the first).</param>
/// <param name="AfterSequence">The event the stream went on after (0: the chain's start).</param>
/// <param name="AfterHash">That event's hash.</param>
/// <param name="ReplacedSequence">The last event the stream had been sent, which the chain no longer held.</param>
/// <param name="ReplacedHash">That event's hash.</param>
public sealed record AuditStreamRestart(long Line, long AfterSequence, string AfterHash, long ReplacedSequence, string ReplacedHash);

/// <summary>The restarts of a SIEM stream copy (<see cref="AuditVerification.StreamRestarts"/>).</summary>
/// <param name="Count">How many restart lines were verified.</param>
/// <param name="ReplacedEvents">
/// The events verified before a restart and replaced by it (for each restart, its replaced event's
/// sequence minus its after event's): some may come again unchanged after it (a stream on stdout
/// restarts at or before the fork).
/// </param>
/// <param name="ReplacedCheckpoints">Checkpoints verified over replaced events: they signed a chain the copy does not end with, and no longer count.</param>
/// <param name="Listed">The first <see cref="AuditVerifier.MaxListedRestarts"/> restarts, in the copy's order.</param>
public sealed record AuditStreamRestarts(long Count, long ReplacedEvents, long ReplacedCheckpoints, IReadOnlyList<AuditStreamRestart> Listed);

/// <summary>
/// Verifies an audit export (JSON lines, docs/audit-format.md) offline: every event's hash
/// and its link to the one before, sequence numbers without gaps, every checkpoint's
/// signature against the pinned audit public key and its head against the chain, and, if
/// given, a checkpoint known from outside (detects tail truncation and rewrites by whoever
/// holds the database). Independent of the server's implementation of the same format.
/// </summary>
/// <remarks>
/// <para>Memory does not grow with the export: lines are read one at a time, each at most
/// 1,048,576 characters (a longer one is malformed), and the hashes of only the last 65,536
/// events are kept (2 MiB), for the checkpoints that follow them: the server writes each
/// checkpoint right after the event it covers, and one further from it is out of place.</para>
/// <para>A last line without a line end that is not one whole JSON object is a torn line (a copy
/// of a SIEM stream taken mid-append, a crash), not a malformed one: what comes before it is
/// verified, and the result says how far, with the torn line's length
/// (<see cref="AuditVerification.TornTail"/>), never as valid. A last line without a line end
/// that is one whole object is read like any other. The rule is the server's own
/// (<see cref="Kms.Core.Files.JsonLines.IsWholeRecord(string)"/>: the line its next append would
/// cut is the line called torn here), not an independent one: the two must agree.</para>
/// <para>A line ends at a line feed only (a carriage return right before it is part of the line
/// end), as the server writes lines and its restore reads them (<c>DestructionReplay.SplitLines</c>).
/// A carriage return anywhere else is one the server never writes — JSON escapes it in a string —
/// so its line is malformed: two records joined by a lone carriage return are not read as two.</para>
/// <para>A copy of the SIEM stream may hold restart lines (<c>{"stream_restart":{"after":…,"replaced":…}}</c>):
/// the database's chain was rolled back under the stream, and the events after the line go on
/// after its <c>after</c> event. The line must replace the last event verified before it (as the
/// server writes it: the last event the stream was sent), and go on after an event verified in
/// this copy, by sequence and hash: the export's anchor, or one of the last
/// <see cref="RecentEvents"/> events (else the copy fails at the line). The chain then goes back to
/// that event; checkpoints verified over the events after it no longer count, and a known
/// checkpoint is checked against the chain the copy ends with. Every restart is reported
/// (<see cref="AuditVerification.StreamRestarts"/>): anyone holding the copy can write one, and a
/// rewritten tail after it verifies — as a restart, never as a clean copy.</para>
/// </remarks>
public static class AuditVerifier
{
    /// <summary>
    /// The longest line read, in characters: far above any line the server writes (an event's
    /// request strings are cut at 512 characters, a principal's name is at most about 2,000, a
    /// context at most 64 entries of 256-byte keys and hashed values, an aggregated refusal's
    /// list at most 8 resource names — tens of kilobytes at the very most). A longer line is malformed.
    /// </summary>
    internal const int MaxLineLength = 1 << 20;

    /// <summary>
    /// How many events back a checkpoint may cover and still be checked against the chain. The
    /// server writes each checkpoint right after its event; one further back than this is refused
    /// as out of place rather than kept in memory for.
    /// </summary>
    internal const int RecentEvents = 1 << 16;

    /// <summary>How many restart lines a result lists (<see cref="AuditStreamRestarts.Listed"/>); all are counted.</summary>
    public const int MaxListedRestarts = 1000;

    private const string Genesis = "0000000000000000000000000000000000000000000000000000000000000000";

    private static readonly JsonDocumentOptions Strict = new() { AllowDuplicateProperties = false };

    /// <summary>Verifies <paramref name="export"/> against the audit key <paramref name="publicKey"/> (DER SubjectPublicKeyInfo, pinned by you, not taken from the export).</summary>
    /// <exception cref="ArgumentException"><paramref name="publicKey"/> is not an ECDSA P-256 public key.</exception>
    /// <param name="partial">
    /// The export was asked to start later (<c>from_sequence</c>): its start needs a signed
    /// checkpoint, but not a retention record. Otherwise an export that does not start at the
    /// first event must contain the chained event that records the retention cut there.
    /// </param>
    public static AuditVerification Verify(TextReader export, byte[] publicKey, KnownCheckpoint? lastKnown = null, bool partial = false)
    {
        ArgumentNullException.ThrowIfNull(export);
        ArgumentNullException.ThrowIfNull(publicKey);
        using var key = ECDsa.Create();
        try
        {
            key.ImportSubjectPublicKeyInfo(publicKey, out var read);
            if (read != publicKey.Length || key.KeySize != 256)
            {
                throw new CryptographicException();
            }
        }
        catch (Exception e) when (e is CryptographicException or PlatformNotSupportedException)
        {
            // PlatformNotSupportedException: a well-formed key on a curve OpenSSL does not know.
            throw new ArgumentException("the audit public key is not a DER SubjectPublicKeyInfo of an ECDSA P-256 key", nameof(publicKey));
        }

        var fingerprint = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(publicKey));

        var state = new State(lastKnown?.Sequence);
        var lines = new BoundedLineReader(export, MaxLineLength);
        string? line;
        var lineNumber = 0;
        long torn = 0;
        int? cutShort = null; // a line that is no whole record, which only a resend or restart line may follow
        while ((line = lines.ReadLine()) is not null)
        {
            lineNumber++;
            if (lines.TooLong)
            {
                return state.Fail(state.NextSequence, $"line {lineNumber} is malformed (longer than {MaxLineLength} characters)");
            }

            if (line.Length == 0)
            {
                continue;
            }

            if (lines.Unterminated && !Kms.Core.Files.JsonLines.IsWholeRecord(line))
            {
                // The last line, cut short: what came before is verified as far as it goes.
                torn = line.Length;
                break;
            }

            if (line.Contains('\r', StringComparison.Ordinal))
            {
                // The server never writes one (JSON escapes it in a string): the line was altered.
                return state.Fail(state.NextSequence, $"line {lineNumber} is malformed (a carriage return inside it, which the server never writes)");
            }

            if (!lines.Unterminated && cutShort is null && !Kms.Core.Files.JsonLines.IsWholeRecord(line))
            {
                // A run of the server killed in the middle of a line on a stream that cannot be read
                // back (stdout, a FIFO): the next run starts on a new line with a resend line (or a
                // restart line), and the events the cut line held come again after it. Anything
                // else after such a line is no such restart: the line is malformed.
                cutShort = lineNumber;
                continue;
            }

            try
            {
                using var document = JsonDocument.Parse(line, Strict);
                var root = document.RootElement;
                var members = root.ValueKind == JsonValueKind.Object ? root.EnumerateObject().Select(p => p.Name).ToList() : [];
                if (cutShort is { } cut)
                {
                    if (members is not (["stream_resend"] or ["stream_restart"]))
                    {
                        return state.Fail(state.NextSequence, CutShort(cut));
                    }

                    cutShort = null;
                }

                var problem = Is(members, "event", "hash") ? state.Event(root.GetProperty("event"), root, key, fingerprint)
                    : Is(members, "checkpoint", "signature") ? state.Checkpoint(root.GetProperty("checkpoint"), root, key, fingerprint)
                    : members is ["stream_restart"] ? state.Restart(root.GetProperty("stream_restart"), lineNumber)
                    : members is ["stream_resend"] ? state.Resend(root.GetProperty("stream_resend"), lineNumber)
                    : members.FirstOrDefault() == "kms_audit_export" ? state.Header(root)
                    : (state.NextSequence, $"line {lineNumber} is neither an event nor a checkpoint");
                if (problem is { } p)
                {
                    return state.Fail(p.Sequence, p.Message);
                }
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException or ArgumentException)
            {
                // Malformed is a failure to verify, never an exception for the caller.
                return state.Fail(state.NextSequence, $"line {lineNumber} is malformed ({e.GetType().Name})");
            }
        }

        if (cutShort is { } unfollowed)
        {
            return state.Fail(state.NextSequence, CutShort(unfollowed));
        }

        var tornLine = $"its last line is torn ({torn} characters without a line end: a copy taken while it was written, or a crash) and was not read";
        AuditVerification Fail(long sequence, string problem) => state.Fail(sequence, torn > 0 ? $"{problem}; {tornLine}" : problem) with { TornTail = torn };

        if (!state.AnchorSigned)
        {
            return Fail(state.Anchor + 1, $"the export starts after event {state.Anchor}, but no signed checkpoint vouches for it");
        }

        if (lastKnown is not null)
        {
            if (lastKnown.Sequence < state.Anchor)
            {
                return Fail(lastKnown.Sequence, $"the known checkpoint at {lastKnown.Sequence} lies before this export's start ({state.Anchor}); it cannot be checked here");
            }

            if (state.KnownHash is not { } hash)
            {
                return Fail(Math.Min(lastKnown.Sequence, state.NextSequence), state.RestartCount > 0
                    ? $"the chain the stream copy ends with (after its restarts) ends before the known checkpoint at {lastKnown.Sequence}: events were removed from the tail, or the database went back behind it"
                    : $"the export ends before the known checkpoint at {lastKnown.Sequence}: events were removed from the tail");
            }

            if (hash != lastKnown.HeadHash)
            {
                return Fail(lastKnown.Sequence, $"event {lastKnown.Sequence} differs from the known checkpoint: the log was rewritten");
            }

            state.LastSigned = Math.Max(state.LastSigned, lastKnown.Sequence);
        }

        // The record of a cut counts only under a signature: anyone holding the file can chain an
        // event onto its unsigned tail, and one saying "retention" would hide a deleted start. It
        // carries the audit key's signature of the cut (checked as it was read), or, written
        // before records were signed, the first checkpoint over it must be as old: a checkpoint a
        // node signed past a record a database writer chained would otherwise vouch for it.
        if (state.Anchor > 0 && !partial && (state.RetentionSequence is not { } retention || retention > state.LastSigned))
        {
            return Fail(state.Anchor + 1, state.RetentionSequence is { } uncovered
                ? $"the export starts after event {state.Anchor}, and the retention event {uncovered} that records a cut there is not covered by a signed checkpoint: events may have been removed from the start"
                : $"the export starts after event {state.Anchor}, but no retention event in the chain records a cut there: events were removed from the start");
        }

        if (state.Anchor > 0 && !partial && !state.RetentionSigned && !state.RetentionFirstCheckpointOlder)
        {
            return Fail(state.Anchor + 1, state.RetentionFirstCheckpoint is { } first
                ? $"the export starts after event {state.Anchor}, and the retention event {state.RetentionSequence} that records a cut there carries no signature of the cut, while checkpoint {first}, the first over it, was signed since records are signed (\"cuts\":\"signed\"): a database writer chained it; events may have been removed from the start"
                : $"the export starts after event {state.Anchor}, and the retention event {state.RetentionSequence} that records a cut there carries no signature of the cut, and no checkpoint in the export signed over it: events may have been removed from the start");
        }

        // Torn: not valid, since not verified to its end, but no bad sequence either.
        return torn > 0
            ? new AuditVerification(false, state.Events, state.Checkpoints, state.LastSigned, state.NextSequence - 1 - state.LastSigned, null, $"{tornLine}; everything before it verified, up to event {state.NextSequence - 1}", state.Anchor, torn, state.Restarts, state.Resends)
            : new AuditVerification(true, state.Events, state.Checkpoints, state.LastSigned, state.NextSequence - 1 - state.LastSigned, null, null, state.Anchor, StreamRestarts: state.Restarts, StreamResends: state.Resends);
    }

    private static string CutShort(int lineNumber) =>
        $"line {lineNumber} is malformed (not one whole JSON object, and the next line is no stream_resend or stream_restart line, which a run that starts after one killed mid-line writes first)";

    // Whether `cut` ({"seq":N,"head":"…","signature":"…"}) is the audit key's signature of the cut
    // through `sequence` with hash `head`: ECDSA P-256 over SHA-256 of
    // "kms signed statement v1" 0x00 "audit retention cut" 0x00 and the statement
    // {"v":1,"type":"retention-cut","key":"sha256:…","seq":N,"head":"…"} (docs/audit-format.md).
    private static bool CutSigned(JsonElement cut, long sequence, string head, ECDsa key, string fingerprint)
    {
        if (cut.ValueKind != JsonValueKind.Object || !cut.TryGetProperty("seq", out var seq) || !seq.TryGetInt64(out var n) || n != sequence
            || !cut.TryGetProperty("head", out var h) || h.ValueKind != JsonValueKind.String || h.GetString() != head
            || !cut.TryGetProperty("signature", out var s) || s.ValueKind != JsonValueKind.String)
        {
            return false;
        }

        var signature = new byte[64];
        if (!Convert.TryFromBase64String(s.GetString()!, signature, out var length) || length != 64)
        {
            return false;
        }

        var statement = $"{{\"v\":1,\"type\":\"retention-cut\",\"key\":\"{fingerprint}\",\"seq\":{sequence},\"head\":\"{head}\"}}";
        var digest = SHA256.HashData(Encoding.UTF8.GetBytes("kms signed statement v1\0audit retention cut\0" + statement));
        return key.VerifyHash(digest, signature);
    }

    private static bool Is(List<string> members, string first, string second) => members.Count == 2 && members[0] == first && members[1] == second;

    private sealed class State(long? knownSequence)
    {
        private readonly RecentHashes _recent = new(RecentEvents);

        private readonly List<AuditStreamRestart> _restarts = [];

        private string? _anchorHash;

        // The checkpoints verified over the anchor: what stays signed when a restart goes back to it.
        private long _anchorCheckpoints;

        private long _replacedEvents;

        private long _replacedCheckpoints;

        private long _resendCount;

        private long _resentEvents;

        // While events come again after a resend line: the next one expected, and the line's number.
        private long? _resendNext;

        private int _resendLine;

        /// <summary>The resends verified (null: none).</summary>
        public AuditStreamResends? Resends => _resendCount == 0 ? null : new(_resendCount, _resentEvents);

        /// <summary>How many stream restart lines were verified.</summary>
        public long RestartCount { get; private set; }

        /// <summary>The restarts verified (null: none).</summary>
        public AuditStreamRestarts? Restarts => RestartCount == 0 ? null : new(RestartCount, _replacedEvents, _replacedCheckpoints, [.. _restarts]);

        /// <summary>The hash at the known checkpoint's sequence, once the export reached it.</summary>
        public string? KnownHash { get; private set; }

        public long NextSequence { get; private set; } = 1;

        public long Events { get; private set; }

        public long Checkpoints { get; private set; }

        public long LastSigned { get; set; }

        private string _previous = Genesis;

        private bool _started;

        public bool AnchorSigned { get; private set; } = true;

        public long Anchor { get; private set; }

        public long? RetentionSequence { get; private set; }

        /// <summary>Whether the retention record at <see cref="RetentionSequence"/> carries a valid signature of its cut.</summary>
        public bool RetentionSigned { get; private set; }

        /// <summary>The first checkpoint verified at or after an unsigned retention record (null: none yet).</summary>
        public long? RetentionFirstCheckpoint { get; private set; }

        /// <summary>Whether that checkpoint was signed before records were signed (its body has no <c>"cuts":"signed"</c>).</summary>
        public bool RetentionFirstCheckpointOlder { get; private set; }

        public (long Sequence, string Message)? Header(JsonElement root)
        {
            if (_started)
            {
                return (NextSequence, "a second export header");
            }

            if (root.TryGetProperty("anchor", out var anchor) && anchor.ValueKind == JsonValueKind.Object)
            {
                // The export starts after pruned events: the anchor must be vouched for by a signed checkpoint.
                var sequence = anchor.GetProperty("seq").GetInt64();
                _previous = anchor.GetProperty("hash").GetString() ?? "";
                if (sequence < 0 || (sequence == 0 && _previous != Genesis))
                {
                    return (1, "the export's anchor is not a valid start of the chain");
                }

                NextSequence = sequence + 1;
                _anchorHash = _previous;
                KnownHash = sequence == knownSequence ? _previous : null;
                Anchor = sequence;
                AnchorSigned = sequence == 0;
            }

            _started = true;
            return null;
        }

        public (long Sequence, string Message)? Event(JsonElement body, JsonElement root, ECDsa key, string fingerprint)
        {
            _started = true;
            var digest = SHA256.HashData(Encoding.UTF8.GetBytes(body.GetRawText()));
            var hash = Convert.ToHexStringLower(digest);
            if (!body.TryGetProperty("seq", out var seqElement) || !seqElement.TryGetInt64(out var sequence))
            {
                return (NextSequence, "an event without a sequence number");
            }

            if (_resendNext is { } again && sequence <= NextSequence - 1)
            {
                return Again(sequence, again, hash, root);
            }

            if (sequence != NextSequence)
            {
                return (NextSequence, sequence > NextSequence
                    ? $"event {NextSequence} is missing (the next one is {sequence})"
                    : $"event {sequence} is out of order or repeated (expected {NextSequence})");
            }

            if (!AnchorSigned)
            {
                return (sequence, $"the export starts after event {sequence - 1}, but no signed checkpoint vouches for it");
            }

            if (!root.TryGetProperty("hash", out var stated) || stated.GetString() != hash)
            {
                return (sequence, $"event {sequence} does not match its hash: it was edited");
            }

            if (body.GetProperty("prev").GetString() != _previous)
            {
                // Either the earlier event was edited (and its hash recomputed) or this link was: name
                // the earlier, unless a checkpoint vouches for it.
                return (sequence - 1 <= LastSigned ? sequence : sequence - 1, $"the chain is broken between events {sequence - 1} and {sequence}: one of them was edited");
            }

            if (Anchor > 0 && RetentionSequence is null && body.GetProperty("operation").GetString() == "audit/Retention"
                && body.GetProperty("resource").GetString() == $"through:{Anchor}" && body.GetProperty("principal").GetString() == "system:retention"
                && body.GetProperty("outcome").GetString() == "OK")
            {
                // Retention's own record carries the audit key's signature of this very cut: the
                // export's anchor, by sequence and hash. One without "cut" is of the form written
                // before records were signed, judged at the first checkpoint over it.
                if (body.TryGetProperty("cut", out var cut))
                {
                    if (!CutSigned(cut, Anchor, _anchorHash ?? "", key, fingerprint))
                    {
                        return (Anchor + 1, $"the export starts after event {Anchor}, and the retention event {sequence} that records a cut there carries no signature of the audit key for that cut (forged, or copied from another cut or another deployment): events may have been removed from the start");
                    }

                    RetentionSigned = true;
                }

                RetentionSequence = sequence;
            }

            _resendNext = null; // past the events a resend line sent again (all of them, or it went on after fewer)
            _recent.Add(sequence, digest, LastSigned);
            KnownHash = sequence == knownSequence ? hash : KnownHash;
            _previous = hash;
            NextSequence = sequence + 1;
            Events++;
            return null;
        }

        public (long Sequence, string Message)? Checkpoint(JsonElement body, JsonElement root, ECDsa key, string fingerprint)
        {
            _started = true;
            var sequence = body.GetProperty("seq").GetInt64();
            if (!body.TryGetProperty("type", out var type) || type.GetString() != "checkpoint" || !body.TryGetProperty("v", out var version) || !version.TryGetInt32(out var v) || v != 1)
            {
                // Only a checkpoint body counts, whatever else the audit key might ever sign.
                return (sequence, $"checkpoint {sequence} is not a version-1 checkpoint body");
            }

            var signature = root.TryGetProperty("signature", out var s) ? Convert.FromBase64String(s.GetString() ?? "") : [];
            if (body.GetProperty("key").GetString() != fingerprint)
            {
                return (sequence, $"checkpoint {sequence} names another signing key ({body.GetProperty("key").GetString()})");
            }

            if (!key.VerifyHash(SHA256.HashData(Encoding.UTF8.GetBytes(body.GetRawText())), signature))
            {
                return (sequence, $"checkpoint {sequence} has no valid signature: it was forged or edited");
            }

            if (sequence >= NextSequence || sequence < Anchor || (sequence == Anchor && _anchorHash is null))
            {
                return (sequence, $"checkpoint {sequence} comes before its event in the export");
            }

            var hash = sequence == Anchor ? _anchorHash : _recent.Find(sequence);
            if (hash is null)
            {
                return (sequence, $"checkpoint {sequence} comes {NextSequence - 1 - sequence} events after its event: out of place (the server writes each checkpoint right after its event; this verifier checks one up to {RecentEvents - 1} events later)");
            }

            if (hash != body.GetProperty("head").GetString())
            {
                if (sequence == Anchor)
                {
                    return (Anchor + 1, $"the export's anchor (event {Anchor}'s hash, in its header) is not what checkpoint {Anchor} signed");
                }

                // A rewrite with every hash recomputed: it lies after the last checkpoint that still holds.
                var first = Math.Max(LastSigned, Anchor) + 1;
                return (first, $"events {first}..{sequence} differ from what checkpoint {sequence} signed: the log was rewritten");
            }

            if (sequence == NextSequence - 1)
            {
                AnchorSigned = true;
            }

            if (sequence == Anchor)
            {
                _anchorCheckpoints++;
            }
            else
            {
                _recent.Signed(sequence);
            }

            if (RetentionSequence is { } record && !RetentionSigned && RetentionFirstCheckpoint is null && sequence >= record)
            {
                RetentionFirstCheckpoint = sequence;
                RetentionFirstCheckpointOlder = !(body.TryGetProperty("cuts", out var cuts) && cuts.ValueKind == JsonValueKind.String && cuts.GetString() == "signed");
            }

            LastSigned = Math.Max(LastSigned, sequence);
            Checkpoints++;
            return null;
        }

        // A SIEM stream's restart line: the stream goes on after an earlier event, the database's
        // chain having been rolled back under it. It must replace the last event verified (the
        // last the stream was sent) and go on after one verified here, hash for hash; the chain
        // then goes back to that event, and what was signed after it no longer counts.
        public (long Sequence, string Message)? Restart(JsonElement restart, int lineNumber)
        {
            _started = true;
            if (Point(restart, "after") is not { } after || Point(restart, "replaced") is not { } replaced
                || restart.EnumerateObject().Select(p => p.Name).ToList() is not ["after", "replaced"])
            {
                return (NextSequence, $"line {lineNumber} is a malformed stream restart");
            }

            var position = NextSequence - 1;
            var (sent, sentHash) = _resendNext is { } next ? (next - 1, HashAt(next - 1)) : (position, _previous);
            if (replaced.Sequence != sent || replaced.Hash != sentHash)
            {
                return (NextSequence, $"line {lineNumber} restarts the stream replacing event {replaced.Sequence} ({replaced.Hash}), but the last event before it is {sent} ({sentHash}): a restart replaces the last event the stream was sent");
            }

            _resendNext = null;

            if (after.Sequence >= replaced.Sequence || after.Sequence < 0)
            {
                return (NextSequence, $"line {lineNumber} restarts the stream after event {after.Sequence}, which is not before the event it replaces ({replaced.Sequence})");
            }

            if (after.Sequence < Anchor)
            {
                return (NextSequence, $"line {lineNumber} restarts the stream after event {after.Sequence}, before this copy's start (it follows event {Anchor}): the event it goes on after is not in it to check (verify the part after the restart line as an export of its own)");
            }

            // The chain's start is every chain's, with or without a header.
            var known = after.Sequence == 0 ? Genesis : after.Sequence == Anchor ? _anchorHash : _recent.Find(after.Sequence);
            if (known is null)
            {
                return (NextSequence, $"line {lineNumber} restarts the stream after event {after.Sequence}, {position - after.Sequence} events back: this verifier keeps the hashes of the last {RecentEvents} events only, and cannot check it (verify the part after the restart line as an export of its own)");
            }

            if (known != after.Hash)
            {
                return (NextSequence, $"line {lineNumber} restarts the stream after event {after.Sequence} with hash {after.Hash}, but event {after.Sequence} verified here has hash {known}: the line was edited, or is not this stream's");
            }

            // Back to the event it goes on after: the events after it, and the checkpoints over them,
            // are replaced (back to the anchor: every checkpoint but the anchor's, those over events
            // the ring no longer holds among them).
            var held = _recent.TruncateAfter(after.Sequence);
            var replacedCheckpoints = after.Sequence == Anchor ? Checkpoints - _anchorCheckpoints : held;
            _replacedEvents += position - after.Sequence;
            _replacedCheckpoints += replacedCheckpoints;
            Events -= position - after.Sequence;
            Checkpoints -= replacedCheckpoints;
            LastSigned = after.Sequence != Anchor ? _recent.SignedThrough(after.Sequence) : _anchorCheckpoints > 0 ? Anchor : 0;
            RetentionSigned = RetentionSequence <= after.Sequence && RetentionSigned;
            RetentionSequence = RetentionSequence > after.Sequence ? null : RetentionSequence;
            (RetentionFirstCheckpoint, RetentionFirstCheckpointOlder) = RetentionFirstCheckpoint > after.Sequence ? (null, false) : (RetentionFirstCheckpoint, RetentionFirstCheckpointOlder);
            KnownHash = knownSequence > after.Sequence ? null : KnownHash;
            _previous = after.Hash;
            NextSequence = after.Sequence + 1;
            RestartCount++;
            if (_restarts.Count < MaxListedRestarts)
            {
                _restarts.Add(new AuditStreamRestart(lineNumber, after.Sequence, after.Hash, replaced.Sequence, replaced.Hash));
            }

            return null;
        }

        // A SIEM stream's resend line: the server went on after a crash from its position record,
        // which lags what it sent; the events after its event come again. Its event must be one
        // verified here, hash for hash, at or before the last one (after a later one, events between
        // were never sent: a gap); the events that come again must each be the one verified before
        // at its sequence, until the copy is past its last event (then it goes on as before). The
        // chain is not changed: nothing is replaced, and nothing counted twice.
        public (long Sequence, string Message)? Resend(JsonElement resend, int lineNumber)
        {
            _started = true;
            if (Point(resend, "after") is not { } after || resend.EnumerateObject().Select(p => p.Name).ToList() is not ["after"])
            {
                return (NextSequence, $"line {lineNumber} is a malformed stream resend");
            }

            var position = NextSequence - 1;
            if (after.Sequence > position || after.Sequence < 0)
            {
                return (NextSequence, after.Sequence > position
                    ? $"line {lineNumber} resends the stream after event {after.Sequence}, but the copy holds events through {position} only: events {NextSequence}..{after.Sequence} were never sent to it"
                    : $"line {lineNumber} is a malformed stream resend");
            }

            if (after.Sequence < Anchor)
            {
                return (NextSequence, $"line {lineNumber} resends the stream after event {after.Sequence}, before this copy's start (it follows event {Anchor}): the events sent again are not in it to compare");
            }

            var known = HashAt(after.Sequence);
            if (known is null)
            {
                return (NextSequence, $"line {lineNumber} resends the stream after event {after.Sequence}, {position - after.Sequence} events back: this verifier keeps the hashes of the last {RecentEvents} events only, and cannot check it");
            }

            if (known != after.Hash)
            {
                return (NextSequence, $"line {lineNumber} resends the stream after event {after.Sequence} with hash {after.Hash}, but event {after.Sequence} verified here has hash {known}: the line was edited, or is not this stream's");
            }

            _resendNext = after.Sequence < position ? after.Sequence + 1 : null;
            _resendLine = lineNumber;
            _resendCount++;
            return null;
        }

        // An event sent again after a resend line: the next one expected, the one verified before.
        private (long Sequence, string Message)? Again(long sequence, long expected, string hash, JsonElement root)
        {
            if (sequence != expected)
            {
                return (expected, $"event {sequence} is out of order or repeated after the resend line on line {_resendLine} (expected event {expected} again)");
            }

            if (!root.TryGetProperty("hash", out var stated) || stated.GetString() != hash || HashAt(sequence) != hash)
            {
                return (sequence, $"event {sequence}, sent again after the resend line on line {_resendLine}, is not the event {sequence} verified before it: it was edited");
            }

            _resentEvents++;
            _resendNext = sequence + 1 < NextSequence ? sequence + 1 : null;
            return null;
        }

        // The hash verified here at a sequence: the chain's start, the anchor, or a recent event; null: not kept.
        private string? HashAt(long sequence) =>
            sequence == 0 ? Genesis : sequence == Anchor ? _anchorHash : _recent.Find(sequence);

        // {"seq":N,"hash":"…"}, nothing else.
        private static (long Sequence, string Hash)? Point(JsonElement restart, string name) =>
            restart.TryGetProperty(name, out var point) && point.ValueKind == JsonValueKind.Object
            && point.EnumerateObject().Select(p => p.Name).ToList() is ["seq", "hash"]
            && point.GetProperty("seq") is { ValueKind: JsonValueKind.Number } seq && seq.TryGetInt64(out var sequence)
            && point.GetProperty("hash") is { ValueKind: JsonValueKind.String } hash
                ? (sequence, hash.GetString()!)
                : null;

        public AuditVerification Fail(long sequence, string problem) =>
            new(false, Events, Checkpoints, LastSigned, 0, sequence, problem, StreamRestarts: Restarts, StreamResends: Resends);
    }

    /// <summary>
    /// The hashes of the last events, by sequence number, in a ring that grows to at most
    /// <c>capacity</c> entries of 44 bytes: what a checkpoint or a stream restart later in the
    /// copy may refer to. With each, how many checkpoints were verified over it, and the newest
    /// checkpoint verified at or before it: what a restart that goes back to it replaces, and
    /// what is still signed after it.
    /// </summary>
    private sealed class RecentHashes(int capacity)
    {
        private byte[] _ring = new byte[32 * 64];
        private long[] _signedThrough = new long[64];
        private int[] _checkpoints = new int[64];
        private long _last;

        public int Count { get; private set; }

        private int Slots => _signedThrough.Length;

        /// <summary>Remembers the hash of event <paramref name="sequence"/>, the one after the last remembered, signed through <paramref name="signedThrough"/>.</summary>
        public void Add(long sequence, byte[] hash, long signedThrough)
        {
            if (Count == Slots && Slots < capacity)
            {
                var slots = Math.Min(Slots * 2, capacity);
                var (ring, signed, checkpoints) = (new byte[32 * slots], new long[slots], new int[slots]);
                for (var s = _last - Count + 1; s <= _last; s++)
                {
                    _ring.AsSpan(Slot(s, Slots) * 32, 32).CopyTo(ring.AsSpan(Slot(s, slots) * 32));
                    signed[Slot(s, slots)] = _signedThrough[Slot(s, Slots)];
                    checkpoints[Slot(s, slots)] = _checkpoints[Slot(s, Slots)];
                }

                (_ring, _signedThrough, _checkpoints) = (ring, signed, checkpoints);
            }

            var slot = Slot(sequence, Slots);
            hash.CopyTo(_ring, slot * 32);
            (_signedThrough[slot], _checkpoints[slot]) = (signedThrough, 0);
            _last = sequence;
            Count = Math.Min(Count + 1, Slots);
        }

        /// <summary>The hash of event <paramref name="sequence"/>; null when it is not among the last held.</summary>
        public string? Find(long sequence) =>
            Holds(sequence) ? Convert.ToHexStringLower(_ring.AsSpan(Slot(sequence, Slots) * 32, 32)) : null;

        /// <summary>A checkpoint over event <paramref name="sequence"/> (held) was verified: it and the events after it are signed through it.</summary>
        public void Signed(long sequence)
        {
            _checkpoints[Slot(sequence, Slots)]++;

            // Signed-through never falls along the ring: stop at the first event already signed this far.
            for (var s = sequence; s <= _last && _signedThrough[Slot(s, Slots)] < sequence; s++)
            {
                _signedThrough[Slot(s, Slots)] = sequence;
            }
        }

        /// <summary>The newest checkpoint verified at or before event <paramref name="sequence"/> (held); 0: none.</summary>
        public long SignedThrough(long sequence) => _signedThrough[Slot(sequence, Slots)];

        /// <summary>Forgets the events after <paramref name="sequence"/> (held, or the one before the oldest held); the checkpoints verified over them.</summary>
        public long TruncateAfter(long sequence)
        {
            long checkpoints = 0;
            for (var s = Math.Max(sequence + 1, _last - Count + 1); s <= _last; s++)
            {
                checkpoints += _checkpoints[Slot(s, Slots)];
            }

            Count = (int)Math.Max(0, Count - (_last - sequence));
            _last = sequence;
            return checkpoints;
        }

        private bool Holds(long sequence) => Count > 0 && sequence <= _last && sequence > _last - Count;

        private static int Slot(long sequence, int slots) => (int)(sequence % slots);
    }

    /// <summary>
    /// Reads lines as the server writes them and its other readers split them: a line ends at \n
    /// only (a \r right before it is part of the line end, \r\n, as is one at the end of the text),
    /// and a \r anywhere else stays in the line. Reads no more than <c>maxLength</c> characters of a
    /// line: a longer one sets <see cref="TooLong"/> instead of filling memory.
    /// </summary>
    private sealed class BoundedLineReader(TextReader reader, int maxLength)
    {
        private readonly char[] _buffer = new char[16 * 1024];
        private readonly System.Text.StringBuilder _line = new();
        private int _start;
        private int _end;

        /// <summary>The last line read was longer than the bound (and is returned empty).</summary>
        public bool TooLong { get; private set; }

        /// <summary>The last line read ended at the end of the text, without a line end.</summary>
        public bool Unterminated { get; private set; }

        public string? ReadLine()
        {
            _line.Clear();
            Unterminated = false;
            while (true)
            {
                if (_start == _end)
                {
                    _start = 0;
                    _end = reader.Read(_buffer, 0, _buffer.Length);
                    if (_end == 0)
                    {
                        Unterminated = _line.Length > 0;
                        return _line.Length > 0 ? Done() : null;
                    }
                }

                var chunk = _buffer.AsSpan(_start, _end - _start);
                var stop = chunk.IndexOf('\n');
                var take = stop < 0 ? chunk.Length : stop;

                // One more than the bound: the \r of a \r\n, which is not counted.
                if (_line.Length + take > maxLength + 1)
                {
                    TooLong = true;
                    return "";
                }

                _line.Append(chunk[..take]);
                _start += take;
                if (stop >= 0)
                {
                    _start++;
                    return Done();
                }
            }
        }

        // A \r at the line's end is the line end's (\r\n; after a last line, as JsonLines.IsWholeRecord takes it).
        private string Done()
        {
            var length = _line.Length > 0 && _line[^1] == '\r' ? _line.Length - 1 : _line.Length;
            if (length > maxLength)
            {
                TooLong = true;
                return "";
            }

            return _line.ToString(0, length);
        }
    }
}
