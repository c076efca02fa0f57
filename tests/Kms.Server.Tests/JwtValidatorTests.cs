using System.Security.Cryptography;
using System.Text;
using Kms.Core.Access;
using Kms.Server.Hosting;
using Kms.Server.Security;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The workload-identity token check, one refusal at a time: tokens signed here with keys made by
/// .NET, against a key set file the validator reads; and the JWS signature layer against the
/// published examples of RFC 7515 (A.2, A.3).
/// </summary>
public sealed class JwtValidatorTests : IDisposable
{
    private static readonly DateTimeOffset Now = new(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-jwt-").FullName;
    private readonly FakeTimeProvider _time = new(Now);
    private readonly ECDsa _ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    private readonly ECDsa _ec384 = ECDsa.Create(ECCurve.NamedCurves.nistP384);
    private readonly RSA _rsa = RSA.Create(2048);

    private string JwksPath => Path.Combine(_dir, "jwks.json");

    public void Dispose()
    {
        _ec.Dispose();
        _ec384.Dispose();
        _rsa.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public void ValidToken_IsItsIssuersJwtPrincipal_UntilItsExp()
    {
        var identity = Validate(TestJwt.Sign(TestJwt.Claims(Now), _ec, "ES256"), out var refusal);
        Assert.Equal(JwtRefusal.None, refusal);
        Assert.Equal("jwt:k8s:system:serviceaccount:payments:api", identity!.Value.Principal.ToString());
        Assert.Equal(Now.AddHours(1), identity.Value.Expires);
    }

    [Theory]
    [InlineData("ES256", "ec")]
    [InlineData("ES384", "ec384")]
    [InlineData("RS256", "rsa")]
    [InlineData("PS256", "rsa")]
    public void EachAllowedAlgorithm_WithAKeyOfItsKind_Accepted(string alg, string kid)
    {
        var validator = Validator(TestJwt.Jwks(TestJwt.Jwk(_ec, "ec"), TestJwt.Jwk(_ec384, "ec384"), TestJwt.Jwk(_rsa, "rsa")));
        Assert.NotNull(validator.Validate(TestJwt.Sign(TestJwt.Claims(Now), Key(kid), alg, kid), Now, out var refusal));
        Assert.Equal(JwtRefusal.None, refusal);
    }

    [Fact]
    public void AlgNone_Refused()
    {
        // With no signature at all, and with a valid ES256 signature over the same bytes: "none" is never an algorithm.
        var input = $"{TestJwt.Base64Url("{\"alg\":\"none\",\"kid\":\"k1\"}")}.{TestJwt.Base64Url(TestJwt.Claims(Now))}";
        Assert.Null(Validate(input + ".", out _));
        Assert.Null(Validate(TestJwt.Sign("{\"alg\":\"none\",\"kid\":\"k1\"}", TestJwt.Claims(Now), _ec, "ES256"), out var refusal));
        Assert.Equal(JwtRefusal.Algorithm, refusal);
    }

    [Fact]
    public void Hs256_WithThePublicKeyAsTheSecret_Refused()
    {
        // The classic confusion: a verifier that lets the token pick HMAC keys it with the public key, which anyone has.
        var jwks = TestJwt.Jwks(TestJwt.Jwk(_rsa));
        var input = $"{TestJwt.Base64Url("{\"alg\":\"HS256\",\"kid\":\"k1\"}")}.{TestJwt.Base64Url(TestJwt.Claims(Now))}";
        foreach (var secret in new[] { Encoding.UTF8.GetBytes(jwks), _rsa.ExportSubjectPublicKeyInfo(), Encoding.UTF8.GetBytes(_rsa.ExportSubjectPublicKeyInfoPem()) })
        {
            var token = $"{input}.{TestJwt.Base64Url(HMACSHA256.HashData(secret, Encoding.ASCII.GetBytes(input)))}";
            Assert.Null(Validator(jwks).Validate(token, Now, out var refusal));
            Assert.Equal(JwtRefusal.Algorithm, refusal);
        }
    }

    [Theory]
    [InlineData("rsa", "ES256")] // an EC algorithm named for an RSA key
    [InlineData("ec", "RS256")] // and the other way round
    [InlineData("ec", "ES384")] // a P-256 key asked to verify P-384
    [InlineData("rsa-rs256-only", "PS256")] // the key's own alg says RS256
    public void AlgorithmThatIsNotTheKeys_Refused(string kid, string alg)
    {
        var validator = Validator(TestJwt.Jwks(TestJwt.Jwk(_ec, "ec"), TestJwt.Jwk(_rsa, "rsa"), TestJwt.Jwk(_ec384, "ec384"), TestJwt.Jwk(_rsa, "rsa-rs256-only", "RS256")));

        // Signed with the named key by the algorithm the token claims where that is possible at all.
        var signer = kid.StartsWith("rsa", StringComparison.Ordinal) ? (AsymmetricAlgorithm)_rsa : _ec;
        var token = signer is RSA && alg.StartsWith("ES", StringComparison.Ordinal)
            ? TestJwt.Sign($"{{\"alg\":\"{alg}\",\"kid\":\"{kid}\"}}", TestJwt.Claims(Now), _ec, "ES256")
            : TestJwt.Sign($"{{\"alg\":\"{alg}\",\"kid\":\"{kid}\"}}", TestJwt.Claims(Now), signer, alg);
        Assert.Null(validator.Validate(token, Now, out var refusal));
        Assert.Equal(JwtRefusal.Algorithm, refusal);
    }

    [Fact]
    public void UnknownKid_Refused()
    {
        Assert.Null(Validate(TestJwt.Sign(TestJwt.Claims(Now), _ec, "ES256", kid: "k2"), out var refusal));
        Assert.Equal(JwtRefusal.UnknownKey, refusal);
    }

    [Fact]
    public void NoKid_AcceptedWithTheSetsOnlyKey_RefusedWhenTheSetHasSeveral()
    {
        var token = TestJwt.Sign(TestJwt.Claims(Now), _ec, "ES256", kid: null);
        Assert.NotNull(Validate(token, out _));
        Assert.Null(Validator(TestJwt.Jwks(TestJwt.Jwk(_ec, "k1"), TestJwt.Jwk(_rsa, "k2"))).Validate(token, Now, out var refusal));
        Assert.Equal(JwtRefusal.UnknownKey, refusal);
    }

    [Fact]
    public void Expired_RefusedPastTheSkew_AcceptedWithinIt()
    {
        var token = TestJwt.Sign(TestJwt.Claims(Now.AddHours(-2), c => c["nbf"] = null), _ec, "ES256");
        Assert.Null(Validate(token, out var refusal));
        Assert.Equal(JwtRefusal.Expired, refusal);

        var justExpired = TestJwt.Sign(TestJwt.Claims(Now.AddHours(-1).AddSeconds(-30)), _ec, "ES256");
        Assert.NotNull(Validate(justExpired, out _));
        Assert.Null(Validator().Validate(justExpired, Now.AddSeconds(31), out refusal));
        Assert.Equal(JwtRefusal.Expired, refusal);
    }

    [Theory]
    [InlineData("nbf")]
    [InlineData("iat")]
    public void NotBeforeOrIssuedInTheFuture_Refused(string claim)
    {
        var token = TestJwt.Sign(TestJwt.Claims(Now, c => c[claim] = Now.AddMinutes(5).ToUnixTimeSeconds()), _ec, "ES256");
        Assert.Null(Validate(token, out var refusal));
        Assert.Equal(JwtRefusal.NotYetValid, refusal);
    }

    [Theory]
    [InlineData("https://kubernetes.default.svc.cluster.local/")] // not exactly the configured issuer
    [InlineData("https://evil.example")]
    public void WrongIssuer_Refused(string iss)
    {
        Assert.Null(Validate(TestJwt.Sign(TestJwt.Claims(Now, c => c["iss"] = iss), _ec, "ES256"), out var refusal));
        Assert.Equal(JwtRefusal.UnknownIssuer, refusal);
    }

    [Fact]
    public void Audience_AStringOrAnArrayHoldingIt_Accepted_AnotherRefused()
    {
        Assert.NotNull(Validate(TestJwt.Sign(TestJwt.Claims(Now, c => c["aud"] = "kms"), _ec, "ES256"), out _));
        Assert.NotNull(Validate(TestJwt.Sign(TestJwt.Claims(Now, c => c["aud"] = new[] { "vault", "kms" }), _ec, "ES256"), out _));
        foreach (object? aud in new object?[] { "vault", new[] { "vault", "https://kubernetes.default.svc" }, null, 7, new object[] { "kms", 7 } })
        {
            Assert.Null(Validate(TestJwt.Sign(TestJwt.Claims(Now, c => c["aud"] = aud), _ec, "ES256"), out var refusal));
            Assert.Equal(JwtRefusal.Audience, refusal);
        }
    }

    [Fact]
    public void Refusals_LoggedAtInformation_WithReasonAndIssuer_OncePerSecond_WithTheirCount_NeverTheToken()
    {
        // An operator whose workloads are all refused (a wrong Audience, a stale key set) must see
        // why without turning on Debug; a caller who repeats a bad token cannot fill the log.
        var capture = new LogCapture();
        using var factory = new Serilog.Extensions.Logging.SerilogLoggerFactory(
            new Serilog.LoggerConfiguration().MinimumLevel.Information().WriteTo.Sink(capture).CreateLogger(), dispose: true);
        File.WriteAllText(JwksPath, TestJwt.Jwks(TestJwt.Jwk(_ec)));
        var validator = new JwtValidator(Options().Issuers, _time, factory.CreateLogger("jwt"));
        var wrongAudience = TestJwt.Sign(TestJwt.Claims(Now, c => c["aud"] = "vault"), _ec, "ES256");
        var unknownIssuer = TestJwt.Sign(TestJwt.Claims(Now, c => c["iss"] = "https://attacker.example"), _ec, "ES256");

        for (var i = 0; i < 5; i++)
        {
            Assert.Null(validator.Validate(wrongAudience, Now, out _));
        }

        Assert.Null(validator.Validate(unknownIssuer, Now, out _));
        Assert.Equal(
            ["Information bearer JWT refused (Audience, issuer \"k8s\"); 1 such refusals since the last such message",
             "Information bearer JWT refused (UnknownIssuer, issuer \"(not known)\"); 1 such refusals since the last such message"],
            capture.Events.Select(e => e[..e.IndexOf(" Reason=", StringComparison.Ordinal)]));

        _time.Advance(TimeSpan.FromSeconds(1));
        Assert.Null(validator.Validate(wrongAudience, Now, out _));
        Assert.Contains("Information bearer JWT refused (Audience, issuer \"k8s\"); 5 such refusals", capture.Events.Last(), StringComparison.Ordinal);
        Assert.Equal(3, capture.Events.Count);

        foreach (var part in wrongAudience.Split('.').Concat(unknownIssuer.Split('.')).Append("attacker.example").Append(TestJwt.Subject))
        {
            Assert.DoesNotContain(part, capture.AllText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void LifetimeOverTheIssuersMaximum_Refused()
    {
        // The default maximum is 24 hours; 24 hours and a second.
        var token = TestJwt.Sign(TestJwt.Claims(Now, c => c["exp"] = Now.AddHours(24).AddSeconds(1).ToUnixTimeSeconds()), _ec, "ES256");
        Assert.Null(Validate(token, out var refusal));
        Assert.Equal(JwtRefusal.Lifetime, refusal);
        Assert.NotNull(Validate(TestJwt.Sign(TestJwt.Claims(Now, c => c["exp"] = Now.AddHours(24).ToUnixTimeSeconds()), _ec, "ES256"), out _));
    }

    [Theory]
    [InlineData("sub")]
    [InlineData("exp")]
    [InlineData("iat")]
    public void RequiredClaimMissing_Refused(string claim)
    {
        Assert.Null(Validate(TestJwt.Sign(TestJwt.Claims(Now, c => c[claim] = null), _ec, "ES256"), out var refusal));
        Assert.Equal(claim == "sub" ? JwtRefusal.Subject : JwtRefusal.Claims, refusal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("payments\napi")]
    [InlineData("repo:acme/app:ref:refs/heads/\u202Eniam")] // a right-to-left override: shown as "...main"
    [InlineData("repo:acme/caf\u0065\u0301:ref:refs/heads/main")] // decomposed: shown as the repository caf\u00e9, another principal
    [InlineData("system:serviceaccount:p\u0430yments:api")] // a Cyrillic "\u0430" among Latin letters: shown as ...:payments:api
    [InlineData("x")] // made 201 characters long below
    public void SubjectThatIsNoName_Refused(string sub)
    {
        sub = sub == "x" ? new string('x', 201) : sub;
        Assert.Null(Validate(TestJwt.Sign(TestJwt.Claims(Now, c => c["sub"] = sub), _ec, "ES256"), out var refusal));
        Assert.Equal(JwtRefusal.Subject, refusal);
    }

    [Theory]
    [InlineData("\"crit\":[\"exp\"]")]
    [InlineData("\"jwk\":{\"kty\":\"EC\"}")]
    [InlineData("\"jku\":\"https://evil.example/jwks\"")]
    [InlineData("\"x5u\":\"https://evil.example/cert\"")]
    public void CritOrKeyLocatingHeader_Refused(string member)
    {
        var token = TestJwt.Sign($"{{\"alg\":\"ES256\",\"kid\":\"k1\",{member}}}", TestJwt.Claims(Now), _ec, "ES256");
        Assert.Null(Validate(token, out var refusal));
        Assert.Equal(JwtRefusal.Header, refusal);
    }

    [Fact]
    public void MemberGivenTwice_InTheHeaderOrTheClaims_Refused()
    {
        // A parser that keeps the last member and one that keeps the first would read two different tokens.
        var claims = TestJwt.Claims(Now);
        var twiceSub = claims[..^1] + ",\"sub\":\"system:serviceaccount:kube-system:admin\"}";
        var twiceAlg = "{\"alg\":\"none\",\"kid\":\"k1\",\"alg\":\"ES256\"}";
        var escaped = claims[..^1] + ",\"\\u0073ub\":\"other\"}";
        foreach (var token in new[] { TestJwt.Sign(twiceAlg, claims, _ec, "ES256"), TestJwt.Sign("{\"alg\":\"ES256\",\"kid\":\"k1\"}", twiceSub, _ec, "ES256"), TestJwt.Sign("{\"alg\":\"ES256\",\"kid\":\"k1\"}", escaped, _ec, "ES256") })
        {
            Assert.Null(Validate(token, out var refusal));
            Assert.Equal(JwtRefusal.DuplicateOrMalformedJson, refusal);
        }
    }

    [Theory]
    [InlineData("{\"alg\":\"\\ud800\",\"kid\":\"k1\"}", "header")] // an unpaired surrogate, escaped: valid JSON, no string
    [InlineData("{\"alg\":\"ES256\",\"kid\":\"\\udc00\"}", "header")]
    [InlineData("{\"alg\":\"ES256\",\"kid\":\"k1\"}", "iss")]
    [InlineData("{\"alg\":\"ES256\",\"kid\":\"k1\"}", "sub")]
    [InlineData("{\"alg\":\"ES256\",\"kid\":\"k1\"}", "aud")]
    [InlineData("{\"alg\":\"ES256\",\"kid\":\"k1\"}", "\\ud800")] // a member's name
    [InlineData("{\"alg\":\"ES256\",\"kid\":\"k1\"}", "extra")] // a claim nothing here reads
    public void UnpairedSurrogateEscaped_InTheHeaderOrAClaim_Refused_NeverThrown(string header, string claim)
    {
        // The header and iss are read before any signature is checked: anyone can send these. A string
        // that is no text is refused wherever it is, as malformed JSON, not read past by one check and thrown by the next.
        var claims = TestJwt.Claims(Now);
        if (claim != "header")
        {
            var value = claim == "aud" ? "[\"kms\",\"\\ud800\"]" : claim == "extra" ? "{\"x\":[\"\\udfff\"]}" : "\"\\ud800x\"";
            claims = TestJwt.Claims(Now, c => c[claim] = null)[..^1] + $",\"{claim}\":{value}}}";
        }

        Assert.Null(Validate(TestJwt.Sign(header, claims, _ec, "ES256"), out var refusal));
        Assert.Equal(JwtRefusal.DuplicateOrMalformedJson, refusal);
    }

    [Fact]
    public void ExpAtTheLastRepresentableSecond_Refused_NeverThrown()
    {
        // 9999-12-31T23:59:59Z, the largest NumericDate read: the skew added to it is past what a date can be.
        var token = TestJwt.Sign(TestJwt.Claims(Now, c => c["exp"] = 253_402_300_799L), _ec, "ES256");
        Assert.Null(Validate(token, out var refusal));
        Assert.Equal(JwtRefusal.Lifetime, refusal);
    }

    [Theory]
    [InlineData("=")] // padding
    [InlineData("+")] // base64, not base64url
    [InlineData(".x")] // a fourth part
    public void BadBase64UrlOrShape_Refused(string damage)
    {
        var token = TestJwt.Sign(TestJwt.Claims(Now), _ec, "ES256");
        Assert.Null(Validate(token + damage, out var refusal));
        Assert.Equal(JwtRefusal.Malformed, refusal);
    }

    [Fact]
    public void Oversized_RefusedBeforeItIsRead()
    {
        var claims = TestJwt.Claims(Now, c => c["padding"] = new string('a', JwtValidator.MaxTokenLength));
        Assert.Null(Validate(TestJwt.Sign(claims, _ec, "ES256"), out var refusal));
        Assert.Equal(JwtRefusal.Malformed, refusal);
    }

    [Theory]
    [InlineData("ES256")]
    [InlineData("RS256")]
    public void SignatureBitFlipped_Refused(string alg)
    {
        var key = alg == "ES256" ? (AsymmetricAlgorithm)_ec : _rsa;
        var token = TestJwt.Sign(TestJwt.Claims(Now), key, alg);
        var parts = token.Split('.');
        var signature = System.Buffers.Text.Base64Url.DecodeFromChars(parts[2]);
        signature[10] ^= 0x01;
        var validator = Validator(TestJwt.Jwks(TestJwt.Jwk(key)));
        Assert.NotNull(validator.Validate(token, Now, out _));
        Assert.Null(validator.Validate($"{parts[0]}.{parts[1]}.{TestJwt.Base64Url(signature)}", Now, out var refusal));
        Assert.Equal(JwtRefusal.Signature, refusal);
    }

    [Fact]
    public void ClaimsChangedAfterSigning_Refused()
    {
        var parts = TestJwt.Sign(TestJwt.Claims(Now), _ec, "ES256").Split('.');
        var forged = TestJwt.Base64Url(TestJwt.Claims(Now, c => c["sub"] = "system:serviceaccount:kube-system:admin"));
        Assert.Null(Validate($"{parts[0]}.{forged}.{parts[2]}", out var refusal));
        Assert.Equal(JwtRefusal.Signature, refusal);
    }

    [Fact]
    public void Rsa1024KeyInTheSet_TheSetIsRefused()
    {
        using var weak = RSA.Create(1024);
        var error = Assert.Throws<FormatException>(() => JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(TestJwt.Jwks(TestJwt.Jwk(_ec, "k1"), TestJwt.Jwk(weak, "weak")))));
        Assert.Contains("1024 bits", error.Message, StringComparison.Ordinal);

        // And a server with it does not start (checked before the HSM opens).
        File.WriteAllText(JwksPath, TestJwt.Jwks(TestJwt.Jwk(weak, "weak")));
        var start = Assert.Throws<InvalidOperationException>(() => Options().Validate());
        Assert.Contains("Kms:Jwt:Issuers:0:JwksPath", start.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}", "private member")] // a symmetric key: a secret in a public file
    [InlineData("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}", "key type OKP")]
    [InlineData("{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"}", "curve P-521")]
    [InlineData("{\"kty\":\"RSA\",\"n\":\"NNN\",\"e\":\"AQ\"}", "exponent")]
    [InlineData("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"y\":\"y_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}", "no EC public key")] // off the curve
    [InlineData("{\"kty\":\"EC\",\"crv\":\"P-256\",\"kty\":\"RSA\"}", "JSON Web Key Set")] // a member twice
    [InlineData("{\"kty\":\"RSA\",\"kid\":\"\\ud800\"}", "no text")] // an escaped unpaired surrogate: a FormatException, not what GetString throws
    [InlineData("{\"kty\":\"RSA\",\"\\udc00\":1,\"\\udc01\":2}", "no text")] // and in member names, which the duplicate check reads
    public void KeySetWithAKeyThatCannotBeTrusted_Refused(string jwk, string reason)
    {
        jwk = jwk.Replace("NNN", TestJwt.Base64Url(_rsa.ExportParameters(false).Modulus!), StringComparison.Ordinal);
        var error = Assert.Throws<FormatException>(() => JsonWebKeySet.Parse(Encoding.UTF8.GetBytes($"{{\"keys\":[{jwk}]}}")));
        Assert.Contains(reason, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void KeySetFileReplaced_OldKeyRefused_NewAccepted_AfterTheFileCheck_BadReplacementKeepsTheKeys()
    {
        var validator = Validator();
        var version = validator.TrustVersion;
        var old = TestJwt.Sign(TestJwt.Claims(Now), _ec, "ES256");
        var next = TestJwt.Sign(TestJwt.Claims(Now), _rsa, "RS256", kid: "k2");
        File.WriteAllText(JwksPath, TestJwt.Jwks(TestJwt.Jwk(_rsa, "k2")));
        _time.Advance(TimeSpan.FromSeconds(1));
        Assert.NotEqual(version, validator.TrustVersion);
        Assert.Null(validator.Validate(old, Now, out var refusal));
        Assert.Equal(JwtRefusal.UnknownKey, refusal);
        Assert.NotNull(validator.Validate(next, Now, out _));

        version = validator.TrustVersion;
        File.WriteAllText(JwksPath, "{\"keys\":[");
        _time.Advance(TimeSpan.FromSeconds(1));
        Assert.NotNull(validator.Validate(next, Now, out _));
        Assert.Equal(version, validator.TrustVersion);
    }

    [Theory]
    [InlineData("Name", "K8s", "Name must be 1 to 32 of [a-z0-9-]")]
    [InlineData("Name", "", "Name must be 1 to 32 of [a-z0-9-]")]
    [InlineData("Issuer", "", "Issuer must be set")]
    [InlineData("Audience", "", "Audience must be set")]
    [InlineData("JwksPath", "/nonexistent/jwks.json", "JwksPath /nonexistent/jwks.json cannot be used")]
    public void InvalidIssuerConfiguration_RefusedNamingTheOption(string option, string value, string message)
    {
        File.WriteAllText(JwksPath, TestJwt.Jwks(TestJwt.Jwk(_ec)));
        var issuer = Options().Issuers[0];
        _ = option switch
        {
            "Name" => issuer.Name = value,
            "Issuer" => issuer.Issuer = value,
            "Audience" => issuer.Audience = value,
            "JwksPath" => issuer.JwksPath = value,
            _ => throw new ArgumentOutOfRangeException(nameof(option), option, null), // MaxLifetime: SettingRangesTests
        };
        var error = Assert.Throws<InvalidOperationException>(() => new JwtOptions { Issuers = [issuer] }.Validate());
        Assert.Contains($"Kms:Jwt:Issuers:0:{message}", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void SameNameOrIssuerTwice_Refused()
    {
        File.WriteAllText(JwksPath, TestJwt.Jwks(TestJwt.Jwk(_ec)));
        var twice = Options();
        twice.Issuers.Add(new JwtIssuerOptions { Name = "k8s", Issuer = "https://other", Audience = "kms", JwksPath = JwksPath });
        Assert.Contains("Name k8s is given twice", Assert.Throws<InvalidOperationException>(twice.Validate).Message, StringComparison.Ordinal);
        twice.Issuers[1].Name = "other";
        twice.Issuers[1].Issuer = TestJwt.Issuer;
        Assert.Contains("is configured twice", Assert.Throws<InvalidOperationException>(twice.Validate).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Rfc7515AppendixA3_Es256Example_Verifies_AndNotOnceChanged()
    {
        // RFC 7515 A.3: the published JWK (public part) and JWS; the claims (exp 2011) are old, so the signature layer alone.
        var set = JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(
            "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}"));
        const string input = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        var signature = System.Buffers.Text.Base64Url.DecodeFromChars("DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q");
        Assert.True(set.Keys[0].Verifies("ES256", Encoding.ASCII.GetBytes(input), signature));
        Assert.False(set.Keys[0].Verifies("ES256", Encoding.ASCII.GetBytes(input + "A"), signature));
        Assert.False(set.Keys[0].Verifies("RS256", Encoding.ASCII.GetBytes(input), signature));
    }

    [Fact]
    public void Rfc7515AppendixA2_Rs256Example_Verifies_AndNotOnceChanged()
    {
        var set = JsonWebKeySet.Parse(Encoding.UTF8.GetBytes(
            "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ\",\"e\":\"AQAB\"}]}"));
        const string input = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        var signature = System.Buffers.Text.Base64Url.DecodeFromChars(
            "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw");
        Assert.True(set.Keys[0].Verifies("RS256", Encoding.ASCII.GetBytes(input), signature));
        Assert.False(set.Keys[0].Verifies("PS256", Encoding.ASCII.GetBytes(input), signature));
        signature[0] ^= 0x80;
        Assert.False(set.Keys[0].Verifies("RS256", Encoding.ASCII.GetBytes(input), signature));
    }

    [Fact]
    public void JwtPrincipalName_ParsesAndCarriesItsType_ACertificateCnNeverIsOne()
    {
        var name = PrincipalName.Parse("jwt:k8s:system:serviceaccount:payments:api", "name");
        Assert.Equal(PrincipalKind.Jwt, name.Kind);
        Assert.Equal("jwt:k8s:system:serviceaccount:payments:api", name.ToString());
        Assert.Equal(name, PrincipalName.Jwt("k8s", TestJwt.Subject));
        foreach (var bad in new[] { "jwt:k8s", "jwt:k8s:", "jwt::sub", "jwt:K8s:sub", "jwt:k8s:a\nb", "jwt:k8s:" + new string('a', 201) })
        {
            Assert.Throws<Kms.Core.Errors.KmsException>(() => PrincipalName.Parse(bad, "name"));
        }

        // A certificate whose CN reads like a JWT principal is a cn: principal.
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var certificate = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=jwt:k8s:system:serviceaccount:payments:api", key, HashAlgorithmName.SHA256)
            .CreateSelfSigned(Now.AddMinutes(-1), Now.AddHours(1));
        Assert.Equal(PrincipalKind.CommonName, ClientCertificateValidator.PrincipalOf(certificate)!.Kind);
    }

    private AsymmetricAlgorithm Key(string kid) => kid switch
    {
        "ec" => _ec,
        "ec384" => _ec384,
        _ => _rsa,
    };

    private JwtIdentity? Validate(string token, out JwtRefusal refusal) => Validator().Validate(token, Now, out refusal);

    // An issuer "k8s" whose key set file holds the given set (default: the P-256 key as k1).
    private JwtValidator Validator(string? jwks = null)
    {
        File.WriteAllText(JwksPath, jwks ?? TestJwt.Jwks(TestJwt.Jwk(_ec)));
        return new JwtValidator(Options().Issuers, _time, NullLogger.Instance);
    }

    private JwtOptions Options() => new() { Issuers = [TestJwt.IssuerOptions(JwksPath)] };
}
