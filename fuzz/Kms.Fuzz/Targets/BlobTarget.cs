using System.Security.Cryptography;
using System.Text.Json;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;

namespace Kms.Fuzz;

/// <summary>
/// <see cref="CiphertextBlob.TryParse"/> (docs/ciphertext-format.md), then the server's decrypt
/// steps in software: the AAD for the blob's key version, and AES-256-GCM under the golden
/// vector's key. Contract: TryParse returns false or a blob that formats back to the same bytes;
/// decryption fails only with a <see cref="CryptographicException"/>.
/// </summary>
internal sealed class BlobTarget : FuzzTarget
{
    private static readonly Vector[] Vectors = LoadVectors();

    public override string Name => "blob";

    public override string Description => "ciphertext blob v1: CiphertextBlob.TryParse + AAD + AES-GCM (refusal: false / CryptographicException)";

    public override void Run(byte[] input)
    {
        if (!CiphertextBlob.TryParse(input, out var blob))
        {
            return;
        }

        var parsed = blob!;
        var formatted = CiphertextBlob.Format(parsed.KeyVersionId, parsed.Iv, parsed.CiphertextAndTag);
        if (!formatted.AsSpan().SequenceEqual(input))
        {
            throw new FuzzContractException("a parsed blob does not format back to its bytes");
        }

        var vector = Vectors.FirstOrDefault(v => v.KeyVersionId == parsed.KeyVersionId) ?? Vectors[0];
        var aad = CiphertextBlob.BuildAad(parsed.KeyVersionId, vector.Tenant, vector.Context);
        var ciphertextLength = parsed.CiphertextAndTag.Length - CiphertextBlob.TagLength;
        var plaintext = new byte[ciphertextLength];
        try
        {
            using var gcm = new AesGcm(vector.Key, CiphertextBlob.TagLength);
            gcm.Decrypt(parsed.Iv, parsed.CiphertextAndTag[..ciphertextLength], parsed.CiphertextAndTag[ciphertextLength..], plaintext, aad);
        }
        catch (CryptographicException)
        {
            // The documented refusal: the tag does not verify.
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        for (var i = 0; i < Vectors.Length; i++)
        {
            yield return ($"vector-{i:D2}", Vectors[i].Blob);
        }

        yield return ("short", [CiphertextBlob.FormatVersion1, 1, 2, 3]);
    }

    private static Vector[] LoadVectors()
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "vectors", "ciphertext-blob-v1.json")));
        return [.. document.RootElement.GetProperty("vectors").EnumerateArray().Select(v => new Vector(
            KeyVersionId.FromBytes(Convert.FromHexString(v.GetProperty("key_version_id").GetString()!)),
            Convert.FromHexString(v.GetProperty("key").GetString()!),
            TenantId.Parse(v.GetProperty("tenant").GetString()!),
            EncryptionContext.Create(v.GetProperty("encryption_context").EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.GetString()!)).ToList()),
            Convert.FromHexString(v.GetProperty("blob").GetString()!)))];
    }

    private sealed record Vector(KeyVersionId KeyVersionId, byte[] Key, TenantId Tenant, EncryptionContext Context, byte[] Blob);
}
