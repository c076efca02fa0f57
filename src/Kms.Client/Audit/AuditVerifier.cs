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
public sealed record AuditVerification(bool Valid, long Events, long Checkpoints, long LastSignedSequence, long UnsignedTail, long? FirstBadSequence, string? Problem, long AnchorSequence = 0, long TornTail = 0);

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
                return Fail(Math.Min(lastKnown.Sequence, state.NextSequence), $"the export ends before the known checkpoint at {lastKnown.Sequence}: events were removed from the tail");
            }

            if (hash != lastKnown.HeadHash)
            {
                return Fail(lastKnown.Sequence, $"event {lastKnown.Sequence} differs from the known checkpoint: the log was rewritten");
            }

            state.LastSigned = Math.Max(state.LastSigned, lastKnown.Sequence);
        }

        // The record of a cut counts only under a signature: anyone holding the file can chain an
        // event onto its unsigned tail, and one saying "retention" would hide a deleted start.
        if (state.Anchor > 0 && !partial && (state.RetentionSequence is not { } retention || retention > state.LastSigned))
        {
            return Fail(state.Anchor + 1, state.RetentionSequence is { } unsigned
                ? $"the export starts after event {state.Anchor}, and the retention event {unsigned} that records a cut there is not covered by a signed checkpoint: events may have been removed from the start"
                : $"the export starts after event {state.Anchor}, but no retention event in the chain records a cut there: events were removed from the start");
        }

        // Torn: not valid, since not verified to its end, but no bad sequence either.
        return torn > 0
            ? new AuditVerification(false, state.Events, state.Checkpoints, state.LastSigned, state.NextSequence - 1 - state.LastSigned, null, $"{tornLine}; everything before it verified, up to event {state.NextSequence - 1}", state.Anchor, torn)
            : new AuditVerification(true, state.Events, state.Checkpoints, state.LastSigned, state.NextSequence - 1 - state.LastSigned, null, null, state.Anchor);
    }

    private static bool Is(List<string> members, string first, string second) => members.Count == 2 && members[0] == first && members[1] == second;

    private sealed class State(long? knownSequence)
    {
        private readonly RecentHashes _recent = new(RecentEvents);

        private string? _anchorHash;

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

        public (long Sequence, string Message)? Event(JsonElement body, JsonElement root)
        {
            _started = true;
            var digest = SHA256.HashData(Encoding.UTF8.GetBytes(body.GetRawText()));
            var hash = Convert.ToHexStringLower(digest);
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

            _recent.Add(sequence, digest);
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

            LastSigned = Math.Max(LastSigned, sequence);
            Checkpoints++;
            return null;
        }

        public AuditVerification Fail(long sequence, string problem) =>
            new(false, Events, Checkpoints, LastSigned, 0, sequence, problem);
    }

    /// <summary>
    /// The hashes of the last events, by sequence number, in a ring that grows to at most
    /// <c>capacity</c> entries of 32 bytes: what a checkpoint later in the export may refer to.
    /// </summary>
    private sealed class RecentHashes(int capacity)
    {
        private byte[] _ring = new byte[32 * 64];
        private long _last;

        public int Count { get; private set; }

        private int Slots => _ring.Length / 32;

        /// <summary>Remembers the hash of event <paramref name="sequence"/>, the one after the last remembered.</summary>
        public void Add(long sequence, byte[] hash)
        {
            if (Count == Slots && Slots < capacity)
            {
                var grown = new byte[Math.Min(_ring.Length * 2, 32 * capacity)];
                for (var s = _last - Count + 1; s <= _last; s++)
                {
                    _ring.AsSpan(Slot(s, Slots), 32).CopyTo(grown.AsSpan(Slot(s, grown.Length / 32)));
                }

                _ring = grown;
            }

            hash.CopyTo(_ring, Slot(sequence, Slots));
            _last = sequence;
            Count = Math.Min(Count + 1, Slots);
        }

        /// <summary>The hash of event <paramref name="sequence"/>; null when it is not among the last held.</summary>
        public string? Find(long sequence) =>
            Count > 0 && sequence <= _last && sequence > _last - Count
                ? Convert.ToHexStringLower(_ring.AsSpan(Slot(sequence, Slots), 32))
                : null;

        private static int Slot(long sequence, int slots) => (int)(sequence % slots) * 32;
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
