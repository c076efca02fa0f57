using System.Security.Cryptography;
using System.Text;
using Kms.Core.Audit;
using Kms.Core.Keys;

namespace Kms.Core.Tests;

/// <summary>The provenance statement's canonical form and its offline check (the server's signing runs against SoftHSM in the server tests).</summary>
public sealed class KeyAttestationTests
{
    private static readonly KeyAttestation Sample = new()
    {
        KeyVersion = "tenants/dev/keys/k/versions/1",
        Purpose = "SIGN_VERIFY",
        Algorithm = "EC_SIGN_P256_SHA256",
        State = "ENABLED",
        Origin = "GENERATED",
        CreateTime = "2026-11-30T07:00:00.000Z",
        CreateRequest = "r1",
        DomainKeyCheckValue = "abcdef",
        PublicKeySha256 = "00",
        HsmAttributes = new Dictionary<string, string> { ["CKA_SENSITIVE"] = "true", ["CKA_LOCAL"] = "false" },
        IssueTime = "2026-11-30T07:00:01.000Z",
        SigningKeyFingerprint = "ff",
    };

    [Fact]
    public void Verify_SignedCanonicalStatement_RoundTripsEveryField()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var statement = Sample.ToCanonicalJson();
        var signature = key.SignHash(SignedStatement.Digest(KeyAttestation.Kind, statement));

        var verified = KeyAttestation.Verify(key.ExportSubjectPublicKeyInfo(), statement, signature);

        Assert.NotNull(verified);
        Assert.Equal(statement, verified.ToCanonicalJson());
        Assert.Equal("GENERATED", verified.Origin);
        Assert.Equal(KeyAttestation.Disclaimer, verified.Statement);
        Assert.StartsWith("{\"format\":\"kms-key-attestation-v1\",\"keyVersion\":", Encoding.UTF8.GetString(statement), StringComparison.Ordinal);
    }

    [Fact]
    public void Verify_OneChangedByte_AnotherKey_OrAnotherKind_Refused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var other = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var statement = Sample.ToCanonicalJson();
        var signature = key.SignHash(SignedStatement.Digest(KeyAttestation.Kind, statement));

        var tampered = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(statement).Replace("GENERATED", "GENERATEE", StringComparison.Ordinal));
        Assert.Null(KeyAttestation.Verify(key.ExportSubjectPublicKeyInfo(), tampered, signature));
        Assert.Null(KeyAttestation.Verify(other.ExportSubjectPublicKeyInfo(), statement, signature));
        var transcriptSignature = key.SignHash(SignedStatement.Digest("ceremony-transcript", statement));
        Assert.Null(KeyAttestation.Verify(key.ExportSubjectPublicKeyInfo(), statement, transcriptSignature));
    }

    [Fact]
    public void Verify_SignedButNotCanonical_Refused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var spaced = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(Sample.ToCanonicalJson()).Replace(",", ", ", StringComparison.Ordinal));
        var signature = key.SignHash(SignedStatement.Digest(KeyAttestation.Kind, spaced));

        Assert.Null(KeyAttestation.Verify(key.ExportSubjectPublicKeyInfo(), spaced, signature));
    }
}
