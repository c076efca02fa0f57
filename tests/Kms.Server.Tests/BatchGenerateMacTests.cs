using System.Security.Cryptography;
using global::Grpc.Core;
using Google.Protobuf;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Testing;
using ProtoAlgorithm = Kms.Contracts.V1.KeyAlgorithm;

namespace Kms.Server.Tests;

/// <summary>
/// BatchGenerateMac through the real server (TLS, SoftHSM, SQLite): each item's MAC is the one its
/// single GenerateMac gives (and VerifyMac accepts; with an imported key of known value, the one
/// .NET computes), each item fails alone, and the batch's own limits and authorization are
/// GenerateMac's and the other batches'.
/// </summary>
public sealed class BatchGenerateMacTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private KmsClient Client => fixture.Client;

    [Fact]
    public async Task EachItem_TheMacOfItsSingleGenerateMac_VerifyMacAccepts_ByKeyVersionOrAlias_ManyVersionsAndAlgorithms()
    {
        var sha256 = await CreateAsync(ProtoAlgorithm.HmacSha256);
        var sha512 = await CreateAsync(ProtoAlgorithm.HmacSha512);
        var alias = await Client.CreateAliasAsync("tenants/dev", ServerFixture.NewKeyId("mac-alias"), sha256.Name);
        var names = new[] { sha256.Name, sha256.Primary.Name, alias.Name, sha512.Name, sha512.Primary.Name };

        // More items under one version than one HSM call takes (100): several calls, one answer.
        var request = new BatchGenerateMacRequest();
        for (var i = 0; i < 260; i++)
        {
            var data = i % 13 == 0 ? [] : RandomNumberGenerator.GetBytes(1 + (i * 37 % 300));
            request.Requests.Add(new GenerateMacRequest { Name = names[i % 7 == 0 ? 3 + (i % 2) : i % 3], Data = ByteString.CopyFrom(data) });
        }

        var response = await Client.BatchGenerateMacAsync(request);

        Assert.Equal(request.Requests.Count, response.Results.Count);
        for (var i = 0; i < request.Requests.Count; i++)
        {
            var item = request.Requests[i];
            var result = response.Results[i];
            Assert.Equal(((uint)i, 0), (result.Index, result.Status.Code));
            var single = await Client.Raw.GenerateMacAsync(new GenerateMacRequest { Name = item.Name, Data = item.Data });
            Assert.Equal(single.KeyVersion, result.Response.KeyVersion);
            Assert.Equal(single.Mac, result.Response.Mac);
            Assert.Equal(item.Name.StartsWith(sha512.Name, StringComparison.Ordinal) ? 64 : 32, result.Response.Mac.Length);
            if (i % 10 == 0)
            {
                Assert.True(await Client.VerifyMacAsync(item.Name, item.Data.Memory, result.Response.Mac.Memory));
            }
        }
    }

    [Fact]
    public async Task ImportedKeyOfKnownValue_EachMacEqualsDotNetHmacSha256()
    {
        var key = (await Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("mac-import"), new Key { Purpose = KeyPurpose.Mac, Algorithm = ProtoAlgorithm.HmacSha256, AllowImport = true })).Name;
        var job = await Client.CreateImportJobAsync("tenants/dev", ServerFixture.NewKeyId(), ImportMethod.RsaOaep3072Sha1Aes256);
        var secret = RandomNumberGenerator.GetBytes(32);
        await Client.ImportKeyVersionAsync(key, job.Name, KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, secret));
        var data = Enumerable.Range(0, 5).Select(i => RandomNumberGenerator.GetBytes(i * 50)).ToList();
        var request = new BatchGenerateMacRequest();
        request.Requests.AddRange(data.Select(d => new GenerateMacRequest { Name = key, Data = ByteString.CopyFrom(d) }));

        var response = await Client.BatchGenerateMacAsync(request);

        Assert.Equal(data.Select(d => Convert.ToHexString(HMACSHA256.HashData(secret, d))), response.Results.Select(r => Convert.ToHexString(r.Response.Mac.Span)));
    }

    /// <summary>Each item gets the status its single GenerateMac would; the others are served.</summary>
    [Fact]
    public async Task PerItemErrors_AnotherPurpose_Missing_TooLong_Malformed_AnotherTenant_Disabled_DoNotFailTheOthers()
    {
        var mac = await CreateAsync(ProtoAlgorithm.HmacSha256);
        var aes = (await Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("mac-aes"))).Name;
        var disabled = await CreateAsync(ProtoAlgorithm.HmacSha256);
        await Client.Raw.DisableKeyAsync(new DisableKeyRequest { Name = disabled.Name });
        var missing = "tenants/dev/keys/" + ServerFixture.NewKeyId("missing");
        var ok = ByteString.CopyFromUtf8("row 1");
        var request = new BatchGenerateMacRequest
        {
            Requests =
            {
                new GenerateMacRequest { Name = mac.Name, Data = ok },
                new GenerateMacRequest { Name = aes, Data = ok },
                new GenerateMacRequest { Name = missing, Data = ok },
                new GenerateMacRequest { Name = mac.Name, Data = ByteString.CopyFrom(new byte[SigningLimit + 1]) },
                new GenerateMacRequest { Name = "not a name", Data = ok },
                new GenerateMacRequest { Name = "tenants/elsewhere/keys/k", Data = ok },
                new GenerateMacRequest { Name = disabled.Primary.Name, Data = ok },
                new GenerateMacRequest { Name = mac.Primary.Name, Data = ByteString.CopyFrom(new byte[SigningLimit]) },
            },
        };

        var response = await Client.BatchGenerateMacAsync(request);

        var statuses = response.Results.Select(r => ((StatusCode)r.Status.Code, r.Status.Field)).ToList();
        Assert.Equal(
            [
                (StatusCode.OK, ""),
                (StatusCode.FailedPrecondition, ""),
                (StatusCode.NotFound, ""),
                (StatusCode.InvalidArgument, "requests[3].data"),
                (StatusCode.InvalidArgument, "requests[4].name"),
                (StatusCode.NotFound, ""),
                (StatusCode.FailedPrecondition, ""),
                (StatusCode.OK, ""),
            ],
            statuses);
        Assert.Contains("not MAC", response.Results[1].Status.Message, StringComparison.Ordinal);
        Assert.Contains($"at most {SigningLimit} bytes", response.Results[3].Status.Message, StringComparison.Ordinal);
        Assert.Contains("DISABLED", response.Results[6].Status.Message, StringComparison.Ordinal);
        Assert.Null(response.Results[1].Response);
        Assert.Equal(await Client.GenerateMacAsync(mac.Name, ok.Memory), response.Results[0].Response.Mac.ToByteArray());
        Assert.Equal(await Client.GenerateMacAsync(mac.Name, new byte[SigningLimit]), response.Results[7].Response.Mac.ToByteArray());
    }

    [Fact]
    public async Task Limits_NoItems_TooMany_TooManyBytes_InvalidArgumentNamingTheLimit_AtTheLimitServed()
    {
        var mac = await CreateAsync(ProtoAlgorithm.HmacSha256);
        var one = new GenerateMacRequest { Name = mac.Primary.Name, Data = ByteString.CopyFromUtf8("x") };

        var none = await Assert.ThrowsAsync<RpcException>(() => Client.Raw.BatchGenerateMacAsync(new BatchGenerateMacRequest()).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "requests: must hold 1 to 1000 items (got 0)"), (none.StatusCode, none.Status.Detail));

        var tooMany = new BatchGenerateMacRequest();
        tooMany.Requests.AddRange(Enumerable.Repeat(one, 1001));
        var e = await Assert.ThrowsAsync<RpcException>(() => Client.Raw.BatchGenerateMacAsync(tooMany).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "requests: must hold 1 to 1000 items (got 1001)"), (e.StatusCode, e.Status.Detail));

        // 64 items of 64 KiB are the 4 MiB the batch takes; one byte more is refused as a whole.
        var full = new BatchGenerateMacRequest();
        full.Requests.AddRange(Enumerable.Range(0, 64).Select(_ => new GenerateMacRequest { Name = mac.Primary.Name, Data = ByteString.CopyFrom(new byte[SigningLimit]) }));
        Assert.All((await Client.BatchGenerateMacAsync(full)).Results, r => Assert.Equal(0, r.Status.Code));
        full.Requests.Add(one);
        var tooLarge = await Assert.ThrowsAsync<RpcException>(() => Client.Raw.BatchGenerateMacAsync(full).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "requests: the items' data must total at most 4194304 bytes (got 4194305)"), (tooLarge.StatusCode, tooLarge.Status.Detail));

        tooMany.Requests.RemoveAt(0);
        Assert.Equal(1000, (await Client.BatchGenerateMacAsync(tooMany)).Results.Count(r => r.Status.Code == 0));
    }

    /// <summary>kms.crypto.sign (key-user) on the caller's tenant, as the other batches; a key policy refuses item by item.</summary>
    [Fact]
    public async Task Authorization_NoSignPermission_Refused_KeyPolicyRefusesItsItemsOnly()
    {
        var mac = await CreateAsync(ProtoAlgorithm.HmacSha256);
        var restricted = await CreateAsync(ProtoAlgorithm.HmacSha256);
        var request = new BatchGenerateMacRequest
        {
            Requests =
            {
                new GenerateMacRequest { Name = mac.Name, Data = ByteString.CopyFromUtf8("a") },
                new GenerateMacRequest { Name = restricted.Name, Data = ByteString.CopyFromUtf8("b") },
            },
        };

        var auditorId = ServerFixture.NewKeyId("mac-aud")[..20];
        using var auditor = fixture.Server.CreateClient(await fixture.Server.CreatePrincipalWithTokenAsync(auditorId, "dev", "auditor"));
        var denied = await Assert.ThrowsAsync<RpcException>(() => auditor.BatchGenerateMacAsync(request));
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Contains("kms.crypto.sign", denied.Status.Detail, StringComparison.Ordinal);

        await Client.SetKeyPolicyAsync(restricted.Name, [new KeyPolicyEntry { Principal = $"token:{auditorId}", Operations = { "SIGN" } }]);
        var response = await Client.BatchGenerateMacAsync(request);
        Assert.Equal([(int)StatusCode.OK, (int)StatusCode.PermissionDenied], response.Results.Select(r => r.Status.Code));
    }

    private const int SigningLimit = Kms.Core.Services.SigningService.MaxMessageBytes;

    private async Task<Key> CreateAsync(ProtoAlgorithm algorithm) =>
        await Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("mac"), new Key { Purpose = KeyPurpose.Mac, Algorithm = algorithm });
}
