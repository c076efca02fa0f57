using System.Text;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>The real server on a random loopback port, over TLS 1.3, with SoftHSM and SQLite.</summary>
public sealed class EndToEndTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    [Fact]
    public async Task CreateKey_GenerateDataKey_Decrypt_ReturnsSameDataKey()
    {
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId());
        Assert.Equal(KeyState.Enabled, key.State);
        Assert.Equal($"{key.Name}/versions/1", key.Primary.Name);

        using var dataKey = await fixture.Client.GenerateDataKeyAsync(key.Name);
        Assert.Equal(32, dataKey.Plaintext.Length);
        Assert.Equal(key.Primary.Name, dataKey.KeyVersion);
        Assert.Equal(32 + 45, dataKey.Ciphertext.Length);

        using var decrypted = await fixture.Client.DecryptAsync(dataKey.Ciphertext);
        Assert.Equal(dataKey.Plaintext.ToArray(), decrypted.Plaintext.ToArray());
        Assert.Equal(key.Primary.Name, decrypted.KeyVersion);
    }

    [Fact]
    public async Task EncryptDecrypt_WithContext_RoundTrips_OtherContextFails()
    {
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId());
        var context = new Dictionary<string, string> { ["table"] = "orders", ["row"] = "42" };
        var encrypted = await fixture.Client.EncryptAsync(key.Name, "card 4111"u8.ToArray(), context);
        using (var decrypted = await fixture.Client.DecryptAsync(encrypted.Ciphertext, context))
        {
            Assert.Equal("card 4111"u8.ToArray(), decrypted.Plaintext.ToArray());
        }

        var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.DecryptAsync(encrypted.Ciphertext, new Dictionary<string, string> { ["table"] = "orders", ["row"] = "43" }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal("decryption failed", e.Status.Detail);
    }

    [Fact]
    public async Task GenerateDataKeyWithoutPlaintext_DecryptsToA32ByteKey()
    {
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId());
        var encrypted = await fixture.Client.GenerateDataKeyWithoutPlaintextAsync(key.Name, new Dictionary<string, string> { ["app"] = "billing" });
        using var decrypted = await fixture.Client.DecryptAsync(encrypted.Ciphertext, new Dictionary<string, string> { ["app"] = "billing" });
        Assert.Equal(32, decrypted.Plaintext.Length);
    }

    [Fact]
    public async Task GetKey_ListKeys_ShowWhatWasCreated()
    {
        var id = ServerFixture.NewKeyId("list");
        var created = await fixture.Client.CreateKeyAsync("tenants/dev", id, labels: new Dictionary<string, string> { ["team"] = "payments" });
        var read = await fixture.Client.GetKeyAsync(created.Name);
        Assert.Equal(created, read);
        Assert.Equal("payments", read.Labels["team"]);

        var listed = new List<Key>();
        await foreach (var key in fixture.Client.ListKeysAsync("tenants/dev", pageSize: 2))
        {
            listed.Add(key);
        }

        Assert.Contains(listed, k => k.Name == created.Name);
        Assert.Equal(listed.Select(k => k.Name).Order(StringComparer.Ordinal), listed.Select(k => k.Name));
    }

    [Fact]
    public async Task CreateKey_RetriedWithSameRequestId_AppliedOnce()
    {
        var id = ServerFixture.NewKeyId();
        var requestId = Guid.NewGuid().ToString();
        var first = await fixture.Client.CreateKeyAsync("tenants/dev", id, requestId: requestId);
        var retry = await fixture.Client.CreateKeyAsync("tenants/dev", id, requestId: requestId);
        Assert.Equal(first, retry);

        var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId(), requestId: requestId));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("request_id", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CreateKey_WithoutRequestIdTwice_AlreadyExists()
    {
        var id = ServerFixture.NewKeyId();
        await fixture.Client.Raw.CreateKeyAsync(new CreateKeyRequest { Parent = "tenants/dev", KeyId = id, Key = new Key { Purpose = KeyPurpose.EncryptDecrypt } });
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
            await fixture.Client.Raw.CreateKeyAsync(new CreateKeyRequest { Parent = "tenants/dev", KeyId = id, Key = new Key { Purpose = KeyPurpose.EncryptDecrypt } }));
        Assert.Equal(StatusCode.AlreadyExists, e.StatusCode);
    }

    [Fact]
    public async Task GenerateRandom_ReturnsRequestedLength()
    {
        Assert.Equal(64, (await fixture.Client.GenerateRandomAsync(64)).Length);
    }

    [Fact]
    public async Task Health_Serving()
    {
        using var channel = fixture.Server.CreateChannel();
        var response = await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, response.Status);
    }

    [Fact]
    public async Task Reflection_ListsKeyManagementService()
    {
        using var channel = fixture.Server.CreateChannel();
        using var call = new ServerReflection.ServerReflectionClient(channel).ServerReflectionInfo(KmsTestServer.Bearer(fixture.Server.KeyUserToken));
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext(default));
        Assert.Contains(call.ResponseStream.Current.ListServicesResponse.Service, s => s.Name == "kms.v1.KeyManagementService");
    }

    [Fact]
    public async Task ManyConcurrentDataKeys_AllDecrypt()
    {
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId());
        await Parallel.ForEachAsync(Enumerable.Range(0, 300), new ParallelOptions { MaxDegreeOfParallelism = 32 }, async (i, ct) =>
        {
            var context = new Dictionary<string, string> { ["i"] = i.ToString(System.Globalization.CultureInfo.InvariantCulture) };
            using var dataKey = await fixture.Client.GenerateDataKeyAsync(key.Name, context, ct);
            using var decrypted = await fixture.Client.DecryptAsync(dataKey.Ciphertext, context, ct);
            Assert.Equal(dataKey.Plaintext.ToArray(), decrypted.Plaintext.ToArray());
        });
    }
}

/// <summary>State that must survive the server: its own server per test.</summary>
public sealed class RestartTests
{
    [Fact]
    public async Task Restart_SameDataDirectory_DecryptsOldBlobAndKeepsKeys()
    {
        var server = await KmsTestServer.StartAsync();
        byte[] blob;
        string keyName;
        using (var client = server.CreateClient())
        {
            keyName = (await client.CreateKeyAsync("tenants/dev", "survivor")).Name;
            blob = (await client.EncryptAsync(keyName, Encoding.UTF8.GetBytes("still here"))).Ciphertext;
        }

        server = await server.RestartAsync();
        await using (server)
        {
            using var client = server.CreateClient();
            using var decrypted = await client.DecryptAsync(blob);
            Assert.Equal("still here", Encoding.UTF8.GetString(decrypted.Plaintext));
            Assert.Equal(keyName, (await client.GetKeyAsync(keyName)).Name);
        }
    }

    [Fact]
    public async Task Restart_WithAnotherDomainKey_RefusesToServe()
    {
        var server = await KmsTestServer.StartAsync();
        var dataDir = server.DataDir;
        await server.DisposeAsync();

        // Same database, a token whose (new) domain key has another check value.
        var e = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => KmsTestServer.StartAsync(SoftHsm.CreateToken(), dataDir));
        Assert.Contains("check value", e.Message, StringComparison.Ordinal);
    }
}
