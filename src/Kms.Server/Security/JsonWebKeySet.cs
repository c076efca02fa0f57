using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text.Json;

namespace Kms.Server.Security;

/// <summary>
/// An issuer's public signing keys, read from a JSON Web Key Set file (RFC 7517) and nothing else:
/// RSA keys of 2048 to 8192 bits and EC keys on P-256 or P-384 (the point checked to lie on the
/// curve). Parsed strictly — a member given twice, a private member (<c>d</c>, <c>k</c> …), another
/// key type or curve, a weak RSA key, two keys with one <c>kid</c> refuse the whole file: it is
/// the operator's to fix, and half a key set is no safer than the previous one, which stays in force.
/// A key marked for another use than signing (<c>use</c>, <c>key_ops</c>) is left out.
/// </summary>
internal sealed class JsonWebKeySet
{
    /// <summary>The largest key set file read.</summary>
    public const int MaxFileBytes = 1024 * 1024;

    /// <summary>Parse options for every JSON a token or a key set holds: no duplicate members, no comments, shallow.</summary>
    public static readonly JsonDocumentOptions Strict = new() { AllowDuplicateProperties = false, MaxDepth = 16 };

    private static readonly string[] PrivateMembers = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

    private JsonWebKeySet(IReadOnlyList<JsonWebKey> keys) => Keys = keys;

    /// <summary>The signing keys of the set, at least one.</summary>
    public IReadOnlyList<JsonWebKey> Keys { get; }

    /// <summary>Reads and parses a key set file.</summary>
    /// <exception cref="FormatException">The file is no acceptable key set; the message says why (it holds no key material).</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static JsonWebKeySet Load(string path)
    {
        using var file = File.OpenRead(path);
        if (file.Length > MaxFileBytes)
        {
            throw new FormatException($"the key set file is larger than {MaxFileBytes} bytes");
        }

        var bytes = new byte[file.Length];
        file.ReadExactly(bytes);
        return Parse(bytes);
    }

    /// <summary>Parses a key set.</summary>
    /// <exception cref="FormatException">It is no acceptable key set; the message says why.</exception>
    public static JsonWebKeySet Parse(ReadOnlyMemory<byte> json)
    {
        JsonDocument document;
        try
        {
            document = ParseStrict(json);
        }
        catch (JsonException e)
        {
            throw new FormatException($"not a JSON Web Key Set: {e.Message}", e);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("keys", out var keys) || keys.ValueKind != JsonValueKind.Array)
            {
                throw new FormatException("not a JSON Web Key Set: no \"keys\" array");
            }

            var parsed = new List<JsonWebKey>();
            var index = 0;
            foreach (var element in keys.EnumerateArray())
            {
                if (ParseKey(element, index++) is { } key)
                {
                    if (key.Kid is not null && parsed.Any(k => k.Kid == key.Kid))
                    {
                        throw new FormatException($"two keys have the kid {key.Kid}");
                    }

                    parsed.Add(key);
                }
            }

            if (parsed.Count == 0)
            {
                throw new FormatException("the key set holds no signing key");
            }

            return new JsonWebKeySet(parsed);
        }
    }

    /// <summary>
    /// Parses JSON with <see cref="Strict"/>, every member name and string in it text: an escaped
    /// unpaired surrogate (<c>"\ud800"</c>) is valid JSON no string can be read from — the duplicate
    /// check and <see cref="JsonElement.GetString"/> throw <see cref="InvalidOperationException"/> on it.
    /// </summary>
    /// <exception cref="JsonException">It is not such JSON.</exception>
    public static JsonDocument ParseStrict(ReadOnlyMemory<byte> json)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, Strict);
        }
        catch (InvalidOperationException e)
        {
            throw new JsonException("a member name is no text (an unpaired surrogate)", e);
        }

        if (!IsText(document.RootElement))
        {
            document.Dispose();
            throw new JsonException("a string is no text (an unpaired surrogate)");
        }

        return document;
    }

    private static bool IsText(JsonElement element)
    {
        try
        {
            return element.ValueKind switch
            {
                JsonValueKind.Object => element.EnumerateObject().All(member => member.Name is not null && IsText(member.Value)),
                JsonValueKind.Array => element.EnumerateArray().All(IsText),
                JsonValueKind.String => element.GetString() is not null,
                _ => true,
            };
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    // A key (null if it is not for signatures), or a FormatException naming it by position and kid.
    private static JsonWebKey? ParseKey(JsonElement element, int index)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new FormatException($"key {index} is not a JSON object");
        }

        var kid = OptionalString(element, "kid", $"key {index}");
        var name = kid is null ? $"key {index}" : $"key {index} (kid {kid})";
        if (PrivateMembers.FirstOrDefault(m => element.TryGetProperty(m, out _)) is { } secret)
        {
            throw new FormatException($"{name} holds the private member \"{secret}\": a key set file holds public keys only");
        }

        if (OptionalString(element, "use", name) is { } use && use != "sig")
        {
            return null;
        }

        if (element.TryGetProperty("key_ops", out var operations)
            && (operations.ValueKind != JsonValueKind.Array || !operations.EnumerateArray().Any(o => o.ValueKind == JsonValueKind.String && o.GetString() == "verify")))
        {
            return null;
        }

        var alg = OptionalString(element, "alg", name);
        var key = OptionalString(element, "kty", name) switch
        {
            "RSA" => Rsa(element, name, kid, alg),
            "EC" => Ec(element, name, kid, alg),
            var other => throw new FormatException($"{name} has the key type {other ?? "(none)"}; only RSA and EC keys are accepted"),
        };
        if (alg is not null && !key.Allows(alg))
        {
            throw new FormatException($"{name} says alg {alg}, which is not {string.Join(" or ", key.Algorithms)}");
        }

        return key;
    }

    private static JsonWebKey Rsa(JsonElement element, string name, string? kid, string? alg)
    {
        var parameters = new RSAParameters { Modulus = TrimLeadingZeros(Bytes(element, "n", name)), Exponent = TrimLeadingZeros(Bytes(element, "e", name)) };

        // An exponent of 1 makes every signature its own message's: anyone could sign.
        if (parameters.Exponent is not [.., var last] || (last & 1) == 0 || parameters.Exponent is [1])
        {
            throw new FormatException($"{name} has an RSA exponent that is no odd number above 1");
        }

        int bits;
        try
        {
            using var rsa = System.Security.Cryptography.RSA.Create(parameters);
            bits = rsa.KeySize;
        }
        catch (CryptographicException e)
        {
            throw new FormatException($"{name} is no RSA public key: {e.Message}", e);
        }

        if (bits is < 2048 or > 8192)
        {
            throw new FormatException($"{name} is an RSA key of {bits} bits; 2048 to 8192 are accepted");
        }

        return new JsonWebKey(kid, alg, JsonWebKey.RsaFamily, parameters, null);
    }

    private static JsonWebKey Ec(JsonElement element, string name, string? kid, string? alg)
    {
        var (curve, size) = OptionalString(element, "crv", name) switch
        {
            "P-256" => (ECCurve.NamedCurves.nistP256, 32),
            "P-384" => (ECCurve.NamedCurves.nistP384, 48),
            var other => throw new FormatException($"{name} is on the curve {other ?? "(none)"}; only P-256 and P-384 are accepted"),
        };
        var parameters = new ECParameters { Curve = curve, Q = new ECPoint { X = Bytes(element, "x", name), Y = Bytes(element, "y", name) } };
        if (parameters.Q.X!.Length != size || parameters.Q.Y!.Length != size)
        {
            throw new FormatException($"{name}: x and y must be {size} bytes each");
        }

        try
        {
            // Refuses a point that is not on the curve (an invalid-curve key).
            using var ecdsa = ECDsa.Create(parameters);
        }
        catch (CryptographicException e)
        {
            throw new FormatException($"{name} is no EC public key: {e.Message}", e);
        }

        return new JsonWebKey(kid, alg, size == 32 ? "P-256" : "P-384", null, parameters);
    }

    private static string? OptionalString(JsonElement element, string member, string name)
    {
        if (!element.TryGetProperty(member, out var value))
        {
            return null;
        }

        return value.ValueKind == JsonValueKind.String ? value.GetString() : throw new FormatException($"{name}: \"{member}\" is not a string");
    }

    private static byte[] Bytes(JsonElement element, string member, string name) =>
        element.TryGetProperty(member, out var value) && value.ValueKind == JsonValueKind.String && JsonWebKey.TryDecode(value.GetString()!, out var bytes) && bytes.Length > 0
            ? bytes
            : throw new FormatException($"{name}: \"{member}\" is missing or not base64url");

    private static byte[] TrimLeadingZeros(byte[] value)
    {
        var start = 0;
        while (start < value.Length - 1 && value[start] == 0)
        {
            start++;
        }

        return value[start..];
    }
}

/// <summary>One public signing key of a <see cref="JsonWebKeySet"/>: its parameters, never a live key object (each verification makes its own).</summary>
/// <param name="Kid">The key's id, if the set gives one.</param>
/// <param name="Alg">The one algorithm the set allows it, if it says.</param>
/// <param name="Family">"RSA", "P-256" or "P-384".</param>
/// <param name="Rsa">An RSA key's parameters.</param>
/// <param name="Ec">An EC key's parameters.</param>
internal sealed record JsonWebKey(string? Kid, string? Alg, string Family, RSAParameters? Rsa, ECParameters? Ec)
{
    /// <summary>The family of RSA keys.</summary>
    public const string RsaFamily = "RSA";

    /// <summary>The JWS algorithms this key may verify: by its type and curve, narrowed by its own <c>alg</c>.</summary>
    public IReadOnlyList<string> Algorithms => Family switch
    {
        RsaFamily => ["RS256", "PS256"],
        "P-256" => ["ES256"],
        _ => ["ES384"],
    };

    /// <summary>Whether a token with header <c>alg</c> <paramref name="alg"/> may be verified with this key.</summary>
    public bool Allows(string alg) => Algorithms.Contains(alg) && (Alg is null || Alg == alg);

    /// <summary>
    /// Whether <paramref name="signature"/> is this key's signature of <paramref name="input"/> by
    /// <paramref name="alg"/> (JWS, RFC 7518: ECDSA as r‖s of the curve's size, RSASSA-PKCS1-v1_5,
    /// RSASSA-PSS with SHA-256, MGF1 and a 32-byte salt). False for an algorithm the key is not for.
    /// </summary>
    public bool Verifies(string alg, ReadOnlySpan<byte> input, ReadOnlySpan<byte> signature)
    {
        if (!Allows(alg))
        {
            return false;
        }

        if (Ec is { } ec)
        {
            var (hash, size) = alg == "ES256" ? (HashAlgorithmName.SHA256, 64) : (HashAlgorithmName.SHA384, 96);
            if (signature.Length != size)
            {
                return false;
            }

            using var ecdsa = ECDsa.Create(ec);
            return ecdsa.VerifyData(input, signature, hash, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        }

        using var rsa = System.Security.Cryptography.RSA.Create(Rsa!.Value);
        return signature.Length == (rsa.KeySize + 7) / 8
            && rsa.VerifyData(input, signature, HashAlgorithmName.SHA256, alg == "PS256" ? RSASignaturePadding.Pss : RSASignaturePadding.Pkcs1);
    }

    /// <summary>Decodes base64url as JWS writes it: no padding, nothing but <c>[A-Za-z0-9_-]</c>.</summary>
    public static bool TryDecode(ReadOnlySpan<char> text, out byte[] bytes)
    {
        bytes = [];
        foreach (var c in text)
        {
            if (!char.IsAsciiLetterOrDigit(c) && c != '-' && c != '_')
            {
                return false;
            }
        }

        try
        {
            bytes = Base64Url.DecodeFromChars(text);
            return true;
        }
        catch (FormatException)
        {
            return false;
        }
    }
}
