using System.Security.Cryptography;
using System.Text.Json;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;

namespace Kms.Core.Tests;

/// <summary>
/// The blob format and the context encoding against vectors made by an independent
/// implementation of docs/ciphertext-format.md (vectors/generate.py, Python + pyca).
/// </summary>
public sealed class GoldenVectorTests
{
    public static TheoryData<string> VectorNames() => [.. Load().Select(v => v.GetProperty("name").GetString()!)];

    [Theory]
    [MemberData(nameof(VectorNames))]
    public void EncryptionContext_GoldenVector_EncodesIdentically(string name)
    {
        var vector = Find(name);
        var context = EncryptionContext.Create(ContextOf(vector));
        Assert.Equal(Hex(vector, "encoded_context"), context.Encoded.ToArray());
    }

    [Theory]
    [MemberData(nameof(VectorNames))]
    public void BuildAad_GoldenVector_BindsHeaderTenantAndContext(string name)
    {
        var vector = Find(name);
        var aad = CiphertextBlob.BuildAad(
            KeyVersionId.FromBytes(Hex(vector, "key_version_id")),
            TenantId.Parse(vector.GetProperty("tenant").GetString()!),
            EncryptionContext.Create(ContextOf(vector)));
        Assert.Equal(Hex(vector, "aad"), aad);
    }

    [Theory]
    [MemberData(nameof(VectorNames))]
    public void Format_GoldenVector_MatchesIndependentAesGcm(string name)
    {
        var vector = Find(name);
        var plaintext = Hex(vector, "plaintext");
        var sealedBytes = new byte[plaintext.Length + CiphertextBlob.TagLength];
        using (var aes = new AesGcm(Hex(vector, "key"), CiphertextBlob.TagLength))
        {
            aes.Encrypt(Hex(vector, "iv"), plaintext, sealedBytes.AsSpan(0, plaintext.Length), sealedBytes.AsSpan(plaintext.Length), Hex(vector, "aad"));
        }

        var blob = CiphertextBlob.Format(KeyVersionId.FromBytes(Hex(vector, "key_version_id")), Hex(vector, "iv"), sealedBytes);
        Assert.Equal(Hex(vector, "blob"), blob);
    }

    [Theory]
    [MemberData(nameof(VectorNames))]
    public void TryParse_GoldenVector_RecoversParts(string name)
    {
        var vector = Find(name);
        Assert.True(CiphertextBlob.TryParse(Hex(vector, "blob"), out var blob));
        Assert.Equal(KeyVersionId.FromBytes(Hex(vector, "key_version_id")), blob!.KeyVersionId);
        Assert.Equal(Hex(vector, "iv"), blob.Iv.ToArray());
        Assert.Equal(Hex(vector, "plaintext").Length + CiphertextBlob.TagLength, blob.CiphertextAndTag.Length);
    }

    private static JsonElement Find(string name) => Load().Single(v => v.GetProperty("name").GetString() == name);

    private static List<JsonElement> Load()
    {
        using var document = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "vectors", "ciphertext-blob-v1.json")));
        return [.. document.RootElement.GetProperty("vectors").EnumerateArray().Select(v => v.Clone())];
    }

    private static Dictionary<string, string> ContextOf(JsonElement vector) =>
        vector.GetProperty("encryption_context").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);

    private static byte[] Hex(JsonElement vector, string property) => Convert.FromHexString(vector.GetProperty(property).GetString()!);
}
