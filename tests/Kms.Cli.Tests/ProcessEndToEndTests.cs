using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Kms.Cli.Infrastructure;

namespace Kms.Cli.Tests;

/// <summary>The built <c>kms</c> as a real child process against the real server (TLS, token, SoftHSM).</summary>
public sealed class ProcessEndToEndTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    /// <summary>
    /// The real server's certificate, which the CLI has no CA for (none given: the system trust
    /// store; or another CA's file): one line saying the certificate is not trusted and how to give
    /// a CA, exit 2, no stack trace and no RpcException dump, and nothing sent (the key is not created).
    /// </summary>
    [Theory]
    [InlineData("no CA file")]
    [InlineData("another CA's file")]
    public async Task ServerCertificateNotTrusted_OneLineNamingTheCaSetting_Exits2_NothingSent(string ca)
    {
        var variables = fixture.Variables;
        if (ca == "no CA file")
        {
            variables.Remove("KMS_CA_FILE");
        }
        else
        {
            using var otherCa = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
            var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=not the KMS's CA", otherCa, System.Security.Cryptography.HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new System.Security.Cryptography.X509Certificates.X509BasicConstraintsExtension(true, false, 0, true));
            using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
            variables["KMS_CA_FILE"] = Path.Combine(_directory, "other-ca.pem");
            await File.WriteAllTextAsync(variables["KMS_CA_FILE"], certificate.ExportCertificatePem());
        }

        var keyId = $"untrusted-{Guid.NewGuid():N}";

        var result = await CliRun.ProcessAsync(variables, _directory, "keys", "create", keyId);

        Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
        Assert.StartsWith("kms: the server's TLS certificate is not trusted: ", result.Error, StringComparison.Ordinal);
        Assert.EndsWith(" (check --ca-file or KMS_CA_FILE, and the endpoint's host name)\n", result.Error, StringComparison.Ordinal);
        Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.DoesNotContain("RpcException", result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("Status(", result.Error, StringComparison.Ordinal);
        Assert.Equal("", result.Out);
        var got = await RunAsync("keys", "get", keyId);
        Assert.True(got.ExitCode == ExitCodes.NotFound, got.ToString());
    }

    [Fact]
    public async Task CreateListEncryptDecrypt_FileOfSeveralMegabytes_RoundTrips()
    {
        var keyId = $"files-{Guid.NewGuid():N}";

        var created = await RunAsync("keys", "create", keyId, "-o", "json");
        Assert.True(created.ExitCode == 0, created.ToString());
        Assert.Equal($"tenants/dev/keys/{keyId}", JsonDocument.Parse(created.Out).RootElement.GetProperty("name").GetString());

        var listed = await RunAsync("keys", "list", "--output", "json");
        Assert.True(listed.ExitCode == 0, listed.ToString());
        var names = JsonDocument.Parse(listed.Out).RootElement.GetProperty("keys").EnumerateArray().Select(k => k.GetProperty("name").GetString());
        Assert.Contains($"tenants/dev/keys/{keyId}", names);

        var plaintext = new byte[3 * 1024 * 1024 + 12345];
        new Random(7).NextBytes(plaintext);
        var input = Path.Combine(_directory, "report.bin");
        await File.WriteAllBytesAsync(input, plaintext);

        var encrypted = await RunAsync("encrypt", "--key", keyId, "--in", input, "--out", "report.kmse", "--context", "file=report", "--context", "team=ops", "-o", "json");
        Assert.True(encrypted.ExitCode == 0, encrypted.ToString());
        var summary = JsonDocument.Parse(encrypted.Out).RootElement;
        Assert.Equal(plaintext.Length, summary.GetProperty("plaintextBytes").GetInt64());
        var ciphertext = await File.ReadAllBytesAsync(Path.Combine(_directory, "report.kmse"));
        Assert.Equal(-1, ciphertext.AsSpan().IndexOf(plaintext.AsSpan(1000, 32)));

        var decrypted = await RunAsync("decrypt", "--key", keyId, "--in", "report.kmse", "--out", "report.out", "--context", "team=ops", "--context", "file=report");
        Assert.True(decrypted.ExitCode == 0, decrypted.ToString());
        Assert.Equal(plaintext, await File.ReadAllBytesAsync(Path.Combine(_directory, "report.out")));
        AssertNoTokenIn(created, listed, encrypted, decrypted);
    }

    [Fact]
    public async Task Decrypt_WrongContext_Exits7AndLeavesNoOutput()
    {
        var keyId = await CreateKeyAsync();
        await File.WriteAllBytesAsync(Path.Combine(_directory, "plain.txt"), "attack at dawn"u8.ToArray());
        Assert.Equal(0, (await RunAsync("encrypt", "--key", keyId, "--in", "plain.txt", "--out", "msg.kmse", "--context", "purpose=test")).ExitCode);

        var result = await RunAsync("decrypt", "--key", keyId, "--in", "msg.kmse", "--out", "plain.out", "--context", "purpose=prod");

        Assert.Equal(ExitCodes.DecryptionFailed, result.ExitCode);
        Assert.StartsWith("kms: decryption failed", result.Error, StringComparison.Ordinal);
        Assert.Equal(["msg.kmse", "plain.txt"], Directory.GetFiles(_directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        AssertNoTokenIn(result);
    }

    [Fact]
    public async Task Decrypt_TamperedFile_Exits7WithDecryptionFailedAndRemovesPartialOutput()
    {
        var keyId = await CreateKeyAsync();
        var plaintext = new byte[300_000];
        new Random(11).NextBytes(plaintext);
        await File.WriteAllBytesAsync(Path.Combine(_directory, "data.bin"), plaintext);
        Assert.Equal(0, (await RunAsync("encrypt", "--key", keyId, "--in", "data.bin", "--out", "data.kmse")).ExitCode);
        var message = await File.ReadAllBytesAsync(Path.Combine(_directory, "data.kmse"));
        message[^50_000] ^= 0x01;
        await File.WriteAllBytesAsync(Path.Combine(_directory, "data.kmse"), message);

        var result = await RunAsync("decrypt", "--key", keyId, "--in", "data.kmse", "--out", "data.out");

        Assert.Equal(ExitCodes.DecryptionFailed, result.ExitCode);
        Assert.Equal("kms: decryption failed", result.Error.Trim());
        Assert.Equal(["data.bin", "data.kmse"], Directory.GetFiles(_directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Decrypt_OutputCannotBeWrittenWhole_FailsAndLeavesNoPartialPlaintext()
    {
        var keyId = await CreateKeyAsync();
        var plaintext = new byte[3 * 1024 * 1024];
        new Random(11).NextBytes(plaintext);
        await File.WriteAllBytesAsync(Path.Combine(_directory, "big.bin"), plaintext);
        Assert.Equal(0, (await RunAsync("encrypt", "--key", keyId, "--in", "big.bin", "--out", "big.kmse")).ExitCode);

        // Files of at most 1 MiB (the kernel refuses more with EFBIG, as a full disk refuses with
        // ENOSPC); the runtime then maps its code without a file-backed double mapping.
        var result = await CliRun.ProcessInShellAsync(fixture.Variables, _directory, "trap '' XFSZ; ulimit -f 1024; export DOTNET_EnableWriteXorExecute=0", "decrypt", "--key", keyId, "--in", "big.kmse", "--out", "big.out");

        // (.NET reports EFBIG as an argument error: exit 2.)
        Assert.True(result.ExitCode != 0, result.ToString());
        Assert.Equal(["big.bin", "big.kmse"], Directory.GetFiles(_directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Get_UnknownKey_Exits3()
    {
        var result = await RunAsync("keys", "get", $"missing-{Guid.NewGuid():N}");

        Assert.Equal(ExitCodes.NotFound, result.ExitCode);
        Assert.StartsWith("kms: NOT_FOUND", result.Error, StringComparison.Ordinal);
        Assert.Equal("", result.Out);
    }

    [Fact]
    public async Task List_WithoutToken_Exits4()
    {
        var variables = fixture.Variables;
        variables.Remove("KMS_TOKEN_FILE");

        var result = await CliRun.ProcessAsync(variables, _directory, "keys", "list");

        Assert.Equal(ExitCodes.Denied, result.ExitCode);
        Assert.StartsWith("kms: UNAUTHENTICATED", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task List_ServerDown_Exits6()
    {
        var variables = fixture.Variables;
        variables["KMS_ENDPOINT"] = $"https://127.0.0.1:{UnusedPort()}";

        var result = await CliRun.ProcessAsync(variables, _directory, "keys", "list", "--timeout", "10", "-o", "json");

        Assert.Equal(ExitCodes.Unavailable, result.ExitCode);
        Assert.StartsWith("kms: UNAVAILABLE", result.Error, StringComparison.Ordinal);
        Assert.Equal("", result.Out);
        Assert.DoesNotContain("   at ", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task InlineToken_IsRefusedAndNotRepeated()
    {
        var result = await RunAsync("keys", "list", "--token", fixture.Token);

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("--token-file", result.Error, StringComparison.Ordinal);
        AssertNoTokenIn(result);
    }

    private async Task<string> CreateKeyAsync()
    {
        using var client = fixture.Server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", $"cli-{Guid.NewGuid():N}");
        return key.Name;
    }

    private Task<CliResult> RunAsync(params string[] args) => CliRun.ProcessAsync(fixture.Variables, _directory, args);

    private void AssertNoTokenIn(params CliResult[] results)
    {
        // kms_<16 hex>_<secret>: the base64url secret may itself contain '_'.
        var secret = fixture.Token["kms_0123456789abcdef_".Length..];
        foreach (var result in results)
        {
            Assert.DoesNotContain(secret, result.Out, StringComparison.Ordinal);
            Assert.DoesNotContain(secret, result.Error, StringComparison.Ordinal);
        }
    }

    private static int UnusedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
