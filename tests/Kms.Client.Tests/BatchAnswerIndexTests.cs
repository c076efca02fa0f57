using System.Security.Cryptography;
using Google.Protobuf;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests;

/// <summary>
/// <see cref="KmsClient"/>'s batch methods against a KMS (or a proxy) whose answer does not tie
/// result i to request i: refused with an <see cref="InvalidOperationException"/> naming the RPC
/// and what is wrong, never handed to the caller — a reordered answer would give one item's
/// ciphertext, plaintext or data key to another's. Plaintexts of a refused answer are zeroed.
/// </summary>
public sealed class BatchAnswerIndexTests
{
    private const string Key = "tenants/t/keys/k";
    private const int Items = 3;

    public static TheoryData<string, string, string> WrongAnswers()
    {
        var data = new TheoryData<string, string, string>();
        foreach (var rpc in new[] { "BatchEncrypt", "BatchDecrypt", "BatchReEncrypt", "BatchGenerateDataKey" })
        {
            data.Add(rpc, "first and last swapped", "result 0 answers request 2");
            data.Add(rpc, "every index 0", "result 1 answers request 0");
            data.Add(rpc, "fewer results", "2 results for 3 requests");
            data.Add(rpc, "more results", "4 results for 3 requests");
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(WrongAnswers))]
    public async Task WrongAnswer_InvalidOperationException_NamingTheRpcAndWhatIsWrong_PlaintextsZeroed(string rpc, string wrong, string what)
    {
        var secrets = new List<byte[]>();
        var endpoint = new ScriptedEndpoint("kms") { Respond = _ => Answer(rpc, Items, wrong, secrets) };
        using var fake = new FakeClient([endpoint], maxAttempts: 1);

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Call(fake.Client, rpc, Items));

        Assert.Equal($"the KMS answered {rpc} wrongly ({what}): the answer was refused (result i must answer request i)", e.Message);
        Assert.All(secrets, s => Assert.True(s.All(b => b == 0), "a plaintext of the refused answer was not zeroed"));
        Assert.Equal(rpc is "BatchDecrypt" or "BatchGenerateDataKey", secrets.Count > 0);
    }

    [Theory]
    [InlineData("BatchEncrypt")]
    [InlineData("BatchDecrypt")]
    [InlineData("BatchReEncrypt")]
    [InlineData("BatchGenerateDataKey")]
    public async Task HonestAnswer_ReturnedAsIs_PlaintextsLeftToTheCaller_ASingleItemOfAnOlderServerToo(string rpc)
    {
        foreach (var items in new[] { Items, 1 })
        {
            // A single result's index is 0 whether the server sets it or predates it.
            var secrets = new List<byte[]>();
            var endpoint = new ScriptedEndpoint("kms") { Respond = _ => Answer(rpc, items, "none", secrets) };
            using var fake = new FakeClient([endpoint], maxAttempts: 1);

            Assert.Equal(items, await Call(fake.Client, rpc, items));
            Assert.All(secrets, s => Assert.Contains(s, b => b != 0));
        }
    }

    // The number of results the typed method returned.
    private static async Task<int> Call(KmsClient client, string rpc, int items)
    {
        var blob = ByteString.CopyFrom(Blob());
        switch (rpc)
        {
            case "BatchEncrypt":
                var encrypt = new BatchEncryptRequest();
                encrypt.Requests.Add(Enumerable.Range(0, items).Select(_ => new EncryptRequest { Name = Key, Plaintext = ByteString.CopyFromUtf8("p") }));
                return (await client.BatchEncryptAsync(encrypt)).Results.Count;
            case "BatchDecrypt":
                var decrypt = new BatchDecryptRequest();
                decrypt.Requests.Add(Enumerable.Range(0, items).Select(_ => new DecryptRequest { Ciphertext = blob }));
                return (await client.BatchDecryptAsync(decrypt)).Results.Count;
            case "BatchReEncrypt":
                var reEncrypt = new BatchReEncryptRequest();
                reEncrypt.Requests.Add(Enumerable.Range(0, items).Select(_ => new ReEncryptRequest { Ciphertext = blob, DestinationName = Key }));
                return (await client.BatchReEncryptAsync(reEncrypt)).Results.Count;
            default:
                var generate = new BatchGenerateDataKeyRequest();
                generate.Requests.Add(Enumerable.Range(0, items).Select(_ => new GenerateDataKeyRequest { Name = Key }));
                return (await client.BatchGenerateDataKeyAsync(generate)).Results.Count;
        }
    }

    // An answer of `items` successes, each with its index, made wrong as `wrong` says;
    // each plaintext it carries is a buffer of `secrets`, so the test sees whether it was zeroed.
    private static object Answer(string rpc, int items, string wrong, List<byte[]> secrets)
    {
        var indexes = Enumerable.Range(0, items).Select(i => (uint)i).ToList();
        switch (wrong)
        {
            case "first and last swapped":
                (indexes[0], indexes[^1]) = (indexes[^1], indexes[0]);
                break;
            case "every index 0":
                indexes = indexes.ConvertAll(_ => 0u);
                break;
            case "fewer results":
                indexes.RemoveAt(items - 1);
                break;
            case "more results":
                indexes.Add((uint)items);
                break;
        }

        ByteString Secret()
        {
            var secret = RandomNumberGenerator.GetBytes(32);
            secret[0] |= 1;
            secrets.Add(secret);
            return UnsafeByteOperations.UnsafeWrap(secret);
        }

        var version = Key + "/versions/1";
        switch (rpc)
        {
            case "BatchEncrypt":
                var encrypt = new BatchEncryptResponse();
                encrypt.Results.Add(indexes.Select(i => new BatchEncryptResult { Index = i, Status = new ItemStatus(), Response = new EncryptResponse { Ciphertext = ByteString.CopyFrom(Blob()), KeyVersion = version } }));
                return encrypt;
            case "BatchDecrypt":
                var decrypt = new BatchDecryptResponse();
                decrypt.Results.Add(indexes.Select(i => new BatchDecryptResult { Index = i, Status = new ItemStatus(), Response = new DecryptResponse { Plaintext = Secret(), KeyVersion = version } }));
                return decrypt;
            case "BatchReEncrypt":
                var reEncrypt = new BatchReEncryptResponse();
                reEncrypt.Results.Add(indexes.Select(i => new BatchReEncryptResult { Index = i, Status = new ItemStatus(), Response = new ReEncryptResponse { Ciphertext = ByteString.CopyFrom(Blob()), SourceKeyVersion = version, KeyVersion = version } }));
                return reEncrypt;
            default:
                var generate = new BatchGenerateDataKeyResponse();
                generate.Results.Add(indexes.Select(i => new BatchGenerateDataKeyResult { Index = i, Status = new ItemStatus(), Response = new GenerateDataKeyResponse { Plaintext = Secret(), Ciphertext = ByteString.CopyFrom(Blob()), KeyVersion = version } }));
                return generate;
        }
    }

    private static byte[] Blob()
    {
        var blob = RandomNumberGenerator.GetBytes(77);
        blob[0] = 1;
        return blob;
    }
}
