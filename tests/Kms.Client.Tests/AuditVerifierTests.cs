using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Kms.Client.Audit;
using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests;

/// <summary>
/// The client's verifier (an independent implementation of docs/audit-format.md) against
/// exports written by the server's AuditLog: an intact export verifies; every kind of
/// tampering is detected and the first bad sequence number named.
/// </summary>
public sealed partial class AuditVerifierTests : IDisposable
{
    private readonly FakeHsm _hsm = new();
    private readonly InMemoryStore _store = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private readonly AuditLog _log;

    public AuditVerifierTests() => _log = new AuditLog(_store, _store, _hsm, _time, new AuditOptions());

    public void Dispose() => _hsm.Dispose();

    [Fact]
    public async Task IntactExport_Verifies_AndReportsTheUnsignedTail()
    {
        var lines = await BuildAsync();
        var result = Verify(lines);
        Assert.True(result.Valid, result.Problem);
        Assert.Equal((12L, 2L, 10L, 2L), (result.Events, result.Checkpoints, result.LastSignedSequence, result.UnsignedTail));
    }

    [Fact]
    public async Task EditedEvent_HashKept_NamesThatEvent()
    {
        var lines = await BuildAsync();
        Replace(lines, 7, l => l.Replace("\"outcome\":\"OK\"", "\"outcome\":\"PERMISSION_DENIED\"", StringComparison.Ordinal));
        AssertFails(lines, 7, "edited");
    }

    [Fact]
    public async Task EditedEvent_HashRecomputed_NamesThatEvent()
    {
        var lines = await BuildAsync();
        Replace(lines, 7, l => Rehash(l.Replace("\"req-7\"", "\"req-x\"", StringComparison.Ordinal)));
        AssertFails(lines, 7, "chain is broken");
    }

    [Fact]
    public async Task EditedEvent_WholeTailRechained_CaughtByTheSignedCheckpoint()
    {
        var lines = await BuildAsync();

        // Whoever holds the database rewrites event 7 and re-links everything after it; only the signature is beyond reach.
        var previous = HashOf(lines, 6);
        for (var seq = 7; seq <= 12; seq++)
        {
            Replace(lines, seq, l =>
            {
                var edited = PrevPattern().Replace(l, $"\"prev\":\"{previous}\"");
                edited = seq == 7 ? edited.Replace("\"req-7\"", "\"req-x\"", StringComparison.Ordinal) : edited;
                edited = Rehash(edited);
                previous = HashPattern().Match(edited).Groups[1].Value;
                return edited;
            });
        }

        AssertFails(lines, 6, "rewritten");
    }

    [Fact]
    public async Task DeletedEvent_NamesTheGap()
    {
        var lines = await BuildAsync();
        lines.RemoveAt(IndexOfEvent(lines, 4));
        AssertFails(lines, 4, "missing");
    }

    [Fact]
    public async Task ReorderedEvents_NameTheFirstOutOfPlace()
    {
        var lines = await BuildAsync();
        var i = IndexOfEvent(lines, 3);
        var j = IndexOfEvent(lines, 4);
        (lines[i], lines[j]) = (lines[j], lines[i]);
        AssertFails(lines, 3, "missing");
    }

    [Fact]
    public async Task ForgedCheckpoint_SignatureFails()
    {
        var lines = await BuildAsync();
        var i = lines.FindIndex(l => l.StartsWith("{\"checkpoint\":", StringComparison.Ordinal) && l.Contains("\"seq\":5,", StringComparison.Ordinal));
        lines[i] = lines[i].Replace("\"seq\":5,", "\"seq\":4,", StringComparison.Ordinal);
        AssertFails(lines, 4, "signature");
    }

    [Fact]
    public async Task CheckpointSignedByAnotherKey_Refused()
    {
        var lines = await BuildAsync();
        using var other = new FakeHsm();
        var otherLog = new AuditLog(_store, new InMemoryStore(), other, _time, new AuditOptions());
        await otherLog.InitializeAsync(default);
        var forged = await otherLog.CheckpointAsync(default);
        lines.Add(AuditExport.Checkpoint(forged!));
        AssertFails(lines, 12, "another signing key");
    }

    [Fact]
    public async Task TailTruncation_OnlyDetectedAgainstAKnownCheckpoint()
    {
        var lines = await BuildAsync();
        var known = new KnownCheckpoint(12, HashOf(lines, 12));
        lines.RemoveRange(IndexOfEvent(lines, 11), lines.Count - IndexOfEvent(lines, 11));

        Assert.True(Verify(lines).Valid, "unsigned events at the tail cannot be missed without outside knowledge");
        var result = Verify(lines, known);
        Assert.False(result.Valid);
        Assert.Equal(11, result.FirstBadSequence);
        Assert.Contains("tail", result.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TornLastLine_EverythingBeforeItVerified_ReportedAsTornNotAsABadEvent_NotValid()
    {
        // A copy of the SIEM stream taken while the server appended to it, or after a crash: the
        // last line stops short. Refusing the whole export for it ("malformed") hid that all the
        // rest verified; accepting it would call unread bytes verified.
        var lines = await BuildAsync();
        lines[^1] = lines[^1][..40];

        var result = Verify(lines);

        Assert.False(result.Valid);
        Assert.Null(result.FirstBadSequence);
        Assert.Equal((11L, 2L, 10L, 1L), (result.Events, result.Checkpoints, result.LastSignedSequence, result.UnsignedTail));
        Assert.Equal("its last line is torn (40 characters without a line end: a copy taken while it was written, or a crash) and was not read; everything before it verified, up to event 11", result.Problem);
    }

    [Fact]
    public async Task TornLastLine_LengthReported_ATornLineBeforeTheEndIsMalformed_AKnownCheckpointBeyondItStillFails()
    {
        var lines = await BuildAsync();
        var known = new KnownCheckpoint(12, HashOf(lines, 12));
        lines[^1] = lines[^1][..40];
        Assert.Equal(40, Verify(lines).TornTail);

        // What lies past the torn line cannot be vouched for: the known checkpoint there fails, and says why.
        var beyond = Verify(lines, known);
        Assert.False(beyond.Valid);
        Assert.Equal(12, beyond.FirstBadSequence);
        Assert.EndsWith("events were removed from the tail; its last line is torn (40 characters without a line end: a copy taken while it was written, or a crash) and was not read", beyond.Problem, StringComparison.Ordinal);

        // Only the very last line, without a line end, can be torn.
        lines.Add("");
        AssertFails(lines, 12, "malformed");
    }

    [Fact]
    public async Task PrunedLog_ExportStartsAtTheAnchoringCheckpoint_AndVerifies()
    {
        await BuildAsync();
        Assert.Equal(5, await _log.PruneThroughAsync(5, default));
        var lines = await ExportAsync();
        Assert.Contains("\"anchor\":{\"seq\":5,", lines[0], StringComparison.Ordinal);
        var result = Verify(lines);
        Assert.True(result.Valid, result.Problem);
        Assert.Equal((8L, 5L), (result.Events, result.AnchorSequence));

        // Without the anchoring checkpoint the start of the export is vouched for by nobody.
        lines.RemoveAt(1);
        AssertFails(lines, 6, "no signed checkpoint");
    }

    [Fact]
    public async Task StartCutBackToACheckpoint_WithoutARetentionRecord_Detected()
    {
        // Whoever holds the database deletes the oldest events back to a (public) checkpoint.
        await BuildAsync();
        Assert.Equal(10, (await _store.PruneAuditAsync(10, default)).Events);
        var lines = await ExportAsync();
        var result = Verify(lines);
        Assert.False(result.Valid);
        Assert.Equal(11, result.FirstBadSequence);
        Assert.Contains("removed from the start", result.Problem, StringComparison.Ordinal);

        // A partial export (asked to start later) is judged on its signed start alone.
        Assert.True(Verify(lines, partial: true).Valid);
    }

    [Fact]
    public async Task StartCut_RetentionEventChainedOntoTheUnsignedTail_Detected_EvenWithTheKnownCheckpoint()
    {
        // Whoever holds only the export deletes events 1..10, starts it at checkpoint 10 and chains
        // a "retention" event of its own onto the tail: the chain needs no key, a checkpoint does.
        var head10 = HashOf(await BuildAsync(), 10);
        await _store.PruneAuditAsync(10, default);
        var lines = await ExportAsync();
        var forged = AuditChain.Link(new AuditHead(12, HashOf(lines, 12)), new AuditEntry
        {
            Time = _time.GetUtcNow(),
            RequestId = "forged",
            Principal = "system:retention",
            Operation = AuditChain.RetentionOperation,
            Resource = AuditChain.RetentionResource(10),
            Outcome = "OK",
        });
        lines.Add(AuditExport.Event(forged));

        AssertFails(lines, 11, "retention event 13 that records a cut there is not covered by a signed checkpoint");
        var known = Verify(lines, new KnownCheckpoint(10, head10));
        Assert.False(known.Valid);
        Assert.Equal(11, known.FirstBadSequence);

        // The server's own cut signs its record before deleting anything, so a real export verifies.
        var real = new InMemoryStore();
        var log = new AuditLog(real, real, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        for (var i = 1; i <= 6; i++)
        {
            await real.AppendAuditAsync([Entry(i)], default);
        }

        Assert.NotNull(await log.CheckpointAsync(default));
        Assert.Equal(6, await log.PruneThroughAsync(6, default));
        var exported = new List<string>();
        await foreach (var line in log.ExportAsync(0, default))
        {
            exported.Add(line);
        }

        var verified = AuditVerifier.Verify(new StringReader(string.Join('\n', exported)), log.PublicKey);
        Assert.True(verified.Valid, verified.Problem);
        Assert.Equal((1L, 0L), (verified.Events, verified.UnsignedTail));
    }

    [Fact]
    public async Task LinkEditedRightAfterACheckpoint_NamesTheEventAfterIt_AnchorHashEdited_NamesTheExportsStart()
    {
        var lines = await BuildAsync();
        Replace(lines, 6, l => Rehash(PrevPattern().Replace(l, "\"prev\":\"" + new string('e', 64) + "\"")));
        AssertFails(lines, 6, "chain is broken between events 5 and 6");

        await _log.PruneThroughAsync(5, default);
        var pruned = await ExportAsync();
        pruned[0] = pruned[0].Replace(HashOf(lines, 5), new string('e', 64), StringComparison.Ordinal);
        AssertFails(pruned, 6, "the export's anchor");
    }

    [Fact]
    public async Task SignedBodyThatIsNoCheckpoint_Refused()
    {
        // Signed by the audit key over plain SHA-256, but not a checkpoint body: counts for nothing.
        var lines = await BuildAsync();
        var i = lines.FindIndex(l => l.StartsWith("{\"checkpoint\":", StringComparison.Ordinal) && l.Contains("\"seq\":10,", StringComparison.Ordinal));
        var body = "{\"v\":1,\"type\":\"statement\",\"seq\":10,\"head\":\"" + HashOf(lines, 10) + "\",\"time\":\"2026-11-29T12:00:10.000Z\",\"key\":\"" + AuditChain.Fingerprint(_log.PublicKey) + "\"}";
        var signature = await _hsm.SignEcdsaAsync(await HsmSigningKeyAsync(), Kms.Core.Ports.EcCurve.P256, SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(body)), default);
        lines[i] = "{\"checkpoint\":" + body + ",\"signature\":\"" + Convert.ToBase64String(signature) + "\"}";
        AssertFails(lines, 10, "not a version-1 checkpoint body");
    }

    [Fact]
    public async Task HeaderOnly_OrUnsignedAnchor_OrGenesisForged_NotValid()
    {
        var lines = await BuildAsync();
        var header = lines[0].Replace("\"anchor\":{\"seq\":0,", "\"anchor\":{\"seq\":12,", StringComparison.Ordinal);
        AssertFails([header], 13, "no signed checkpoint");
        var forgedGenesis = lines[0].Replace(new string('0', 64), new string('1', 64), StringComparison.Ordinal);
        AssertFails([forgedGenesis, .. lines.Skip(1)], 1, "anchor");
    }

    [Fact]
    public async Task DuplicateMembers_ExtraMembers_OrMalformedLines_NotValid_NeverThrow()
    {
        var lines = await BuildAsync();
        var i = IndexOfEvent(lines, 3);
        var original = lines[i];
        lines[i] = original[..^1] + ",\"event\":{}}";
        AssertFails(lines, 3, "malformed");
        lines[i] = original[..^1] + ",\"note\":\"x\"}";
        AssertFails(lines, 3, "neither an event nor a checkpoint");
        foreach (var bad in new[] { "{\"event\":{\"seq\":\"3\"},\"hash\":\"x\"}", "{\"checkpoint\":{\"seq\":1},\"signature\":\"!!\"}", "[1,2]", "not json" })
        {
            lines[i] = bad;
            Assert.False(Verify(lines).Valid, bad);
        }
    }

    // An aggregated refusal's body has two more members (the resources its requests named, with
    // counts, and how many named another): the verifier hashes the bytes as written, escaped names
    // included, and an edited count breaks the chain like any edit.
    [Fact]
    public async Task AggregatedRefusalWithItsResources_Verifies_AndAnEditedCountIsCaught()
    {
        await _log.InitializeAsync(default);
        await _store.AppendAuditAsync([Entry(1)], default);
        await _store.AppendAuditAsync(
            [Entry(2) with
            {
                RequestId = "aggregated",
                Outcome = "PERMISSION_DENIED",
                Count = 40,
                LastTime = _time.GetUtcNow().AddSeconds(9),
                Resources = [KeyValuePair.Create("tenants/dev/keys/\"quoted\"", 30L), KeyValuePair.Create("tenants/dev/keys/clé-ü", 3L), KeyValuePair.Create("tenants/dev/keys/a", 2L)],
                OtherResources = 5,
            }],
            default);
        await _store.AppendAuditAsync([Entry(3)], default);
        Assert.NotNull(await _log.CheckpointAsync(default));
        var lines = await ExportAsync();

        var result = Verify(lines);
        Assert.True(result.Valid, result.Problem);
        Assert.Equal((3L, 3L), (result.Events, result.LastSignedSequence));
        Assert.Contains("\"resources\":{\"tenants/dev/keys/\\u0022quoted\\u0022\":30,\"tenants/dev/keys/a\":2,\"tenants/dev/keys/cl\\u00E9-\\u00FC\":3},\"other_resources\":5}", lines[IndexOfEvent(lines, 2)], StringComparison.Ordinal);

        Replace(lines, 2, l => l.Replace("\"other_resources\":5", "\"other_resources\":0", StringComparison.Ordinal));
        AssertFails(lines, 2, "edited");
    }

    [Fact]
    public async Task WrongPinnedKey_NothingVerifies()
    {
        var lines = await BuildAsync();
        using var stranger = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', lines)), stranger.ExportSubjectPublicKeyInfo());
        Assert.False(result.Valid);
        Assert.Contains("another signing key", result.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PinnedKeyThatIsNoP256Key_ArgumentException()
    {
        var lines = await BuildAsync();
        using var p384 = ECDsa.Create(ECCurve.NamedCurves.nistP384);
        var unknownCurve = p384.ExportSubjectPublicKeyInfo();
        unknownCurve[unknownCurve.AsSpan().IndexOf(new byte[] { 0x2B, 0x81, 0x04, 0x00, 0x22 })] = 0x2A; // secp384r1 → an OID no platform knows
        foreach (var key in new[] { [], "not a key"u8.ToArray(), p384.ExportSubjectPublicKeyInfo(), unknownCurve })
        {
            var e = Assert.Throws<ArgumentException>(() => AuditVerifier.Verify(new StringReader(string.Join('\n', lines)), key));
            Assert.Equal("publicKey", e.ParamName);
        }
    }

    [Fact]
    public async Task LineLongerThanTheBound_Malformed_NotReadToItsEnd()
    {
        // A line without end would otherwise be read into one string until memory runs out.
        var lines = await BuildAsync();
        var prefix = string.Join('\n', lines.Take(3)) + "\n";
        using var endless = new EndlessLineReader(prefix + "{\"event\":{\"v\":1,\"seq\":1,\"note\":\"", 'a', 64L << 20);

        var result = AuditVerifier.Verify(endless, _log.PublicKey);

        Assert.False(result.Valid);
        Assert.Equal($"line 4 is malformed (longer than {AuditVerifier.MaxLineLength} characters)", result.Problem);
        Assert.True(endless.CharactersRead < 2 * AuditVerifier.MaxLineLength, $"{endless.CharactersRead:N0} characters read");

        // The bound itself is a line's length, its end not counted.
        var atTheBound = new string('x', AuditVerifier.MaxLineLength);
        Assert.DoesNotContain("longer than", Verify([.. lines.Take(3), atTheBound + "\r"]).Problem, StringComparison.Ordinal);
        Assert.Contains("(longer than", Verify([.. lines.Take(3), atTheBound + "x"]).Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task LineEndings_LfAndCrLf_ReadAsLines_ALoneCr_EndsNoLine()
    {
        var lines = await BuildAsync();

        Assert.True(AuditVerifier.Verify(new StringReader(string.Join("\r\n", lines) + "\r\n"), _log.PublicKey).Valid);
        Assert.True(AuditVerifier.Verify(new StringReader(string.Join("\r\n", lines) + "\r"), _log.PublicKey).Valid);

        // Lines joined by a lone CR are one line, as the server's restore splits them (DestructionReplay.SplitLines), not a valid export.
        var joined = string.Join("\r", lines);
        var (restoreLines, restoreTorn) = Kms.Core.Backup.DestructionReplay.SplitLines(joined + "\n");
        Assert.Equal([joined], restoreLines);
        Assert.Null(restoreTorn);
        var result = AuditVerifier.Verify(new StringReader(joined + "\n"), _log.PublicKey);
        Assert.False(result.Valid);
        Assert.Equal((1L, "line 1 is malformed (a carriage return inside it, which the server never writes)"), (result.FirstBadSequence!.Value, result.Problem));
    }

    public static TheoryData<string, string, string> LoneCarriageReturns() => new()
    {
        // where, the text replaced in event 7's line, its replacement (with a raw CR)
        { "between event 6's line and event 7's, the line feed replaced", "\n", "\r" },
        { "inside a string of event 7", "\"req-7\"", "\"req\r-7\"" },
        { "between members of event 7 (JSON whitespace)", "\"seq\":7,", "\"seq\":7,\r" },
        { "between event 7 and its hash (JSON whitespace)", "},\"hash\"", "},\r\"hash\"" },
    };

    [Theory]
    [MemberData(nameof(LoneCarriageReturns))]
    public async Task EventLineWithALoneCr_ThatRecordIsBad_NotSplitInTwo(string where, string find, string replacement)
    {
        // JSON escapes a CR in a string and the server writes no whitespace: a raw CR is an alteration.
        var lines = await BuildAsync();
        var text = string.Join('\n', lines) + "\n";
        var line7 = lines[IndexOfEvent(lines, 7)];
        var at = find == "\n" ? text.IndexOf(line7, StringComparison.Ordinal) - 1 : text.IndexOf(line7, StringComparison.Ordinal) + line7.IndexOf(find, StringComparison.Ordinal);
        Assert.True(at >= 0 && text.AsSpan(at).StartsWith(find, StringComparison.Ordinal), $"{where}: {find} not in event 7's line");
        var altered = string.Concat(text.AsSpan(0, at), replacement, text.AsSpan(at + find.Length));

        var result = AuditVerifier.Verify(new StringReader(altered), _log.PublicKey);

        Assert.False(result.Valid, where);
        var expected = find == "\n" ? 6L : 7L; // joined to event 6's line, the record on it is event 6's
        Assert.True(expected == result.FirstBadSequence, $"{where}: first bad {result.FirstBadSequence}, {result.Problem}");
        Assert.Contains("a carriage return inside it", result.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void CheckpointFarAfterItsEvent_OutOfPlace_NotKeptInMemoryFor()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var publicKey = key.ExportSubjectPublicKeyInfo();

        // The server writes a checkpoint right after its event; up to RecentEvents later still verifies.
        using var late = new SyntheticAuditExport(key, 70_000, 1_000, checkpointDelay: AuditVerifier.RecentEvents - 1);
        var verified = AuditVerifier.Verify(late, publicKey);
        Assert.True(verified.Valid, verified.Problem);
        Assert.Equal(70L, verified.Checkpoints);

        using var tooLate = new SyntheticAuditExport(key, 70_000, 1_000, checkpointDelay: AuditVerifier.RecentEvents);
        var refused = AuditVerifier.Verify(tooLate, publicKey);
        Assert.False(refused.Valid);
        Assert.Equal(1_000, refused.FirstBadSequence);
        Assert.Contains($"checkpoint 1000 comes {AuditVerifier.RecentEvents} events after its event: out of place", refused.Problem, StringComparison.Ordinal);
    }

    // Twelve events, checkpoints at 5 and 10.
    private async Task<List<string>> BuildAsync()
    {
        await _log.InitializeAsync(default);
        for (var i = 1; i <= 12; i++)
        {
            _time.Advance(TimeSpan.FromSeconds(1));
            await _store.AppendAuditAsync([Entry(i)], default);
            if (i % 5 == 0)
            {
                Assert.NotNull(await _log.CheckpointAsync(default));
            }
        }

        return await ExportAsync();
    }

    private async Task<List<string>> ExportAsync()
    {
        var lines = new List<string>();
        await foreach (var line in _log.ExportAsync(0, default))
        {
            lines.Add(line);
        }

        return lines;
    }

    private AuditEntry Entry(int i) => new()
    {
        Time = _time.GetUtcNow(),
        RequestId = $"req-{i}",
        Principal = i % 2 == 0 ? "token:alice" : "token:bob",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/Encrypt",
        Resource = "tenants/dev/keys/k",
        Outcome = "OK",
        Client = "ipv4:127.0.0.1:5000",
        Context = [KeyValuePair.Create("record", _log.HashContextValue("42"))],
    };

    // The audit signing key, as the audit log stored it (wrapped; the fake HSM unwraps it to sign).
    private async Task<Kms.Core.Ports.KeyMaterialRef> HsmSigningKeyAsync()
    {
        using var stored = System.Text.Json.JsonDocument.Parse((await _store.GetSettingAsync("audit.signing-key.v1", default))!);
        var wrapped = Convert.FromBase64String(stored.RootElement.GetProperty("Wrapped").GetString()!);
        return new Kms.Core.Ports.KeyMaterialRef(Kms.Core.Keys.KeyVersionId.NewId(), new Kms.Core.Crypto.WrappedKeyMaterial(wrapped));
    }

    private AuditVerification Verify(List<string> lines, KnownCheckpoint? known = null, bool partial = false) =>
        AuditVerifier.Verify(new StringReader(string.Join('\n', lines)), _log.PublicKey, known, partial);

    private void AssertFails(List<string> lines, long firstBad, string problem)
    {
        var result = Verify(lines);
        Assert.False(result.Valid);
        Assert.Equal(firstBad, result.FirstBadSequence);
        Assert.Contains(problem, result.Problem, StringComparison.Ordinal);
    }

    private static int IndexOfEvent(List<string> lines, long seq) =>
        lines.FindIndex(l => l.StartsWith($"{{\"event\":{{\"v\":1,\"seq\":{seq},", StringComparison.Ordinal));

    private static void Replace(List<string> lines, long seq, Func<string, string> edit)
    {
        var i = IndexOfEvent(lines, seq);
        lines[i] = edit(lines[i]);
    }

    private static string HashOf(List<string> lines, long seq) => HashPattern().Match(lines[IndexOfEvent(lines, seq)]).Groups[1].Value;

    // Recomputes an event line's hash over its (edited) body, as a forger would.
    private static string Rehash(string line)
    {
        var body = line["{\"event\":".Length..line.LastIndexOf(",\"hash\":", StringComparison.Ordinal)];
        return AuditExport.Event(new AuditEvent(0, null!, "", AuditChain.HashOf(body), body));
    }

    [GeneratedRegex("\"hash\":\"([0-9a-f]{64})\"}$")]
    private static partial Regex HashPattern();

    [GeneratedRegex("\"prev\":\"[0-9a-f]{64}\"")]
    private static partial Regex PrevPattern();
}

/// <summary>A reader of a prefix and then one line of <c>length</c> copies of a character, without end; counts what was read.</summary>
internal sealed class EndlessLineReader(string prefix, char filler, long length) : TextReader
{
    private long _position;

    public long CharactersRead => _position;

    public override int Read(char[] buffer, int index, int count)
    {
        var n = (int)Math.Min(count, prefix.Length + length - _position);
        for (var i = 0; i < n; i++, _position++)
        {
            buffer[index + i] = _position < prefix.Length ? prefix[(int)_position] : filler;
        }

        return n;
    }

    public override string? ReadLine()
    {
        // TextReader.ReadLine reads a character at a time: as slow as it is faithful.
        var line = new System.Text.StringBuilder();
        var buffer = new char[1];
        while (Read(buffer, 0, 1) == 1)
        {
            if (buffer[0] == '\n')
            {
                return line.ToString();
            }

            line.Append(buffer[0]);
        }

        return line.Length > 0 ? line.ToString() : null;
    }

    public override int Read() => throw new NotSupportedException("read in blocks or lines");
}
