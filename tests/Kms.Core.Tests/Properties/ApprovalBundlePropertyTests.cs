using CsCheck;
using Kms.Core.Names;
using Kms.Core.Quorum;
using Kms.Testing;

namespace Kms.Core.Tests.Properties;

/// <summary>
/// The approval bundle (docs/quorum.md) read back from its JSON gives the same request: the same
/// canonical rendering (what officers sign), approvals and officer chain, whatever the fields hold.
/// </summary>
public sealed class ApprovalBundlePropertyTests : IDisposable
{
    private static readonly string[] Pieces = ["a", "Z", "0", "\\", "\"", "\n", "é", "\u202E", "😀", " ", "{", "u{0041}"];
    private static readonly Gen<string> Text = Gen.Int[0, Pieces.Length - 1].Array[1, 5].Select(ix => string.Concat(ix.Select(i => Pieces[i])));
    private static readonly Gen<string> ParameterKey = Gen.Char["abcxyz0189._:-"].Array[1, 8].Where(k => char.IsAsciiLetterOrDigit(k[0])).Select(k => new string(k));
    private static readonly Gen<DateTimeOffset> Time = Gen.Long[0, 4_000_000_000_000].Select(ms => DateTimeOffset.FromUnixTimeMilliseconds(ms));

    private readonly TestOfficers _officers = new("alice", "bob", "carol");

    public void Dispose() => _officers.Dispose();

    [Fact]
    public void ParseOfSerialize_AnyFields_SameRequestAndChain()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var approval = Gen.Select(Gen.Int[0, 2], Gen.Byte.Array[0, 80], Time).Select((who, signature, at) =>
            new QuorumApproval(_officers[new[] { "alice", "bob", "carol" }[who]].Fingerprint, signature, at));
        var requests = Gen.Select(
            Gen.Select(ParameterKey, Text).Array[0, 4],
            Gen.Select(Text, Text, Time, Time),
            Gen.Select(Gen.Enum<QuorumRequestState>(), Gen.Bool, approval.Array[0, 3], Gen.Bool)).Select((parameters, fields, state) =>
            {
                var (kcv, requestedBy, created, expires) = fields;
                var (requestState, executed, approvals, inTenant) = state;
                return new QuorumRequest
                {
                    Id = QuorumRequestId.NewId(),
                    Operation = QuorumOperation.RotateDomainKey,
                    Parameters = [.. parameters.DistinctBy(p => p.Item1).OrderBy(p => p.Item1, StringComparer.Ordinal).Select(p => KeyValuePair.Create(p.Item1, p.Item2))],
                    Tenant = inTenant ? TenantId.Parse("dev") : null,
                    DomainKcv = kcv,
                    OfficerSetSequence = genesis.Sequence,
                    OfficerSetHash = genesis.Hash,
                    RequestedBy = requestedBy,
                    CreateTime = created,
                    ExpireTime = expires,
                    State = requestState,
                    ExecuteTime = executed ? expires : null,
                    Approvals = approvals,
                };
            });

        requests.Sample(request =>
        {
            var bundle = new ApprovalBundle(request, [genesis]);

            var read = ApprovalBundle.Parse(bundle.Serialize());

            Assert.Equal(QuorumRendering.Render(request), QuorumRendering.Render(read.Request));
            Assert.Equal(request.State, read.Request.State);
            Assert.Equal(request.ExecuteTime, read.Request.ExecuteTime);
            Assert.Equal(request.Approvals.Select(a => (a.OfficerFingerprint, Convert.ToHexString(a.Signature), a.ApproveTime)), read.Request.Approvals.Select(a => (a.OfficerFingerprint, Convert.ToHexString(a.Signature), a.ApproveTime)));
            Assert.Equal(genesis.Hash, Assert.Single(read.Chain).Hash);
            Assert.Equal(bundle.Serialize(), read.Serialize());
        }, iter: 300);
    }

    [Fact]
    public void Render_DistinctValues_DistinctRenderings()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob"), 1);
        var request = TestOfficers.Request(genesis, QuorumOperation.RotateDomainKey, [], DateTimeOffset.UnixEpoch);
        Gen.Select(Text, Text).Sample((a, b) =>
        {
            var renderA = QuorumRendering.Render(request with { RequestedBy = a, Parameters = [KeyValuePair.Create("p", b)] });
            var renderB = QuorumRendering.Render(request with { RequestedBy = b, Parameters = [KeyValuePair.Create("p", a)] });

            Assert.Equal(a == b, renderA == renderB);
            Assert.All(renderA, c => Assert.True(c == '\n' || c is >= ' ' and <= '~'));
        }, iter: 1000);
    }

    [Fact]
    public void Render_AValueSpellingOutAnotherValuesEscape_RendersOtherwise()
    {
        // "é" renders as \u{00E9}; the value \u{00E9}, typed out, must not (its backslash is escaped).
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob"), 1);
        var request = TestOfficers.Request(genesis, QuorumOperation.RotateDomainKey, [], DateTimeOffset.UnixEpoch);
        Text.Where(t => t.Any(c => c is < ' ' or > '~')).Sample(value =>
        {
            var spelledOut = QuorumRendering.Escape(value);

            Assert.NotEqual(value, spelledOut);
            Assert.NotEqual(
                QuorumRendering.Render(request with { RequestedBy = value, Parameters = [KeyValuePair.Create("p", value)] }),
                QuorumRendering.Render(request with { RequestedBy = spelledOut, Parameters = [KeyValuePair.Create("p", spelledOut)] }));
        }, iter: 300);
    }
}
