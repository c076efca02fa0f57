using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// Inputs the fuzzers (fuzz/, docs/fuzzing.md) found to escape a parser's documented error, kept
/// as tests after the fix. The raw inputs are in fuzz/regressions/TARGET and seed every later run.
/// </summary>
public sealed class FuzzRegressionTests : IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob", "carol");

    public void Dispose() => _officers.Dispose();

    /// <summary>
    /// A P-256 SubjectPublicKeyInfo whose named-curve OID 1.2.840.10045.3.1.7 has its last arc
    /// changed to 127: well-formed DER that OpenSSL refuses with PlatformNotSupportedException.
    /// </summary>
    private static byte[] KeyOnAnUnknownCurve()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var der = key.ExportSubjectPublicKeyInfo();
        byte[] p256 = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
        var at = der.AsSpan().IndexOf(p256);
        Assert.True(at > 0);
        der[at + p256.Length - 1] = 0x7F;
        return der;
    }

    [Fact]
    public void OfficerCreate_KeyOnACurveOpenSslDoesNotKnow_InvalidArgument()
    {
        var e = Assert.Throws<KmsException>(() => Officer.Create("alice", KeyOnAnUnknownCurve()));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
    }

    [Fact]
    public void GenesisFileParse_OfficerKeyOnAnUnknownCurve_FailedPrecondition()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var json = JsonNode.Parse(GenesisFile.Serialize(genesis))!;
        json["officers"]![1]!["public_key"] = Convert.ToBase64String(KeyOnAnUnknownCurve());

        var e = Assert.Throws<KmsException>(() => GenesisFile.Parse(json.ToJsonString()));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
    }

    [Fact]
    public void ApprovalBundleParse_OfficerKeyOnAnUnknownCurve_InvalidArgument()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var request = TestOfficers.Request(genesis, QuorumOperation.RotateDomainKey, [new("new-custodians", "3"), new("new-threshold", "2")], DateTimeOffset.UnixEpoch);
        var json = new ApprovalBundle(request, [genesis]).Serialize().Replace(
            Convert.ToBase64String(_officers["bob"].PublicKey), Convert.ToBase64String(KeyOnAnUnknownCurve()), StringComparison.Ordinal);

        var e = Assert.Throws<KmsException>(() => ApprovalBundle.Parse(json));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
    }

    [Theory]
    [InlineData("token?label", "kms")]
    [InlineData("token-label", "\\ud800")]
    public void ApprovalBundleParse_RequestWithoutACanonicalRendering_InvalidArgument(string key, string jsonValue)
    {
        // Found as 'token?label': Parse accepted it and Verify threw ArgumentException from the rendering.
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var request = TestOfficers.Request(genesis, QuorumOperation.RestoreDomain, [new("token-label", "kms")], DateTimeOffset.UnixEpoch) with { State = QuorumRequestState.Approved };
        var json = new ApprovalBundle(request, [genesis]).Serialize()
            .Replace("\"key\": \"token-label\"", $"\"key\": \"{key}\"", StringComparison.Ordinal)
            .Replace("\"value\": \"kms\"", $"\"value\": \"{jsonValue}\"", StringComparison.Ordinal);
        Assert.Contains(key, json, StringComparison.Ordinal);

        var e = Assert.Throws<KmsException>(() => ApprovalBundle.Parse(json));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
    }

    [Fact]
    public void SignedStatementVerify_KeyOnAnUnknownCurve_False()
    {
        Assert.False(SignedStatement.Verify(KeyOnAnUnknownCurve(), "kind", [1, 2, 3], new byte[64]));
    }
}
