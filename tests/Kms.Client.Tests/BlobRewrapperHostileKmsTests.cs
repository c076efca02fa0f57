using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Kms.Client.Rewrap;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests;

/// <summary>
/// <see cref="BlobRewrapper"/> against a KMS whose BatchReEncrypt answer is wrong: every new blob
/// replaces a stored one, so a wrong answer must be refused before anything is written — never
/// written over the data, never an IndexOutOfRange or NullReference.
/// </summary>
public sealed class BlobRewrapperHostileKmsTests
{
    private const string Key = "tenants/t/keys/k";
    private const string Alias = "tenants/t/aliases/a";

    // A byte past the header of a new blob the fake KMS marks with the position of the blob it answers.
    private const int NewBlobMark = 40;

    public static TheoryData<string> WrongAnswers() =>
        new() { "fewer results", "more results", "no status", "success without a blob", "empty blob", "blob cut to its header", "blob under another key", "every index 0 (a server from before the index)" };

    [Theory]
    [MemberData(nameof(WrongAnswers))]
    public async Task WrongBatchAnswer_InternalRpcException_NothingWritten_NoCheckpoint(string wrong)
    {
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => Answer((BatchReEncryptRequest)call.Request, wrong) };
        using var fake = new FakeClient([endpoint], maxAttempts: 1);
        var written = new List<string>();
        var checkpoint = new MemoryCheckpoint();

        var e = await Assert.ThrowsAsync<RpcException>(() => new BlobRewrapper(fake.Client, batchSize: 3).RunAsync(
            Blobs(3),
            Key,
            (blob, _, _) =>
            {
                written.Add(blob.Id);
                return Task.CompletedTask;
            },
            checkpoint));

        Assert.Equal(StatusCode.Internal, e.StatusCode);
        Assert.Contains("no blob of the batch was written", e.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(written);
        Assert.Null(checkpoint.Saved);
    }

    [Theory]
    [InlineData("tenants/other/keys/k/versions/2")]
    [InlineData("tenants/t/keys/k")]
    [InlineData("tenants/t/keys/bad.id/versions/2")]
    [InlineData("")]
    public async Task ThroughAnAlias_ABlobUnderNoVersionOfAKeyOfItsTenant_InternalRpcException_NothingWritten(string keyVersion)
    {
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => WithLastUnder(Answer((BatchReEncryptRequest)call.Request, "none"), keyVersion) };
        using var fake = new FakeClient([endpoint], maxAttempts: 1);
        var written = new List<string>();

        var e = await Assert.ThrowsAsync<RpcException>(() => new BlobRewrapper(fake.Client, batchSize: 3).RunAsync(Blobs(3), Alias, (blob, _, _) =>
        {
            written.Add(blob.Id);
            return Task.CompletedTask;
        }));

        Assert.Equal(StatusCode.Internal, e.StatusCode);
        Assert.Contains("not a version of a key of the alias's tenant", e.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(written);
    }

    [Fact]
    public async Task ThroughAnAlias_HonestAnswer_EveryBlobWritten()
    {
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => Answer((BatchReEncryptRequest)call.Request, "none") };
        using var fake = new FakeClient([endpoint], maxAttempts: 1);
        var written = new List<string>();

        await new BlobRewrapper(fake.Client, batchSize: 3).RunAsync(Blobs(3), Alias, (blob, _, _) =>
        {
            written.Add(blob.Id);
            return Task.CompletedTask;
        });

        Assert.Equal(["b0", "b1", "b2"], written);
    }

    [Fact]
    public async Task ReorderedAnswer_TwoResultsSwapped_InternalRpcException_NoBlobWrittenOverAnother()
    {
        // A well-formed answer — every result a whole blob under the key, each carrying the index
        // of the request it answers — whose first and last results a server or proxy swapped.
        var endpoint = new ScriptedEndpoint("kms")
        {
            Respond = call =>
            {
                var request = (BatchReEncryptRequest)call.Request;
                var response = new BatchReEncryptResponse();
                for (var i = 0; i < request.Requests.Count; i++)
                {
                    var blob = Blob();
                    blob[NewBlobMark] = (byte)i;
                    response.Results.Add(new BatchReEncryptResult
                    {
                        Index = (uint)i,
                        Status = new ItemStatus(),
                        Response = new ReEncryptResponse { Ciphertext = ByteString.CopyFrom(blob), SourceKeyVersion = Key + "/versions/1", KeyVersion = Key + "/versions/2" },
                    });
                }

                (response.Results[0], response.Results[^1]) = (response.Results[^1], response.Results[0]);
                return response;
            },
        };
        using var fake = new FakeClient([endpoint], maxAttempts: 1);
        var written = new List<string>();
        var checkpoint = new MemoryCheckpoint();

        var e = await Record.ExceptionAsync(() => new BlobRewrapper(fake.Client, batchSize: 3).RunAsync(
            Blobs(3),
            Key,
            (blob, ciphertext, _) =>
            {
                written.Add($"{blob.Id} <- the new blob of b{ciphertext[NewBlobMark]}");
                return Task.CompletedTask;
            },
            checkpoint));

        Assert.Empty(written);
        var rpc = Assert.IsType<RpcException>(e);
        Assert.Equal(StatusCode.Internal, rpc.StatusCode);
        Assert.Equal("the KMS answered BatchReEncrypt wrongly (result 0 answers blob 2); no blob of the batch was written", rpc.Status.Detail);
        Assert.Null(checkpoint.Saved);
    }

    private static BatchReEncryptResponse WithLastUnder(BatchReEncryptResponse response, string keyVersion)
    {
        response.Results[^1].Response.KeyVersion = keyVersion;
        return response;
    }

    [Fact]
    public async Task HonestAnswer_EveryBlobWritten_AnItemFailureReported()
    {
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => Answer((BatchReEncryptRequest)call.Request, "second item fails") };
        using var fake = new FakeClient([endpoint], maxAttempts: 1);
        var written = new List<string>();

        var report = await new BlobRewrapper(fake.Client, batchSize: 3).RunAsync(Blobs(3), Key, (blob, _, _) =>
        {
            written.Add(blob.Id);
            return Task.CompletedTask;
        });

        Assert.Equal(["b0", "b2"], written);
        Assert.Equal("b1", Assert.Single(report.Failures).Id);
    }

    [Fact]
    public async Task ItemFailure_ItsStatusTextHidingOrMovingText_ReportedEscaped()
    {
        // The message reaches the CLI's table, its JSON and whatever logs the report: a control
        // character there forges a line, U+202E shows an operator other text.
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => Answer((BatchReEncryptRequest)call.Request, "second item fails, its text hostile") };
        using var fake = new FakeClient([endpoint], maxAttempts: 1);

        var report = await new BlobRewrapper(fake.Client, batchSize: 3).RunAsync(Blobs(3), Key, (_, _, _) => Task.CompletedTask);

        var failure = Assert.Single(report.Failures);
        Assert.Equal(StatusCode.InvalidArgument, failure.Code);
        Assert.Equal(@"decryption failed?forged line \u202Edeliated", failure.Message);
    }

    private static BatchReEncryptResponse Answer(BatchReEncryptRequest request, string wrong)
    {
        var response = new BatchReEncryptResponse();
        for (var i = 0; i < request.Requests.Count; i++)
        {
            response.Results.Add(new BatchReEncryptResult
            {
                Index = (uint)i,
                Status = new ItemStatus(),
                Response = new ReEncryptResponse { Ciphertext = ByteString.CopyFrom(Blob()), SourceKeyVersion = Key + "/versions/1", KeyVersion = Key + "/versions/2" },
            });
        }

        var last = response.Results[^1];
        switch (wrong)
        {
            case "fewer results":
                response.Results.RemoveAt(1);
                break;
            case "more results":
                response.Results.Add(last.Clone());
                break;
            case "no status":
                last.Status = null;
                break;
            case "success without a blob":
                last.Response = null;
                break;
            case "empty blob":
                last.Response.Ciphertext = ByteString.Empty;
                break;
            case "blob cut to its header":
                last.Response.Ciphertext = ByteString.CopyFrom(Blob(), 0, 17);
                break;
            case "blob under another key":
                last.Response.KeyVersion = "tenants/t/keys/other/versions/1";
                break;
            case "every index 0 (a server from before the index)":
                foreach (var result in response.Results)
                {
                    result.Index = 0;
                }

                break;
            case "second item fails":
                response.Results[1] = new BatchReEncryptResult { Index = 1, Status = new ItemStatus { Code = (int)StatusCode.InvalidArgument, Message = "decryption failed" } };
                break;
            case "second item fails, its text hostile":
                response.Results[1] = new BatchReEncryptResult { Index = 1, Status = new ItemStatus { Code = (int)StatusCode.InvalidArgument, Message = "decryption failed\nforged line \u202Edeliated" } };
                break;
        }

        return response;
    }

    private static async IAsyncEnumerable<StoredBlob> Blobs(int count)
    {
        for (var i = 0; i < count; i++)
        {
            await Task.Yield();
            yield return new StoredBlob($"b{i}", Blob());
        }
    }

    // A data key's blob as the KMS makes it: format 1, 77 bytes.
    private static byte[] Blob()
    {
        var blob = RandomNumberGenerator.GetBytes(77);
        blob[0] = 1;
        return blob;
    }

    private sealed class MemoryCheckpoint : IRewrapCheckpoint
    {
        public string? Saved { get; private set; }

        public Task<string?> LoadAsync(CancellationToken cancellationToken) => Task.FromResult<string?>(null);

        public Task SaveAsync(string lastCompletedId, CancellationToken cancellationToken)
        {
            Saved = lastCompletedId;
            return Task.CompletedTask;
        }
    }
}
