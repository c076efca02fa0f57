using System.Text;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Quorum;
using Kms.Testing;

namespace Kms.Core.Tests;

public sealed class QuorumTests : IDisposable
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private readonly TestOfficers _officers = new("alice", "bob", "carol", "dave", "erin");

    public void Dispose() => _officers.Dispose();

    private static QuorumRequest Golden() => new()
    {
        Id = QuorumRequestId.Parse("0123456789abcdef0123456789abcdef", "id"),
        Operation = QuorumOperation.DestroyKeyVersionNow,
        Parameters = [KeyValuePair.Create("name", "tenants/dev/keys/orders/versions/2")],
        Tenant = TenantId.Parse("dev"),
        DomainKcv = "5a0c7e",
        OfficerSetSequence = 0,
        OfficerSetHash = new string('a', 64),
        RequestedBy = "token:developer",
        CreateTime = T0,
        ExpireTime = T0.AddHours(24),
    };

    [Fact]
    public void Render_GoldenText_PinnedByteForByte()
    {
        const string Expected = "kms quorum approval v1\n"
            + "id: 0123456789abcdef0123456789abcdef\n"
            + "operation: DESTROY_KEY_VERSION_NOW\n"
            + "tenant: dev\n"
            + "domain-kcv: 5a0c7e\n"
            + "officer-set: 0 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
            + "requested-by: token:developer\n"
            + "created: 2026-11-29T12:00:00.000Z\n"
            + "expires: 2026-11-30T12:00:00.000Z\n"
            + "param name: tenants/dev/keys/orders/versions/2\n";
        Assert.Equal(Expected, QuorumRendering.Render(Golden()));
        Assert.Equal(Encoding.ASCII.GetBytes(Expected), QuorumRendering.Bytes(Golden()));
    }

    // What a timed approval signs: the rendering's lines under the v2 tag, and the time of signing.
    [Fact]
    public void Statement_GoldenText_PinnedByteForByte_NeverTheRendering()
    {
        const string Expected = "kms quorum approval v2\n"
            + "id: 0123456789abcdef0123456789abcdef\n"
            + "operation: DESTROY_KEY_VERSION_NOW\n"
            + "tenant: dev\n"
            + "domain-kcv: 5a0c7e\n"
            + "officer-set: 0 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
            + "requested-by: token:developer\n"
            + "created: 2026-11-29T12:00:00.000Z\n"
            + "expires: 2026-11-30T12:00:00.000Z\n"
            + "param name: tenants/dev/keys/orders/versions/2\n"
            + "signed: 2026-11-29T12:34:56.789Z\n";
        var signed = T0 + new TimeSpan(0, 0, 34, 56, 789);
        Assert.Equal(Expected, QuorumRendering.Statement(Golden(), signed));
        Assert.Equal(Encoding.ASCII.GetBytes(Expected), QuorumRendering.StatementBytes(Golden(), signed.AddTicks(9999)));

        // A signature over one form never verifies as the other, nor at another time.
        var timed = _officers.Approve("alice", Golden(), signed);
        var set = OfficerSet.CreateGenesis(_officers.Select("alice"), 1);
        Assert.Single(OfficerChain.ValidApprovers(Golden() with { Approvals = [timed] }, set));
        Assert.Empty(OfficerChain.ValidApprovers(Golden() with { Approvals = [timed with { SignTime = null }] }, set));
        Assert.Empty(OfficerChain.ValidApprovers(Golden() with { Approvals = [timed with { SignTime = signed.AddMilliseconds(1) }] }, set));
        Assert.Empty(OfficerChain.ValidApprovers(Golden() with { Approvals = [_officers.ApproveUntimed("alice", Golden(), signed) with { SignTime = signed }] }, set));
    }

    [Fact]
    public void Render_RotateAndRestoreDomain_GoldenText_PinnedByteForByte()
    {
        var rotation = Golden() with
        {
            Operation = QuorumOperation.RotateDomainKey,
            Tenant = null,
            RequestedBy = "token:olga",
            Parameters = [KeyValuePair.Create("new-custodians", "5"), KeyValuePair.Create("new-threshold", "3")],
        };
        const string Rotation = "kms quorum approval v1\n"
            + "id: 0123456789abcdef0123456789abcdef\n"
            + "operation: ROTATE_DOMAIN_KEY\n"
            + "tenant: (deployment)\n"
            + "domain-kcv: 5a0c7e\n"
            + "officer-set: 0 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
            + "requested-by: token:olga\n"
            + "created: 2026-11-29T12:00:00.000Z\n"
            + "expires: 2026-11-30T12:00:00.000Z\n"
            + "param new-custodians: 5\n"
            + "param new-threshold: 3\n";
        Assert.Equal(Rotation, QuorumRendering.Render(rotation));

        var restore = rotation with { Operation = QuorumOperation.RestoreDomain, Parameters = [KeyValuePair.Create("token-label", "kms-prod-b")] };
        const string Restore = "kms quorum approval v1\n"
            + "id: 0123456789abcdef0123456789abcdef\n"
            + "operation: RESTORE_DOMAIN\n"
            + "tenant: (deployment)\n"
            + "domain-kcv: 5a0c7e\n"
            + "officer-set: 0 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
            + "requested-by: token:olga\n"
            + "created: 2026-11-29T12:00:00.000Z\n"
            + "expires: 2026-11-30T12:00:00.000Z\n"
            + "param token-label: kms-prod-b\n";
        Assert.Equal(Restore, QuorumRendering.Render(restore));
    }

    [Fact]
    public void Render_RecoverDeploymentAdmin_GoldenText_SaysWhatItDoes()
    {
        // The parameters are fixed by the server, not chosen by the asker: they say in the signed
        // text what the officers authorise (docs/quorum.md, the operations table).
        var recovery = Golden() with
        {
            Operation = QuorumOperation.RecoverDeploymentAdmin,
            Tenant = null,
            RequestedBy = "token:olga",
            Parameters = Kms.Core.Services.QuorumService.RecoveryParameters,
        };
        const string Recovery = "kms quorum approval v1\n"
            + "id: 0123456789abcdef0123456789abcdef\n"
            + "operation: RECOVER_DEPLOYMENT_ADMIN\n"
            + "tenant: (deployment)\n"
            + "domain-kcv: 5a0c7e\n"
            + "officer-set: 0 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
            + "requested-by: token:olga\n"
            + "created: 2026-11-29T12:00:00.000Z\n"
            + "expires: 2026-11-30T12:00:00.000Z\n"
            + "param credential: one-time, valid 15 minutes, written to the executing node's bootstrap-credential file (Kms:BootstrapTokenPath)\n"
            + "param grants: one Bootstrap call, registering one new deployment-admin; the existing deployment admins stay\n";
        Assert.Equal(Recovery, QuorumRendering.Render(recovery));
        Assert.Equal(TimeSpan.FromMinutes(15), Kms.Core.Services.AccessService.RecoveryTokenLifetime);
    }

    [Fact]
    public void Render_SameRequestTwice_SameText_AnyFieldChanged_OtherText()
    {
        var golden = QuorumRendering.Render(Golden());
        Assert.Equal(golden, QuorumRendering.Render(Golden() with { Approvals = [new QuorumApproval(new string('b', 64), [1], T0)] }));
        QuorumRequest[] changed =
        [
            Golden() with { Id = QuorumRequestId.NewId() },
            Golden() with { Operation = QuorumOperation.ChangeOfficers },
            Golden() with { Tenant = TenantId.Parse("acme") },
            Golden() with { Tenant = null },
            Golden() with { DomainKcv = "5a0c7f" },
            Golden() with { OfficerSetSequence = 1 },
            Golden() with { RequestedBy = "token:mallory" },
            Golden() with { CreateTime = T0.AddMilliseconds(1) },
            Golden() with { ExpireTime = T0.AddDays(7) },
            Golden() with { Parameters = [KeyValuePair.Create("name", "tenants/dev/keys/orders/versions/3")] },
        ];
        Assert.All(changed, c => Assert.NotEqual(golden, QuorumRendering.Render(c)));
        Assert.Equal(changed.Length, changed.Select(QuorumRendering.Render).Distinct().Count());
    }

    [Theory]
    [InlineData("v\nparam name: tenants/acme/keys/x/versions/1", "v\\u{000A}param name: tenants/acme/keys/x/versions/1")]
    [InlineData("a\rb", "a\\u{000D}b")]
    [InlineData("back\\slash", "back\\\\slash")]
    [InlineData("rtl\u202Eevil", "rtl\\u{202E}evil")]
    [InlineData("cyrillic \u0430", "cyrillic \\u{0430}")]
    [InlineData("emoji \U0001F600", "emoji \\u{1F600}")]
    [InlineData("\\u{000A}", "\\\\u{000A}")]
    public void Render_ValuesThatCouldForgeLinesOrHideText_AreEscapedToPrintableAscii(string value, string rendered)
    {
        var text = QuorumRendering.Render(Golden() with { RequestedBy = value });
        Assert.Contains($"\nrequested-by: {rendered}\n", text, StringComparison.Ordinal);
        Assert.Equal(10, text.Count(c => c == '\n'));
        Assert.All(text, c => Assert.True(c == '\n' || c is >= ' ' and <= '~'));
    }

    [Fact]
    public void Render_EscapingIsInjective_DistinctValuesNeverRenderAlike()
    {
        string[] values = ["a\nb", "a\\u{000A}b", "a\\\\u{000A}b", "a\\nb", "a\u000Ab "];
        Assert.Equal(values.Length, values.Select(v => QuorumRendering.Render(Golden() with { RequestedBy = v })).Distinct().Count());
    }

    [Theory]
    [InlineData("Name")]
    [InlineData("na me")]
    [InlineData("name: x\nparam other")]
    [InlineData("")]
    public void Render_ParameterKeyOutsideTheAlphabet_Refused(string key)
    {
        Assert.Throws<ArgumentException>(() => QuorumRendering.Render(Golden() with { Parameters = [KeyValuePair.Create(key, "v")] }));
    }

    [Fact]
    public void Render_ParametersUnsortedOrRepeated_Refused_LoneSurrogate_Refused()
    {
        Assert.Throws<ArgumentException>(() => QuorumRendering.Render(Golden() with { Parameters = [KeyValuePair.Create("b", "1"), KeyValuePair.Create("a", "2")] }));
        Assert.Throws<ArgumentException>(() => QuorumRendering.Render(Golden() with { Parameters = [KeyValuePair.Create("a", "1"), KeyValuePair.Create("a", "2")] }));
        Assert.Throws<ArgumentException>(() => QuorumRendering.Render(Golden() with { RequestedBy = "x\uD800" }));
    }

    [Fact]
    public void OfficerSet_ThresholdEdges_OneOfOneAllowed_MOverNRefused_ZeroRefused_DuplicateKeyRefused()
    {
        Assert.Equal(1, OfficerSet.CreateGenesis(_officers.Select("alice"), 1).Threshold);
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => OfficerSet.CreateGenesis(_officers.Select("alice", "bob"), 3)).Code);
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => OfficerSet.CreateGenesis(_officers.Select("alice"), 0)).Code);
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => OfficerSet.CreateGenesis([], 1)).Code);
        var twin = Officer.Create("alice-again", _officers["alice"].PublicKey);
        var duplicate = Assert.Throws<KmsException>(() => OfficerSet.CreateGenesis([_officers["alice"], twin], 1));
        Assert.Contains("twice", duplicate.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OfficerSet_HashIndependentOfOrder_ChangesWithThresholdOrOfficers()
    {
        var a = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        Assert.Equal(a.Hash, OfficerSet.CreateGenesis(_officers.Select("carol", "alice", "bob"), 2).Hash);
        Assert.NotEqual(a.Hash, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 3).Hash);
        Assert.NotEqual(a.Hash, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "dave"), 2).Hash);
        Assert.StartsWith("kms officer set v1\nsequence: 0\nprevious: " + new string('0', 64) + "\nthreshold: 2\nofficer: ", a.Render(), StringComparison.Ordinal);
    }

    [Fact]
    public void Officer_NotP256_Refused()
    {
        using var p384 = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP384);
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => Officer.Create("x", p384.ExportSubjectPublicKeyInfo())).Code);
        using var rsa = System.Security.Cryptography.RSA.Create(2048);
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => Officer.Create("x", rsa.ExportSubjectPublicKeyInfo())).Code);
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => Officer.Create("bad\nname", _officers["alice"].PublicKey)).Code);
    }

    [Fact]
    public void Chain_GenesisThenChangeApprovedByOldQuorum_Verifies()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var second = _officers.Change(genesis, _officers.Select("carol", "dave", "erin"), 2, T0, "alice", "bob");
        var third = _officers.Change(second, _officers.Select("dave", "erin"), 1, T0, "dave", "erin");

        Assert.Same(third, OfficerChain.Verify([genesis, second, third], genesis));
        Assert.Same(genesis, OfficerChain.Verify([genesis], genesis));
    }

    [Fact]
    public void Chain_ChangeSignedByTheNewOfficersOnly_Refused()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var takeover = _officers.Change(genesis, _officers.Select("dave", "erin"), 1, T0, "dave", "erin");
        var refused = Assert.Throws<KmsException>(() => OfficerChain.Verify([genesis, takeover], genesis));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("approved by 0 officers of set 0 signed before its request expired at 2026-11-29T13:00:00.000Z, which needs 2", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Chain_OneOfficerSigningTwice_CountsOnce()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var change = _officers.Change(genesis, _officers.Select("dave"), 1, T0, "alice", "alice");
        Assert.Single(OfficerChain.ValidApprovers(change.Change!, genesis));
        Assert.Throws<KmsException>(() => OfficerChain.Verify([genesis, change], genesis));
    }

    [Fact]
    public void Chain_SetWrittenIntoTheDatabase_NotChainedOrNotTheApprovedOne_Refused()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var legit = _officers.Change(genesis, _officers.Select("carol", "dave"), 2, T0, "alice", "bob");

        // A database writer's own set: no change request at all.
        var planted = genesis.Successor(_officers.Select("erin"), 1);
        Assert.Throws<KmsException>(() => OfficerChain.Verify([genesis, planted], genesis));

        // The approved request, but another set under it (its parameters name the approved set).
        var swapped = genesis.Successor(_officers.Select("erin"), 1).WithChange(legit.Change!);
        Assert.Contains("is not the set its CHANGE_OFFICERS request names", Assert.Throws<KmsException>(() => OfficerChain.Verify([genesis, swapped], genesis)).Message, StringComparison.Ordinal);

        // A whole other chain from a genesis of the writer's choosing.
        var foreign = OfficerSet.CreateGenesis(_officers.Select("erin"), 1);
        Assert.Contains("is not the configured genesis", Assert.Throws<KmsException>(() => OfficerChain.Verify([foreign], genesis)).Message, StringComparison.Ordinal);

        // An approval replayed onto a set that does not follow the one it was made for.
        var third = _officers.Change(legit, _officers.Select("dave"), 1, T0, "carol", "dave");
        Assert.Throws<KmsException>(() => OfficerChain.Verify([genesis, third], genesis));
        Assert.Throws<KmsException>(() => OfficerChain.Verify([], genesis));
    }

    [Fact]
    public void GenesisFile_RoundTrips_AndATamperedFileIsRefused()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var json = GenesisFile.Serialize(genesis);
        Assert.Equal(genesis.Hash, GenesisFile.Parse(json).Hash);

        var raised = json.Replace("\"threshold\": 2", "\"threshold\": 1", StringComparison.Ordinal);
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => GenesisFile.Parse(raised)).Code);
        Assert.Throws<KmsException>(() => GenesisFile.Parse(json.Replace(GenesisFile.Format, "kms-officer-genesis-v2", StringComparison.Ordinal)));
        Assert.Throws<KmsException>(() => GenesisFile.Parse("{}"));
        Assert.Throws<ArgumentException>(() => GenesisFile.Serialize(_officers.Change(genesis, _officers.Select("dave"), 1, T0, "alice", "bob")));
    }

    // A ceremony's genesis is its deployment's own: the same officers and threshold in two
    // ceremonies give two hashes, and an officer change approved in one is refused by the other.
    // A genesis file written before (no previous_hash) is still read, with zeros and its old hash.
    [Fact]
    public void DeploymentGenesis_OfEachCeremonyItsOwn_AChangeApprovedInAnotherDeploymentRefused_OldFilesStillRead()
    {
        var a = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var b = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        Assert.NotEqual(a.Hash, b.Hash);
        Assert.NotEqual(OfficerSet.NoPrevious, a.PreviousHash);

        var inA = _officers.Change(a, _officers.Select("alice", "dave"), 1, T0, "alice", "bob");
        Assert.Same(inA, OfficerChain.Verify([a, inA], a));
        Assert.Contains("does not follow set 0", Assert.Throws<KmsException>(() => OfficerChain.Verify([b, inA], b)).Message, StringComparison.Ordinal);

        var json = GenesisFile.Serialize(a);
        Assert.Equal(a.Hash, GenesisFile.Parse(json).Hash);
        Assert.Equal(a.PreviousHash, GenesisFile.Parse(json).PreviousHash);
        var edited = json.Replace(a.PreviousHash, b.PreviousHash, StringComparison.Ordinal);
        Assert.Contains("sha256 does not match", Assert.Throws<KmsException>(() => GenesisFile.Parse(edited)).Message, StringComparison.Ordinal);
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.Throws<KmsException>(() => GenesisFile.Parse(json.Replace(a.PreviousHash, "xyz", StringComparison.Ordinal))).Code);

        var legacy = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var legacyJson = string.Join('\n', GenesisFile.Serialize(legacy).Split('\n').Where(line => !line.Contains("previous_hash", StringComparison.Ordinal)));
        Assert.DoesNotContain("previous_hash", legacyJson, StringComparison.Ordinal);
        Assert.Equal(legacy.Hash, GenesisFile.Parse(legacyJson).Hash);
    }

    [Fact]
    public void GenesisFile_Write_ReadsBack_NeverReplacesAGenesis()
    {
        var directory = Directory.CreateTempSubdirectory("kms-genesis-").FullName;
        try
        {
            var path = Path.Combine(directory, "genesis.json");
            var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
            GenesisFile.Write(path, genesis);
            Assert.Equal(genesis.Hash, GenesisFile.Read(path).Hash);

            // The root the server pins: a second ceremony's genesis does not go over it.
            var rogue = OfficerSet.CreateGenesis(_officers.Select("dave", "erin"), 1);
            Assert.Throws<IOException>(() => GenesisFile.Write(path, rogue));

            Assert.Equal(genesis.Hash, GenesisFile.Read(path).Hash);
            Assert.Equal([path], Directory.GetFileSystemEntries(directory));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
