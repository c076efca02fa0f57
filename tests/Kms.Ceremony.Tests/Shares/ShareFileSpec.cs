using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Org.BouncyCastle.Crypto.Generators;
using Org.BouncyCastle.Crypto.Parameters;

namespace Kms.Ceremony.Tests.Shares;

/// <summary>
/// docs/share-format.md re-implemented from the document, over the JSON alone: the associated
/// data, the fingerprint, the checksum and the decryption. Used to forge edited files (as an
/// attacker who knows the format would) and to decrypt a file independently of ShareFile.
/// </summary>
internal static class ShareFileSpec
{
    public static JsonObject Json(byte[] file) => JsonNode.Parse(file)!.AsObject();

    /// <summary>Applies <paramref name="edit"/>, then recomputes the fingerprint (if asked) and the checksum.</summary>
    public static byte[] Forge(byte[] file, Action<JsonObject> edit, bool recomputeFingerprint = true)
    {
        var json = Json(file);
        edit(json);
        if (recomputeFingerprint)
        {
            json["fingerprint"] = Fingerprint(json);
        }
        return Render(json);
    }

    public static byte[] Render(JsonObject json)
    {
        json["checksum"] = new string('0', 64);
        var text = json.ToJsonString(new JsonSerializerOptions
        {
            WriteIndented = true,
            IndentSize = 2,
            NewLine = "\n",
            Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        }) + "\n";
        var bytes = Encoding.UTF8.GetBytes(text);
        // The checksum line and the closing brace are the last 83 bytes; the checksum covers the rest.
        var prefix = bytes.AsSpan(0, bytes.Length - 83);
        var checksum = Convert.ToHexStringLower(SHA256.HashData(prefix));
        Encoding.ASCII.GetBytes(checksum).CopyTo(bytes, bytes.Length - 83 + 15);
        return bytes;
    }

    public static string Fingerprint(JsonObject json)
    {
        var aead = json["aead"]!.AsObject();
        var input = Concat(
            Encoding.ASCII.GetBytes("kms-share-v1 fingerprint"),
            AssociatedData(json),
            Convert.FromHexString((string)aead["ciphertext"]!),
            Convert.FromHexString((string)aead["tag"]!));
        return Convert.ToHexStringLower(SHA256.HashData(input));
    }

    public static byte[] AssociatedData(JsonObject json)
    {
        var kdf = json["kdf"]!.AsObject();
        var aead = json["aead"]!.AsObject();
        var domainId = Encoding.UTF8.GetBytes((string)json["domainId"]!);
        var custodian = Encoding.UTF8.GetBytes((string)json["custodian"]!);
        var salt = Convert.FromHexString((string)kdf["salt"]!);
        var created = DateTimeOffset.Parse((string)json["createdAt"]!, System.Globalization.CultureInfo.InvariantCulture).ToUnixTimeSeconds();
        return Concat(
            Encoding.ASCII.GetBytes("kms-share-v1"),
            U16(domainId.Length), domainId,
            Convert.FromHexString((string)json["domainKcv"]!),
            U16(custodian.Length), custodian,
            [(byte)(int)json["index"]!, (byte)(int)json["threshold"]!, (byte)(int)json["count"]!, (byte)(int)json["shareLength"]!],
            I64(created),
            U32((int)kdf["version"]!), U32((int)kdf["memoryKib"]!), U32((int)kdf["iterations"]!), U32((int)kdf["parallelism"]!),
            [(byte)salt.Length], salt,
            Convert.FromHexString((string)aead["nonce"]!));
    }

    /// <summary>Decrypts the share with BouncyCastle's Argon2id and .NET's AesGcm, following the document only.</summary>
    public static byte[] Decrypt(byte[] file, string passphrase)
    {
        var json = Json(file);
        var kdf = json["kdf"]!.AsObject();
        var aead = json["aead"]!.AsObject();
        var parameters = new Argon2Parameters.Builder(Argon2Parameters.Argon2id)
            .WithVersion(Argon2Parameters.Version13)
            .WithMemoryAsKB((int)kdf["memoryKib"]!)
            .WithIterations((int)kdf["iterations"]!)
            .WithParallelism((int)kdf["parallelism"]!)
            .WithSalt(Convert.FromHexString((string)kdf["salt"]!))
            .Build();
        var generator = new Argon2BytesGenerator();
        generator.Init(parameters);
        var key = new byte[32];
        generator.GenerateBytes(Encoding.UTF8.GetBytes(passphrase.Normalize(NormalizationForm.FormC)), key);
        var ciphertext = Convert.FromHexString((string)aead["ciphertext"]!);
        var plaintext = new byte[ciphertext.Length];
        using var gcm = new AesGcm(key, 16);
        gcm.Decrypt(Convert.FromHexString((string)aead["nonce"]!), ciphertext, Convert.FromHexString((string)aead["tag"]!), plaintext, AssociatedData(json));
        return plaintext;
    }

    private static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    private static byte[] U16(int value) => [(byte)(value >> 8), (byte)value];

    private static byte[] U32(int value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, (uint)value);
        return bytes;
    }

    private static byte[] I64(long value)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteInt64BigEndian(bytes, value);
        return bytes;
    }
}
