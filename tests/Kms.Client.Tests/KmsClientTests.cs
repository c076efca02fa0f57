using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf;
using Grpc.Core;
using Kms.Testing;

namespace Kms.Client.Tests;

public sealed class ClientServerFixture : IAsyncLifetime
{
    public KmsTestServer Server { get; private set; } = null!;

    public async Task InitializeAsync() => Server = await KmsTestServer.StartAsync();

    public async Task DisposeAsync() => await Server.DisposeAsync();
}

/// <summary>The typed client against the real server.</summary>
public sealed class KmsClientTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
{
    [Fact]
    public async Task ListKeysAsync_SeveralPages_YieldsEveryKeyOnce()
    {
        using var client = fixture.Server.CreateClient();
        var created = new List<string>();
        for (var i = 0; i < 5; i++)
        {
            created.Add((await client.CreateKeyAsync("tenants/dev", $"page-{i}")).Name);
        }

        var listed = new List<string>();
        await foreach (var key in client.ListKeysAsync("tenants/dev", pageSize: 2))
        {
            listed.Add(key.Name);
        }

        Assert.Equal(listed.Distinct().Count(), listed.Count);
        Assert.Subset(listed.ToHashSet(), created.ToHashSet());
    }

    [Fact]
    public async Task EncryptAsync_SliceOfALargerBuffer_EncryptsOnlyTheSlice()
    {
        using var client = fixture.Server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", $"slice-{Guid.NewGuid():N}");
        var buffer = Enumerable.Range(0, 100).Select(i => (byte)i).ToArray();

        var encrypted = await client.EncryptAsync(key.Name, buffer.AsMemory(10, 20));
        using var decrypted = await client.DecryptAsync(encrypted.Ciphertext.AsMemory());
        Assert.Equal(buffer[10..30], decrypted.Plaintext.ToArray());
    }

    [Fact]
    public async Task GenerateDataKeyAsync_Dispose_ZeroesAndForbidsAccess()
    {
        using var client = fixture.Server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", $"dk-{Guid.NewGuid():N}");
        var dataKey = await client.GenerateDataKeyAsync(key.Name);
        Assert.Contains(dataKey.Plaintext.ToArray(), b => b != 0);
        Assert.DoesNotContain(Convert.ToHexString(dataKey.Plaintext), dataKey.ToString(), StringComparison.OrdinalIgnoreCase);

        dataKey.Dispose();
        Assert.Throws<ObjectDisposedException>(() => dataKey.Plaintext.Length);
    }

    [Fact]
    public void DataKey_Dispose_ZeroesTheResponseBuffer()
    {
        var response = ByteString.CopyFrom(Enumerable.Range(1, 32).Select(i => (byte)i).ToArray());
        var dataKey = new DataKey(response, [], "tenants/dev/keys/k/versions/1");
        dataKey.Dispose();
        Assert.All(response.ToByteArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void DecryptedData_Dispose_ZeroesTheResponseBuffer()
    {
        var response = ByteString.CopyFrom([9, 9, 9]);
        var data = new DecryptedData(response, "v");
        data.Dispose();
        Assert.All(response.ToByteArray(), b => Assert.Equal(0, b));
        Assert.Equal("DecryptedData(v, plaintext ***)", data.ToString());
    }

    [Fact]
    public void Constructor_HttpEndpoint_Refused()
    {
        Assert.Throws<ArgumentException>(() => new KmsClient(new KmsClientOptions { Endpoint = new Uri("http://127.0.0.1:8443") }));
    }

    [Fact]
    public async Task Errors_SurfaceAsRpcExceptionWithServerStatus()
    {
        using var client = fixture.Server.CreateClient();
        var e = await Assert.ThrowsAsync<RpcException>(() => client.GetKeyAsync("tenants/dev/keys/absent"));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
    }

    [Fact]
    public async Task CaCertificatePath_BundleWithAnotherCaFirst_TrustsTheServersCaToo()
    {
        // A CA rotation's file: the new CA before the old one, or an unrelated one first.
        using var otherKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=Another CA", otherKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        using var other = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        var bundle = Path.Combine(Path.GetTempPath(), $"kms-ca-bundle-{Guid.NewGuid():N}.pem");
        await File.WriteAllTextAsync(bundle, other.ExportCertificatePem() + "\n" + await File.ReadAllTextAsync(fixture.Server.CaCertificatePath));
        try
        {
            using var client = new KmsClient(new KmsClientOptions
            {
                Endpoint = fixture.Server.Address,
                CaCertificatePath = bundle,
                ApiToken = fixture.Server.DeveloperToken,
                Retry = { MaxAttempts = 1 },
            });

            Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
        }
        finally
        {
            File.Delete(bundle);
        }
    }

    [Fact]
    public async Task CallTimeout_Elapsed_DeadlineExceeded()
    {
        using var client = new KmsClient(new KmsClientOptions
        {
            Endpoint = fixture.Server.Address,
            CaCertificatePath = fixture.Server.CaCertificatePath,
            CallTimeout = TimeSpan.FromTicks(1),
        });
        var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
    }
}

/// <summary>The token file read again when it changes (a rotated projected token, a rotated kms_ token).</summary>
public sealed class BearerTokenFileTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>, IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-token-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task TokenFileReplaced_TheNextCallAfterTheCheckCarriesTheNewToken_AFileBeingReplacedKeepsTheOld()
    {
        var path = Path.Combine(_directory, "token");
        await File.WriteAllTextAsync(path, fixture.Server.DeveloperToken + "\n");
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var options = new KmsClientOptions { Endpoint = fixture.Server.Address, CaCertificatePath = fixture.Server.CaCertificatePath, ApiTokenPath = path };
        using var client = new KmsClient(KmsClient.Connect(options, null, time, () => 0.5));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);

        // Replaced by a token the server does not know: used once the check comes round, not before.
        await File.WriteAllTextAsync(path, "kms_0000000000000000_" + new string('A', 43) + "\n");
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddSeconds(5));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
        time.Advance(TimeSpan.FromSeconds(1));
        var refused = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);

        // Back to a valid token; then the file is briefly empty (being replaced): the last token read stays in use.
        await File.WriteAllTextAsync(path, fixture.Server.DeveloperToken);
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddSeconds(10));
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
        await File.WriteAllTextAsync(path, "");
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddSeconds(15));
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
        File.Delete(path);
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
    }

    [Fact]
    public async Task TokenFileReadBlocks_ACallWithATokenInHandDoesNotWait_WhatTheFileThenGivesIsPickedUp()
    {
        var path = Path.Combine(_directory, "token");
        await File.WriteAllTextAsync(path, fixture.Server.DeveloperToken);
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var options = new KmsClientOptions { Endpoint = fixture.Server.Address, CaCertificatePath = fixture.Server.CaCertificatePath, ApiTokenPath = path };
        var client = new KmsClient(KmsClient.Connect(options, null, time, () => 0.5));
        try
        {
            Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);

            // The token path becomes a FIFO nobody writes: opening it blocks, as a read from a
            // stalled network disk does. The second comes round (on another thread: the look runs
            // in the clock's callback, and blocks it), then a call is made with the token in hand.
            var fifo = await MakeFifoAsync("fifo");
            File.Move(fifo, path, overwrite: true);
            var due = time.GetUtcNow() + TimeSpan.FromSeconds(1);
            var look = Task.Run(() => time.Advance(TimeSpan.FromSeconds(1)));
            Assert.True(SpinWait.SpinUntil(() => time.GetUtcNow() >= due, TimeSpan.FromMinutes(1)), "the clock's callback did not begin within a minute");
            var call = Task.Run(() => client.GenerateRandomAsync(8));
            if (await Task.WhenAny(call, Task.Delay(TimeSpan.FromSeconds(30))) != call)
            {
                await WriteFifoAsync(path, fixture.Server.DeveloperToken);
                Assert.Fail("the call waited for the token file's read");
            }

            Assert.Equal(8, (await call).Length);
            Assert.False(look.IsCompleted, "the look should still be blocked in the FIFO");

            // The file gives a token at last (one the server does not know): the look ends with it,
            // and the next call carries it.
            await WriteFifoAsync(path, "kms_0000000000000000_" + new string('A', 43));
            await look.WaitAsync(TimeSpan.FromMinutes(1));
            var refused = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8));
            Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        }
        finally
        {
            client.Dispose();
        }

        // Disposed, the client looks no more: a FIFO in the path blocks nothing.
        File.Move(await MakeFifoAsync("fifo2"), path, overwrite: true);
        await Task.Run(() => time.Advance(TimeSpan.FromSeconds(5))).WaitAsync(TimeSpan.FromMinutes(1));
    }

    private async Task<string> MakeFifoAsync(string name)
    {
        var fifo = Path.Combine(_directory, name);
        using var mkfifo = System.Diagnostics.Process.Start("mkfifo", [fifo]);
        await mkfifo.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(1));
        Assert.Equal(0, mkfifo.ExitCode);
        return fifo;
    }

    // Opening a FIFO to write waits for its reader: bounded, so a test that went wrong fails instead of hanging.
    private static Task WriteFifoAsync(string path, string text) => Task.Run(() =>
    {
        using var writer = new FileStream(path, FileMode.Open, FileAccess.Write);
        writer.Write(System.Text.Encoding.UTF8.GetBytes(text));
    }).WaitAsync(TimeSpan.FromMinutes(1));

    [Fact]
    public async Task ProjectedTokenRenewedBySwappingDotDotData_TheNewTokenIsRead()
    {
        // The kubelet's layout: token -> ..data/token, ..data -> ..<timestamp>; a renewal writes a new
        // timestamped directory and swaps ..data. The link "token" itself never changes.
        await File.WriteAllTextAsync(Path.Combine(Directory.CreateDirectory(Path.Combine(_directory, "..2026_01")).FullName, "token"), fixture.Server.DeveloperToken);
        var data = Path.Combine(_directory, "..data");
        Directory.CreateSymbolicLink(data, "..2026_01");
        var path = Path.Combine(_directory, "token");
        File.CreateSymbolicLink(path, Path.Combine("..data", "token"));
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var options = new KmsClientOptions { Endpoint = fixture.Server.Address, CaCertificatePath = fixture.Server.CaCertificatePath, ApiTokenPath = path };
        using var client = new KmsClient(KmsClient.Connect(options, null, time, () => 0.5));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);

        // Renewed with a token the server does not know, the old directory removed.
        await File.WriteAllTextAsync(Path.Combine(Directory.CreateDirectory(Path.Combine(_directory, "..2026_02")).FullName, "token"), "kms_0000000000000000_" + new string('A', 43));
        File.Delete(data);
        Directory.CreateSymbolicLink(data, "..2026_02");
        Directory.Delete(Path.Combine(_directory, "..2026_01"), recursive: true);
        time.Advance(TimeSpan.FromSeconds(1));
        var refused = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
    }

    [Fact]
    public async Task TokenFileBrieflyADirectoryOrOversized_ThePreviousTokenServes_AReplacementKeepingItsTimestampIsRead()
    {
        var path = Path.Combine(_directory, "token");
        await File.WriteAllTextAsync(path, fixture.Server.DeveloperToken);
        var stamp = File.GetLastWriteTimeUtc(path);
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var options = new KmsClientOptions { Endpoint = fixture.Server.Address, CaCertificatePath = fixture.Server.CaCertificatePath, ApiTokenPath = path };
        using var client = new KmsClient(KmsClient.Connect(options, null, time, () => 0.5));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);

        // A directory where the file was: the previous token serves.
        File.Delete(path);
        Directory.CreateDirectory(path);
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);

        // A file far larger than any token (a path pointed at the wrong file): not read, the previous token serves.
        Directory.Delete(path);
        await File.WriteAllTextAsync(path, new string('x', BearerToken.MaxFileBytes + 1));
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);

        // A file again, with the first file's timestamp (a copy that keeps it, a restore): its token is read.
        await File.WriteAllTextAsync(path, "kms_0000000000000000_" + new string('A', 43));
        File.SetLastWriteTimeUtc(path, stamp);
        time.Advance(TimeSpan.FromSeconds(1));
        var refused = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
    }
}
