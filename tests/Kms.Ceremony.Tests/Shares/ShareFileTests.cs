using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Tests.Shares;

public sealed class ShareFileTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-ceremony-").FullName;
    private readonly Share _share = new(2, RandomNumberGenerator.GetBytes(32));

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void Unprotect_AfterWriteAndRead_GivesTheShareAndTheMetadata()
    {
        var path = Path.Combine(_directory, "bob.share.json");
        File.WriteAllBytes(path, Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes());

        var read = ShareFile.Read(path, KdfPolicy.AllowWeakParametersForTests);
        using var share = read.Unprotect(Ceremony.PassphraseOf("bob"));

        Assert.Equal(_share.Value.ToArray(), share.Value.ToArray());
        Assert.Equal(2, share.Index);
        Assert.Equal((Ceremony.DomainId, Ceremony.DomainKcv, "bob", 2, 3, 5, 32), (read.DomainId, read.DomainKcv, read.Custodian, read.Index, read.Threshold, read.Count, read.ShareLength));
        Assert.Equal(new DateTimeOffset(2026, 11, 30, 3, 12, 45, TimeSpan.Zero), read.CreatedAt);
        Assert.Equal(Ceremony.Cheap, read.Kdf);
        Assert.Equal(path, read.Source);
        Assert.Matches("^[0-9a-f]{64}$", read.Fingerprint);
    }

    [Fact]
    public void Protect_ThenDecryptFollowingTheDocumentOnly_GivesTheShare()
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();

        Assert.Equal(_share.Value.ToArray(), ShareFileSpec.Decrypt(bytes, Ceremony.PassphraseOf("bob")));
        Assert.Equal((string)ShareFileSpec.Json(bytes)["fingerprint"]!, ShareFileSpec.Fingerprint(ShareFileSpec.Json(bytes)));
        Assert.Equal(bytes, ShareFileSpec.Render(ShareFileSpec.Json(bytes)));
    }

    [Fact]
    public void Protect_TwiceSameShare_FreshSaltAndNonce()
    {
        var first = ShareFileSpec.Json(Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes());
        var second = ShareFileSpec.Json(Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes());

        Assert.NotEqual((string)first["kdf"]!["salt"]!, (string)second["kdf"]!["salt"]!);
        Assert.NotEqual((string)first["aead"]!["nonce"]!, (string)second["aead"]!["nonce"]!);
        Assert.Equal(16, Convert.FromHexString((string)first["kdf"]!["salt"]!).Length);
    }

    [Fact]
    public void Unprotect_WrongPassphrase_RefusedNamingTheShareAndCustodian()
    {
        var path = Path.Combine(_directory, "bob.share.json");
        File.WriteAllBytes(path, Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes());
        var file = ShareFile.Read(path, KdfPolicy.AllowWeakParametersForTests);

        var e = Assert.Throws<CeremonyException>(() => file.Unprotect("correct horse battery staple of alice"));

        Assert.Equal(CeremonyError.WrongPassphrase, e.Error);
        Assert.StartsWith($"wrong passphrase for share 2 (custodian 'bob', file {path})", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("horse", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Protect_LoneSurrogate_Refused()
    {
        // Built at run time: an attribute argument cannot carry a lone surrogate.
        var passphrase = new string('\uD800', 1) + " lone surrogate here";

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata("bob"), passphrase));

        Assert.Equal("the passphrase is not valid Unicode", e.Message);
    }

    [Fact]
    public void Unprotect_PassphraseComposedOtherwise_SameKeyWhereUnicodeIsNormalised()
    {
        // "é" as one code point when protecting, as e + combining acute when unlocking: NFC makes them one.
        const string composed = "mot de passe d'\u00E9t\u00E9 long";
        const string decomposed = "mot de passe d'e\u0301te\u0301 long";
        if (Passphrases.CanNormalize)
        {
            var file = Ceremony.Protect(_share, Ceremony.Metadata("bob"), composed);
            using var share = file.Unprotect(decomposed);
            Assert.Equal(_share.Value.ToArray(), share.Value.ToArray());
        }
        else
        {
            // This repository builds with InvariantGlobalization (no ICU): non-ASCII is refused, not mis-derived.
            var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata("bob"), composed));
            Assert.StartsWith("the passphrase has non-ASCII characters", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void CanNormalize_InvariantGlobalizationBuild_False()
    {
        // Directory.Build.props sets InvariantGlobalization; if that changes, the test above covers NFC for real.
        Assert.Equal(!AppContext.TryGetSwitch("System.Globalization.Invariant", out var invariant) || !invariant, Passphrases.CanNormalize);
    }

    public static TheoryData<string, string> FieldEdits() => new()
    {
        { "domainId", "dk-us-1" },
        { "domainKcv", "ABCDEF" },
        { "custodian", "mallory" },
        { "index", "3" },
        { "threshold", "2" },
        { "count", "4" },
        { "createdAt", "2026-11-30T03:12:46Z" },
        { "kdf.memoryKib", "128" },
        { "kdf.iterations", "2" },
        { "kdf.parallelism", "2" },
        { "kdf.salt", "flip" },
        { "aead.nonce", "flip" },
        { "aead.ciphertext", "flip" },
        { "aead.tag", "flip" },
    };

    [Theory]
    [MemberData(nameof(FieldEdits))]
    public void Parse_FieldEditedChecksumRecomputed_RefusedAsAlteredByTheFingerprint(string field, string value)
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();

        var forged = ShareFileSpec.Forge(bytes, json => Edit(json, field, value), recomputeFingerprint: false);

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Reparse(forged));
        Assert.Equal(CeremonyError.Corrupted, e.Error);
        Assert.Contains("fingerprint does not match", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(FieldEdits))]
    public void Unprotect_FieldEditedFingerprintAndChecksumRecomputed_RefusedByTheTag(string field, string value)
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();

        var forged = Ceremony.Reparse(ShareFileSpec.Forge(bytes, json => Edit(json, field, value)));

        var e = Assert.Throws<CeremonyException>(() => forged.Unprotect(Ceremony.PassphraseOf("bob")));
        Assert.Equal(CeremonyError.WrongPassphrase, e.Error);
        Assert.Contains("or the file was altered", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("index", "4294967296")]
    [InlineData("threshold", "-2147483649")]
    [InlineData("count", "3.5")]
    [InlineData("shareLength", "1e3")]
    [InlineData("kdf.memoryKib", "99999999999999999999")]
    public void Parse_NumberThatIsNoInt32ChecksumRecomputed_RefusedAsCorrupted(string field, string number)
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();
        var parts = field.Split('.');

        var forged = ShareFileSpec.Forge(bytes, json => (parts.Length == 2 ? json[parts[0]]!.AsObject() : json)[parts[^1]] = JsonNode.Parse(number), recomputeFingerprint: false);

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Reparse(forged));
        Assert.Equal(CeremonyError.Corrupted, e.Error);
        Assert.Contains($"{parts[^1]} must be an integer", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Parse_AnyByteFlipped_RefusedAsCorrupted()
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();
        var formatValue = Encoding.ASCII.GetString(bytes).IndexOf("kms-share-v1", StringComparison.Ordinal);

        for (var i = 0; i < bytes.Length; i++)
        {
            foreach (var mask in new byte[] { 0x01, 0x20, 0x80 })
            {
                var damaged = (byte[])bytes.Clone();
                damaged[i] ^= mask;

                var e = Assert.Throws<CeremonyException>(() => Ceremony.Reparse(damaged));

                // Inside the format value a flip can spell another version ("kms-share-v0"), reported as such.
                var expected = i >= formatValue && i < formatValue + 12 && e.Error == CeremonyError.UnsupportedVersion
                    ? CeremonyError.UnsupportedVersion
                    : CeremonyError.Corrupted;
                Assert.True(e.Error == expected, $"byte {i} ^ {mask:X2}: {e.Error}: {e.Message}");
            }
        }
    }

    [Fact]
    public void Parse_AnyByteFlippedChecksumRecomputed_RefusedOrUndecryptable()
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();
        var refused = 0;

        for (var i = 0; i < bytes.Length - 83; i++)
        {
            var damaged = (byte[])bytes.Clone();
            damaged[i] ^= 0x01;
            var prefix = damaged.AsSpan(0, damaged.Length - 83);
            Encoding.ASCII.GetBytes(Convert.ToHexStringLower(SHA256.HashData(prefix))).CopyTo(damaged, damaged.Length - 83 + 15);

            try
            {
                var file = Ceremony.Reparse(damaged);
                // Parsed: the flip must then break the tag; nothing is returned.
                var e = Assert.Throws<CeremonyException>(() => file.Unprotect(Ceremony.PassphraseOf("bob")));
                Assert.Equal(CeremonyError.WrongPassphrase, e.Error);
            }
            catch (CeremonyException e)
            {
                Assert.True(e.Error is CeremonyError.Corrupted or CeremonyError.UnsupportedVersion or CeremonyError.KdfParametersRefused, $"byte {i}: {e.Error}: {e.Message}");
                refused++;
            }
        }
        Assert.True(refused > 0);
    }

    [Fact]
    public void Read_Truncated_RefusedAsCorruptedNamingTheFile()
    {
        var path = Path.Combine(_directory, "bob.share.json");
        File.WriteAllBytes(path, Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes()[..^10]);

        var e = Assert.Throws<CeremonyException>(() => ShareFile.Read(path, KdfPolicy.AllowWeakParametersForTests));

        Assert.Equal(CeremonyError.Corrupted, e.Error);
        Assert.StartsWith($"share file {path} is corrupted", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Read_ChecksumMismatch_SaysSo()
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();
        bytes[100] ^= 0x01;

        var e = Assert.Throws<CeremonyException>(() => ShareFile.Parse(bytes, "bob.share.json", KdfPolicy.AllowWeakParametersForTests));

        Assert.Equal("share file bob.share.json is corrupted (checksum mismatch)", e.Message);
    }

    [Fact]
    public void Read_TooLarge_RefusedBeforeReading()
    {
        var path = Path.Combine(_directory, "big.share.json");
        File.WriteAllBytes(path, new byte[ShareFile.MaxFileSize + 1]);

        var e = Assert.Throws<CeremonyException>(() => ShareFile.Read(path));

        Assert.Equal(CeremonyError.Corrupted, e.Error);
    }

    // In place of a share file, a FIFO (open(2) of one waits for a writer: the restore hung) or a
    // device, also behind a symbolic link: refused by its size, without being opened.
    [Theory]
    [InlineData("fifo")]
    [InlineData("link to a fifo")]
    [InlineData("link to /dev/zero")]
    public async Task Read_FifoOrDevice_RefusedWithoutOpeningIt(string kind)
    {
        var fifo = Path.Combine(_directory, "fifo");
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", [fifo]))
        {
            await mkfifo.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(1));
            Assert.Equal(0, mkfifo.ExitCode);
        }
        var path = Path.Combine(_directory, "bob.share.json");
        if (kind == "fifo")
        {
            File.Move(fifo, path);
            fifo = path;
        }
        else
        {
            File.CreateSymbolicLink(path, kind == "link to a fifo" ? fifo : "/dev/zero");
        }

        try
        {
            // Bounded, so that a read which opened the FIFO fails the test instead of hanging it.
            var e = await Assert.ThrowsAsync<CeremonyException>(() => Task.Run(() => ShareFile.Read(path, KdfPolicy.AllowWeakParametersForTests)).WaitAsync(TimeSpan.FromMinutes(1)));

            Assert.Equal(CeremonyError.Io, e.Error);
            Assert.Equal($"cannot read share file {path}: it is empty, or no regular file (a FIFO or a device: not opened)", e.Message);
        }
        finally
        {
            // Opening a FIFO for reading and writing never waits, and lets go a read that waits for a writer.
            using (new FileStream(fifo, FileMode.Open, FileAccess.ReadWrite))
            {
            }
        }
    }

    [Fact]
    public void Read_Directory_RefusedSayingSo()
    {
        var path = Directory.CreateDirectory(Path.Combine(_directory, "bob.share.json")).FullName;

        var e = Assert.Throws<CeremonyException>(() => ShareFile.Read(path));

        Assert.Equal(CeremonyError.Io, e.Error);
        Assert.Equal($"cannot read share file {path}: it is a directory", e.Message);
    }

    [Fact]
    public void Read_ThroughASymbolicLink_ReadsTheFile()
    {
        var target = Path.Combine(_directory, "bob.share.json");
        File.WriteAllBytes(target, Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes());
        var path = Path.Combine(_directory, "link.share.json");
        File.CreateSymbolicLink(path, target);

        var read = ShareFile.Read(path, KdfPolicy.AllowWeakParametersForTests);
        using var share = read.Unprotect(Ceremony.PassphraseOf("bob"));

        Assert.Equal(_share.Value.ToArray(), share.Value.ToArray());
    }

    [Fact]
    public void Read_Missing_IoError_SaysSo()
    {
        var path = Path.Combine(_directory, "none.json");

        var e = Assert.Throws<CeremonyException>(() => ShareFile.Read(path));

        Assert.Equal(CeremonyError.Io, e.Error);
        // Was .NET's "Could not find file '…'." after the path.
        Assert.Equal($"cannot read share file {path}: it does not exist", e.Message);
    }

    [Theory]
    [InlineData("kms-share-v2")]
    [InlineData("kms-share-v10")]
    public void Parse_OtherFormatVersion_RefusedAsUnsupported(string version)
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();

        var forged = ShareFileSpec.Forge(bytes, json => json["format"] = version);

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Reparse(forged));
        Assert.Equal(CeremonyError.UnsupportedVersion, e.Error);
        Assert.Equal($"share file test.share has the unsupported share format version '{version}'; this kms reads kms-share-v1", e.Message);
    }

    [Fact]
    public void Parse_UnknownMember_Refused()
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();

        var forged = ShareFileSpec.Forge(bytes, json => json.Insert(1, "comment", "hi"));

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Reparse(forged));
        Assert.Equal(CeremonyError.Corrupted, e.Error);
    }

    [Fact]
    public void Parse_WeakParametersUnderProductionPolicy_Refused()
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();

        var e = Assert.Throws<CeremonyException>(() => ShareFile.Parse(bytes, "bob.share.json"));

        Assert.Equal(CeremonyError.KdfParametersRefused, e.Error);
        Assert.Equal("share file bob.share.json (share 2, custodian 'bob') is refused: Argon2id parameters m=64 KiB, t=1 are below the floor m=65536 KiB, t=3", e.Message);
    }

    [Theory]
    [InlineData(4 * 1024 * 1024 + 1, 1, 1, "Argon2id memory 4194305 KiB is outside 8..4194304 KiB")]
    [InlineData(64, 17, 1, "Argon2id iterations 17 is outside 1..16")]
    [InlineData(1024, 1, 17, "Argon2id parallelism 17 is outside 1..16")]
    [InlineData(1024 * 1024, 9, 4, "Argon2id memory × iterations (1048576 KiB × 9) exceeds 8388608 KiB")]
    [InlineData(8, 1, 2, "Argon2id memory 8 KiB is outside 16..4194304 KiB")]
    public void Parse_CostlyOrInvalidParameters_RefusedEvenForTests(int memoryKib, int iterations, int parallelism, string problem)
    {
        var bytes = Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes();

        var forged = ShareFileSpec.Forge(bytes, json =>
        {
            json["kdf"]!["memoryKib"] = memoryKib;
            json["kdf"]!["iterations"] = iterations;
            json["kdf"]!["parallelism"] = parallelism;
        });

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Reparse(forged));
        Assert.Equal(CeremonyError.KdfParametersRefused, e.Error);
        Assert.EndsWith(problem, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Protect_WeakParametersUnderProductionPolicy_Refused()
    {
        var e = Assert.Throws<CeremonyException>(() => ShareFile.Protect(_share, Ceremony.Metadata("bob"), Ceremony.PassphraseOf("bob"), Ceremony.Cheap));

        Assert.Equal(CeremonyError.KdfParametersRefused, e.Error);
    }

    [Theory]
    [InlineData("", "the passphrase is empty")]
    [InlineData("eleven char", "the passphrase has 11 characters; at least 12 are required")]
    [InlineData("twelve chars\n", "the passphrase contains a control character")]
    public void Protect_PassphraseFailsPolicy_RefusedWithoutEchoingIt(string passphrase, string message)
    {
        var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata("bob"), passphrase));

        Assert.Equal(CeremonyError.InvalidArgument, e.Error);
        Assert.Equal(message, e.Message);
        Assert.Equal(message, Passphrases.Check(passphrase));
    }

    [Fact]
    public void Protect_TwelveCharacterPassphrase_Accepted()
    {
        Assert.Null(Passphrases.Check("twelve chars"));
        // Counted in characters, not UTF-16 units: 11 emoji are 22 units and still too short.
        Assert.NotNull(Passphrases.Check(string.Concat(Enumerable.Repeat("\U0001F511", 11))));
    }

    [Theory]
    [InlineData("", "bob", "F29000", 3, 5, "the domain id must have 1..128 characters")]
    [InlineData("dk eu", "bob", "F29000", 3, 5, "the domain id must be printable ASCII without spaces")]
    [InlineData("dk-eu-1", " bob", "F29000", 3, 5, "the custodian name must not start or end with a space")]
    [InlineData("dk-eu-1", "bob\u0007", "F29000", 3, 5, "the custodian name must not contain U+0007 (a control character): 'bob\\u0007'")]
    [InlineData("dk-eu-1", "bob", "F2900", 3, 5, "the domain check value must be 6 hex digits")]
    [InlineData("dk-eu-1", "bob", "F29000", 1, 5, "threshold 1 is outside 2..5 (the share count)")]
    [InlineData("dk-eu-1", "bob", "F29000", 2, 1, "share count 1 is outside 2..255")]
    public void Protect_InvalidMetadata_Refused(string domainId, string custodian, string kcv, int threshold, int count, string message)
    {
        var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, new ShareMetadata(domainId, kcv, custodian, threshold, count), "a long enough passphrase"));

        Assert.Equal(message, e.Message);
    }

    [Theory]
    [InlineData("alice\u202Eecila", "U+202E (a format character: bidirectional, zero-width or invisible)", "alice\\u202Eecila")]
    [InlineData("al\u200Bice", "U+200B (a format character: bidirectional, zero-width or invisible)", "al\\u200Bice")]
    [InlineData("al\u200Dice", "U+200D (a format character: bidirectional, zero-width or invisible)", "al\\u200Dice")]
    [InlineData("bob\u2028forged", "U+2028 (a line or paragraph separator)", "bob\\u2028forged")]
    [InlineData("bob\u2029", "U+2029 (a line or paragraph separator)", "bob\\u2029")]
    [InlineData("bob\uE000", "U+E000 (a private-use character)", "bob\\uE000")]
    [InlineData("bob\u0378", "U+0378 (an unassigned code point or noncharacter)", "bob\\u0378")]
    [InlineData("bob\uFFFF", "U+FFFF (an unassigned code point or noncharacter)", "bob\\uFFFF")]
    [InlineData("bob\U000F0000", "U+F0000 (a private-use character)", "bob\\U000F0000")]
    [InlineData("bob\u0085", "U+0085 (a control character)", "bob\\u0085")]
    public void Protect_CustodianNameWithAnInvisibleOrMovingCharacter_RefusedShowingTheCodePoint(string custodian, string what, string shown)
    {
        // "alice\u202Eecila" displays as "alicealice": another custodian, in a
        // transcript or on a terminal.
        var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata(custodian), "a long enough passphrase"));

        Assert.Equal(CeremonyError.InvalidArgument, e.Error);
        Assert.Equal($"the custodian name must not contain {what}: '{shown}'", e.Message);
        Assert.Equal(e.Message, CustodianName.Check(custodian));
    }

    [Fact]
    public void Protect_CustodianNameWithALoneSurrogate_RefusedShowingTheCodePoint()
    {
        // Built at run time: an attribute argument cannot carry a lone surrogate.
        var custodian = "bob" + new string('\uDC00', 1);

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata(custodian), "a long enough passphrase"));

        Assert.Equal("the custodian name must not contain U+DC00 (a lone surrogate, not a character): 'bob\\uDC00'", e.Message);
    }

    [Theory]
    [InlineData("\u041Elga", "U+041E (Cyrillic) stands among Latin letters")] // a Cyrillic capital O: prints as "Olga"
    [InlineData("\u0410\u043B\u0456ce", "U+0063 (Latin) stands among Cyrillic letters")] // the minority is named, not the first letter
    [InlineData("\u03A1aul", "U+03A1 (Greek) stands among Latin letters")]
    [InlineData("\u13A0avid", "U+13A0 (Cherokee) stands among Latin letters")]
    [InlineData("J\u0585hn", "U+0585 (Armenian) stands among Latin letters")]
    public void Protect_CustodianNameMixingScriptsWhoseLettersLookAlike_RefusedNamingTheLetter(string custodian, string what)
    {
        var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata(custodian), "a long enough passphrase"));

        Assert.Equal(CeremonyError.InvalidArgument, e.Error);
        Assert.Equal($"the custodian name must not mix scripts whose letters look alike (Latin, Greek, Cyrillic, Armenian and Cherokee): {what}, so '{custodian}' prints like another name", e.Message);
        Assert.Equal(e.Message, CustodianName.Check(custodian));
    }

    [Fact]
    public void CheckSet_TwoCustodiansWhoseNamesPrintAlike_RefusedNamingBoth_OtherwiseNull()
    {
        // Each name is of one script, so CustodianName.Check passes it; beside each other in one
        // ceremony they print alike.
        Assert.Equal("the custodian name '\u0430\u0455\u0440' prints like 'asp', another custodian of this ceremony: they differ only in letters of Greek, Cyrillic, Armenian or Cherokee drawn like Latin ones; names must tell custodians apart",
            CustodianName.CheckSet(["asp", "olga", "\u0430\u0455\u0440"]));
        Assert.NotNull(CustodianName.CheckSet(["\u0395\u039A\u039F", "\u0415\u041A\u041E"])); // Greek and Cyrillic capitals: both "EKO"
        Assert.Null(CustodianName.CheckSet(["asp", "\u041E\u043B\u044C\u0433\u0430", "Olga", "\u0395\u03BB\u03AD\u03BD\u03B7"]));
    }

    [Theory]
    [InlineData("Zo\u00EB")]
    [InlineData("\u0645\u06CC\u0631\u0632\u0627")]
    [InlineData("\u674E\u5A1C")]
    [InlineData("Ren\u00E9e O'Brien-Sm\u00EEth")]
    [InlineData("\U0001F511 keeper")]
    public void Protect_CustodianNamesOfOrdinaryText_Accepted(string custodian)
    {
        Assert.Null(CustodianName.Check(custodian));
        // An ASCII passphrase: this process cannot normalise a non-ASCII one (InvariantGlobalization).
        Assert.Equal(custodian, Ceremony.Reparse(Ceremony.Protect(_share, Ceremony.Metadata(custodian), "a long enough passphrase").ToBytes()).Custodian);
    }

    [Fact]
    public void Parse_OlderFileWithABidiCustodianName_StillRead_TheNameEscapedInEveryMessage()
    {
        // A file written before such names were refused still opens (its share is needed to
        // rebuild the key), but no message shows the name turned around.
        var bytes = ShareFileSpec.Forge(Ceremony.Protect(_share, Ceremony.Metadata("bob")).ToBytes(), json => json["custodian"] = "alice\u202Eecila");

        var read = Ceremony.Reparse(bytes);
        var refused = Assert.Throws<CeremonyException>(() => ShareFile.Parse(bytes, "old.share.json"));
        var wrong = Assert.Throws<CeremonyException>(() => read.Unprotect("correct horse battery staple of bob"));

        Assert.Equal("alice\u202Eecila", read.Custodian);
        foreach (var message in new[] { refused.Message, wrong.Message, read.ToString() })
        {
            Assert.DoesNotContain('\u202E', message);
            Assert.Contains("custodian 'alice\\u202Eecila'", message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Protect_IndexAboveCount_Refused()
    {
        using var share = new Share(6, new byte[32]);

        var e = Assert.Throws<CeremonyException>(() => Ceremony.Protect(share, Ceremony.Metadata("bob")));

        Assert.Equal("share index 6 is above the share count 5", e.Message);
    }

    [Fact]
    public void ToBytes_NeverContainsTheShareOrThePassphrase()
    {
        const string passphrase = "Tr0ub4dor&3 is not a passphrase";
        var file = Ceremony.Protect(_share, Ceremony.Metadata("bob"), passphrase);
        var bytes = file.ToBytes();
        var text = Encoding.UTF8.GetString(bytes);
        var share = _share.Value.ToArray();

        Assert.False(bytes.AsSpan().IndexOf(share) >= 0);
        foreach (var rendering in new[] { Convert.ToHexStringLower(share), Convert.ToHexString(share), Convert.ToBase64String(share), passphrase, "Tr0ub4dor" })
        {
            Assert.DoesNotContain(rendering, text, StringComparison.OrdinalIgnoreCase);
            Assert.DoesNotContain(rendering, file.ToString(), StringComparison.OrdinalIgnoreCase);
        }
        Assert.False(bytes.AsSpan().IndexOf(Encoding.Unicode.GetBytes(passphrase)) >= 0);
    }

    [Fact]
    public void Exceptions_NeverContainThePassphrase()
    {
        const string passphrase = "Tr0ub4dor&3 is not a passphrase";
        var file = Ceremony.Protect(_share, Ceremony.Metadata("bob"), passphrase);
        var messages = new List<string>
        {
            Assert.Throws<CeremonyException>(() => file.Unprotect(passphrase + "!")).ToString(),
            Assert.Throws<CeremonyException>(() => file.Unprotect(passphrase.ToUpperInvariant())).ToString(),
            Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata("bob"), "Tr0ub4dor&3")).ToString(),
            Assert.Throws<CeremonyException>(() => Ceremony.Protect(_share, Ceremony.Metadata("bob"), "Tr0ub4dor&3 is\n not")).ToString(),
        };

        Assert.All(messages, m => Assert.DoesNotContain("Tr0ub4dor", m, StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public void Write_File_IsReadableJson()
    {
        var text = Encoding.UTF8.GetString(Ceremony.Protect(_share, Ceremony.Metadata("Zoë"), "an ASCII passphrase").ToBytes());

        Assert.StartsWith("{\n  \"format\": \"kms-share-v1\",\n  \"domainId\": \"dk-eu-1\",", text, StringComparison.Ordinal);
        Assert.Contains("\"custodian\": \"Zoë\"", text, StringComparison.Ordinal);
        Assert.Contains("\"createdAt\": \"2026-11-30T03:12:45Z\"", text, StringComparison.Ordinal);
        Assert.EndsWith("\"\n}\n", text, StringComparison.Ordinal);
    }

    private static void Edit(JsonObject json, string field, string value)
    {
        var parts = field.Split('.');
        var owner = parts.Length == 2 ? json[parts[0]]!.AsObject() : json;
        var name = parts[^1];
        if (value == "flip")
        {
            var bytes = Convert.FromHexString((string)owner[name]!);
            bytes[0] ^= 0x01;
            owner[name] = Convert.ToHexStringLower(bytes);
        }
        else if (int.TryParse(value, System.Globalization.CultureInfo.InvariantCulture, out var number))
        {
            owner[name] = number;
        }
        else
        {
            owner[name] = value;
        }
    }
}
