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
public sealed record AuditVerification(bool Valid, long Events, long Checkpoints, long LastSignedSequence, long UnsignedTail, long? FirstBadSequence, string? Problem, long AnchorSequence = 0);

/// <summary>
/// Verifies an audit export (JSON lines, docs/audit-format.md) offline: every event's hash
/// and its link to the one before, sequence numbers without gaps, every checkpoint's
/// signature against the pinned audit public key and its head against the chain, and, if
/// given, a checkpoint known from outside (detects tail truncation and rewrites by whoever
/// holds the database). Independent of the server's implementation of the same format.
/// </summary>
public static class AuditVerifier
{
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

        var state = new State();
        string? line;
        var lineNumber = 0;
        while ((line = export.ReadLine()) is not null)
        {
            lineNumber++;
            if (line.Length == 0)
            {
                continue;
            }

            try
            {
                using var document = JsonDocument.Parse(line, Strict);
                var root = document.RootElement;
                var members = root.ValueKind == JsonValueKind.Object ? root.EnumerateObject().Select(p => p.Name).ToList() : [];
                var problem = Is(members, "event", "hash") ? state.Event(root.GetProperty("event"), root)
                    : Is(members, "checkpoint", "signature") ? state.Checkpoint(root.GetProperty("checkpoint"), root, key, fingerprint)
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

        if (!state.AnchorSigned)
        {
            return state.Fail(state.Anchor + 1, $"the export starts after event {state.Anchor}, but no signed checkpoint vouches for it");
        }

        if (lastKnown is not null)
        {
            if (lastKnown.Sequence < state.Anchor)
            {
                return state.Fail(lastKnown.Sequence, $"the known checkpoint at {lastKnown.Sequence} lies before this export's start ({state.Anchor}); it cannot be checked here");
            }

            if (!state.Hashes.TryGetValue(lastKnown.Sequence, out var hash))
            {
                return state.Fail(Math.Min(lastKnown.Sequence, state.NextSequence), $"the export ends before the known checkpoint at {lastKnown.Sequence}: events were removed from the tail");
            }

            if (hash != lastKnown.HeadHash)
            {
                return state.Fail(lastKnown.Sequence, $"event {lastKnown.Sequence} differs from the known checkpoint: the log was rewritten");
            }

            state.LastSigned = Math.Max(state.LastSigned, lastKnown.Sequence);
        }

        // The record of a cut counts only under a signature: anyone holding the file can chain an
        // event onto its unsigned tail, and one saying "retention" would hide a deleted start.
        if (state.Anchor > 0 && !partial && (state.RetentionSequence is not { } retention || retention > state.LastSigned))
        {
            return state.Fail(state.Anchor + 1, state.RetentionSequence is { } unsigned
                ? $"the export starts after event {state.Anchor}, and the retention event {unsigned} that records a cut there is not covered by a signed checkpoint: events may have been removed from the start"
                : $"the export starts after event {state.Anchor}, but no retention event in the chain records a cut there: events were removed from the start");
        }

        return new AuditVerification(true, state.Events, state.Checkpoints, state.LastSigned, state.NextSequence - 1 - state.LastSigned, null, null, state.Anchor);
    }

    private static bool Is(List<string> members, string first, string second) => members.Count == 2 && members[0] == first && members[1] == second;

    private sealed class State
    {
        public Dictionary<long, string> Hashes { get; } = [];

        public long NextSequence { get; private set; } = 1;

        public long Events { get; private set; }

        public long Checkpoints { get; private set; }

        public long LastSigned { get; set; }

        private string _previous = Genesis;

        private bool _started;

        public bool AnchorSigned { get; private set; } = true;

        public long Anchor { get; private set; }

        public long? RetentionSequence { get; private set; }

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
                Hashes[sequence] = _previous;
                Anchor = sequence;
                AnchorSigned = sequence == 0;
            }

            _started = true;
            return null;
        }

        public (long Sequence, string Message)? Event(JsonElement body, JsonElement root)
        {
            _started = true;
            var raw = Encoding.UTF8.GetBytes(body.GetRawText());
            var hash = Convert.ToHexStringLower(SHA256.HashData(raw));
            if (!body.TryGetProperty("seq", out var seqElement) || !seqElement.TryGetInt64(out var sequence))
            {
                return (NextSequence, "an event without a sequence number");
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
                RetentionSequence = sequence;
            }

            Hashes[sequence] = hash;
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

            if (!Hashes.TryGetValue(sequence, out var hash))
            {
                return (sequence, $"checkpoint {sequence} comes before its event in the export");
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

            LastSigned = Math.Max(LastSigned, sequence);
            Checkpoints++;
            return null;
        }

        public AuditVerification Fail(long sequence, string problem) =>
            new(false, Events, Checkpoints, LastSigned, 0, sequence, problem);
    }
}
