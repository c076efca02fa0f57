using Google.Protobuf;
using Grpc.Core;
using Kms.Contracts.V1;

namespace Kms.Server.Tests;

/// <summary>
/// Every result of a batch names the request it answers (its index, from 0), whether it succeeded
/// or failed: the SDK ties each result to its request by it, and refuses an answer that does not.
/// </summary>
public sealed class BatchResultIndexTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    // Items alternate: even positions succeed, odd ones fail (a missing key, a blob that does not decrypt).
    private const int Items = 7;

    private KeyManagementService.KeyManagementServiceClient Stub => fixture.Client.Raw;

    [Fact]
    public async Task EveryBatchRpc_MixedOkAndFailingItems_EachResultsIndexIsItsPosition()
    {
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("index"));
        var missing = "tenants/dev/keys/" + ServerFixture.NewKeyId("missing");
        var blob = ByteString.CopyFrom((await fixture.Client.EncryptAsync(key.Name, "x"u8.ToArray())).Ciphertext);
        var bad = blob.ToByteArray();
        bad[^1] ^= 1;
        var badBlob = ByteString.CopyFrom(bad);

        var encrypt = new BatchEncryptRequest();
        var decrypt = new BatchDecryptRequest();
        var reEncrypt = new BatchReEncryptRequest();
        var generate = new BatchGenerateDataKeyRequest();
        for (var i = 0; i < Items; i++)
        {
            var ok = i % 2 == 0;
            encrypt.Requests.Add(new EncryptRequest { Name = ok ? key.Name : missing, Plaintext = ByteString.CopyFromUtf8("p") });
            decrypt.Requests.Add(new DecryptRequest { Ciphertext = ok ? blob : badBlob });
            reEncrypt.Requests.Add(new ReEncryptRequest { Ciphertext = ok ? blob : badBlob, DestinationName = key.Name });
            generate.Requests.Add(new GenerateDataKeyRequest { Name = ok ? key.Name : missing });
        }

        AssertIndexed((await Stub.BatchEncryptAsync(encrypt)).Results.Select(r => (r.Index, r.Status)));
        AssertIndexed((await Stub.BatchDecryptAsync(decrypt)).Results.Select(r => (r.Index, r.Status)));
        AssertIndexed((await Stub.BatchReEncryptAsync(reEncrypt)).Results.Select(r => (r.Index, r.Status)));
        AssertIndexed((await Stub.BatchGenerateDataKeyAsync(generate)).Results.Select(r => (r.Index, r.Status)));

        // The SDK's typed methods take the same answers (they check these indexes).
        Assert.Equal(Items, (await fixture.Client.BatchReEncryptAsync(reEncrypt)).Results.Count);
        Assert.Equal(Items, (await fixture.Client.BatchGenerateDataKeyAsync(generate)).Results.Count);
    }

    private static void AssertIndexed(IEnumerable<(uint Index, ItemStatus Status)> results)
    {
        var list = results.ToList();
        Assert.Equal(Items, list.Count);
        for (var i = 0; i < Items; i++)
        {
            Assert.Equal((uint)i, list[i].Index);
            Assert.Equal(i % 2 == 0, list[i].Status.Code == (int)StatusCode.OK);
        }
    }
}
