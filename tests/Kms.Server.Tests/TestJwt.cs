using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Kms.Server.Tests;

/// <summary>Makes JWTs and key sets the way an issuer does, with keys made by .NET: tokens signed here, in the test.</summary>
internal static class TestJwt
{
    public const string Issuer = "https://kubernetes.default.svc.cluster.local";
    public const string Audience = "kms";
    public const string Subject = "system:serviceaccount:payments:api";

    public static string Base64Url(byte[] bytes) => System.Buffers.Text.Base64Url.EncodeToString(bytes);

    public static string Base64Url(string json) => Base64Url(Encoding.UTF8.GetBytes(json));

    /// <summary>Claims as an issuer writes them, times from <paramref name="now"/>; <paramref name="change"/> edits them (a null value removes the claim).</summary>
    public static string Claims(DateTimeOffset now, Action<Dictionary<string, object?>>? change = null)
    {
        var claims = new Dictionary<string, object?>
        {
            ["iss"] = Issuer,
            ["aud"] = new[] { Audience },
            ["sub"] = Subject,
            ["iat"] = now.ToUnixTimeSeconds(),
            ["nbf"] = now.ToUnixTimeSeconds(),
            ["exp"] = now.AddHours(1).ToUnixTimeSeconds(),
        };
        change?.Invoke(claims);
        return JsonSerializer.Serialize(claims.Where(c => c.Value is not null).ToDictionary());
    }

    /// <summary>A compact JWS of exactly these header and claims texts, signed by <paramref name="key"/> with <paramref name="alg"/>.</summary>
    public static string Sign(string header, string claims, AsymmetricAlgorithm key, string alg)
    {
        var input = $"{Base64Url(header)}.{Base64Url(claims)}";
        var data = Encoding.ASCII.GetBytes(input);
        var signature = (key, alg) switch
        {
            (ECDsa ec, "ES256") => ec.SignData(data, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation),
            (ECDsa ec, "ES384") => ec.SignData(data, HashAlgorithmName.SHA384, DSASignatureFormat.IeeeP1363FixedFieldConcatenation),
            (ECDsa ec, _) => ec.SignData(data, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation),
            (RSA rsa, "PS256") => rsa.SignData(data, HashAlgorithmName.SHA256, RSASignaturePadding.Pss),
            (RSA rsa, _) => rsa.SignData(data, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1),
            _ => throw new ArgumentException("no such key", nameof(key)),
        };
        return $"{input}.{Base64Url(signature)}";
    }

    /// <summary>A token with header <c>{"alg":…,"kid":…}</c>.</summary>
    public static string Sign(string claims, AsymmetricAlgorithm key, string alg, string? kid = "k1") =>
        Sign(kid is null ? $"{{\"alg\":\"{alg}\"}}" : $"{{\"alg\":\"{alg}\",\"kid\":\"{kid}\"}}", claims, key, alg);

    /// <summary>The public JWK of a key, as an issuer publishes it.</summary>
    public static Dictionary<string, object> Jwk(AsymmetricAlgorithm key, string? kid = "k1", string? alg = null)
    {
        var jwk = new Dictionary<string, object>();
        switch (key)
        {
            case ECDsa ec:
                var p = ec.ExportParameters(false);
                jwk["kty"] = "EC";
                jwk["crv"] = p.Q.X!.Length == 32 ? "P-256" : "P-384";
                jwk["x"] = Base64Url(p.Q.X!);
                jwk["y"] = Base64Url(p.Q.Y!);
                break;
            case RSA rsa:
                var r = rsa.ExportParameters(false);
                jwk["kty"] = "RSA";
                jwk["n"] = Base64Url(r.Modulus!);
                jwk["e"] = Base64Url(r.Exponent!);
                break;
        }

        jwk["use"] = "sig";
        if (kid is not null)
        {
            jwk["kid"] = kid;
        }

        if (alg is not null)
        {
            jwk["alg"] = alg;
        }

        return jwk;
    }

    public static string Jwks(params Dictionary<string, object>[] keys) => JsonSerializer.Serialize(new { keys });

    /// <summary>The one issuer of these tests, named k8s, whose key set is read from <paramref name="jwksPath"/>.</summary>
    public static Kms.Server.Hosting.JwtIssuerOptions IssuerOptions(string jwksPath) =>
        new() { Name = "k8s", Issuer = Issuer, Audience = Audience, JwksPath = jwksPath };

    /// <summary><see cref="IssuerOptions"/> as the server's command-line options.</summary>
    public static string[] ServerArguments(string jwksPath) =>
        ["--Kms:Jwt:Issuers:0:Name=k8s", $"--Kms:Jwt:Issuers:0:Issuer={Issuer}", $"--Kms:Jwt:Issuers:0:Audience={Audience}", $"--Kms:Jwt:Issuers:0:JwksPath={jwksPath}"];
}
