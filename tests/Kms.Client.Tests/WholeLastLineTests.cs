using System.Security.Cryptography;
using System.Text;
using Kms.Client.Audit;
using Kms.Core.Backup;
using Kms.Core.Files;

namespace Kms.Client.Tests;

/// <summary>
/// The three places that decide whether the last line of a log of records (no line feed after
/// it) is whole or torn — the writer (<see cref="DurableFile.Append(string, ReadOnlySpan{byte}, UnixFileMode)"/>,
/// which ends a whole one and cuts a torn one), the verifier (<see cref="AuditVerifier"/>'s
/// torn tail) and the restore's reader (<see cref="DestructionReplay.SplitLines"/>) — decide
/// alike: a line the writer would end, no reader calls torn, and a line the writer would cut, no
/// reader reads as a record.
/// </summary>
public sealed class WholeLastLineTests : IDisposable
{
    private const string Before = "{\"event\":{\"seq\":1}}\n";

    private readonly string _directory = Directory.CreateTempSubdirectory("kms-lastline-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    public static TheoryData<string, byte[], bool> LastLines() => new()
    {
        // case, the file's bytes after a whole first line, whether its last line is torn
        { "none (the file ends with a line feed)", [], false },
        { "a whole record without its line feed", "{\"event\":{\"seq\":2}}"u8.ToArray(), false },
        { "a whole record, then a carriage return", "{\"event\":{\"seq\":2}}\r"u8.ToArray(), false },
        { "a torn record", "{\"event\":{\"se"u8.ToArray(), true },
        { "a record, then a torn write's zeros", [.. "{\"event\":{}}"u8, 0, 0, 0], true },
        { "two records run together", "{\"a\":1}{\"b\":2}"u8.ToArray(), true },
        { "a number (JSON, no record)", "42"u8.ToArray(), true },
        { "an array (JSON, no record)", "[{\"event\":{}}]"u8.ToArray(), true },
        { "a string (JSON, no record)", "\"event\""u8.ToArray(), true },
        { "null (JSON, no record)", "null"u8.ToArray(), true },
        { "a record with spaces around it", " {\"event\":{}} "u8.ToArray(), true },
        { "only whitespace", "  \t "u8.ToArray(), true },
        { "a record holding invalid UTF-8 in a string", [.. "{\"event\":\""u8, 0xFF, 0xFE, .. "\"}"u8], false },
        { "invalid UTF-8 outside any string", [(byte)'{', 0xFF, (byte)'}'], true },
        { "a torn multi-byte character", [.. "{\"event\":\""u8, 0xE2, 0x82], true },
        { "a record with duplicate members", "{\"a\":1,\"a\":2}"u8.ToArray(), false },

        // Only a line feed ends a line: a lone carriage return is inside one (never written: JSON escapes it).
        { "two records joined by a lone carriage return", "{\"a\":1}\r{\"b\":2}"u8.ToArray(), true },
        { "a record, a lone carriage return, a torn record", "{\"a\":1}\r{\"b"u8.ToArray(), true },
        { "a record with a carriage return between members", "{\"a\":1,\r\"b\":2}"u8.ToArray(), false },
    };

    [Theory]
    [MemberData(nameof(LastLines))]
    public void WriterVerifierAndRestoreReader_AgreeOnTheLastLine(string what, byte[] last, bool torn)
    {
        byte[] content = [.. Encoding.UTF8.GetBytes(Before), .. last];

        Assert.True(torn == WriterCuts(content), $"{what}: the writer {(torn ? "keeps" : "cuts")} it");
        Assert.True(torn == VerifierCallsTorn(last), $"{what}: the verifier {(torn ? "reads" : "calls torn")} it");
        Assert.True(torn == RestoreReaderCallsTorn(content), $"{what}: the restore's reader {(torn ? "reads" : "calls torn")} it");
    }

    // The writer's next append cuts the line off (torn) or ends it with a line feed and keeps it.
    private bool WriterCuts(byte[] content)
    {
        var path = Path.Combine(_directory, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)) + ".jsonl");
        File.WriteAllBytes(path, content);
        return DurableFile.Append(path, "{\"event\":{\"seq\":3}}\n"u8, DurableFile.OwnerOnly) > 0;
    }

    // The verifier reports a torn tail. Given the last line alone: it stops at the first line
    // that is no signed export's (whatever it finds after a whole line, it fails on that first).
    private static bool VerifierCallsTorn(byte[] content)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var reader = new StreamReader(new MemoryStream(content), Encoding.UTF8);
        return AuditVerifier.Verify(reader, key.ExportSubjectPublicKeyInfo()).TornTail > 0;
    }

    private static bool RestoreReaderCallsTorn(byte[] content) =>
        DestructionReplay.SplitLines(Encoding.UTF8.GetString(content)).TornLastLine is not null;
}
