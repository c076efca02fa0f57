using System.Buffers;
using System.Text.Json;
using Kms.Cli.Infrastructure;

namespace Kms.Cli.Tests;

/// <summary>Every verb against the real server, through the same entry point in-process.</summary>
public sealed class CommandTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Keys_Lifecycle_EachVerbAnswersWithTheKey()
    {
        var key = $"life-{Guid.NewGuid():N}";

        var created = await JsonAsync("keys", "create", key, "--label", "team=ops", "--rotation-period", "90d");
        Assert.Equal("KEY_STATE_ENABLED", created.GetProperty("state").GetString());
        Assert.Equal("ops", created.GetProperty("labels").GetProperty("team").GetString());
        Assert.Equal("7776000s", created.GetProperty("rotationPeriod").GetString());

        var rotated = await JsonAsync("keys", "rotate", $"dev/{key}");
        Assert.EndsWith("/versions/2", rotated.GetProperty("primary").GetProperty("name").GetString(), StringComparison.Ordinal);

        var versions = await JsonAsync("keys", "versions", $"tenants/dev/keys/{key}");
        Assert.Equal(2, versions.GetProperty("versions").GetArrayLength());

        Assert.Equal("KEY_STATE_DISABLED", (await JsonAsync("keys", "disable", key)).GetProperty("state").GetString());
        Assert.Equal("KEY_STATE_ENABLED", (await JsonAsync("keys", "enable", key)).GetProperty("state").GetString());
        Assert.Equal("KEY_STATE_DESTROY_SCHEDULED", (await JsonAsync("keys", "schedule-deletion", key, "--days", "7")).GetProperty("state").GetString());
        Assert.Equal("KEY_STATE_DISABLED", (await JsonAsync("keys", "cancel-deletion", key)).GetProperty("state").GetString());
        Assert.Equal("KEY_STATE_DISABLED", (await JsonAsync("keys", "get", key)).GetProperty("state").GetString());
    }

    [Fact]
    public async Task Keys_ListAsTable_ShowsTheKey()
    {
        var key = $"table-{Guid.NewGuid():N}";
        Assert.Equal(0, (await RunAsync("keys", "create", key)).ExitCode);

        var result = await RunAsync("keys", "list");

        Assert.Equal(0, result.ExitCode);
        Assert.Contains($"tenants/dev/keys/{key}", result.Out, StringComparison.Ordinal);
        Assert.Contains("ENABLED", result.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keys_GetAndVersionsAsTables_NameEnumsAsTheProtoDoes_NotAsCSharp()
    {
        var key = $"names-{Guid.NewGuid():N}";
        Assert.Equal(0, (await RunAsync("keys", "create", key)).ExitCode);

        var got = await RunAsync("keys", "get", key);
        var versions = await RunAsync("keys", "versions", key);

        Assert.Equal(0, got.ExitCode);
        Assert.Contains("ENCRYPT_DECRYPT", got.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("EncryptDecrypt", got.Out, StringComparison.Ordinal);
        Assert.Equal(0, versions.ExitCode);
        Assert.Contains("AES_256_GCM", versions.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("Aes256Gcm", versions.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keys_VersionsAsTable_SaysTheEncryptionsCountReservedBlocks_JsonDoesNot()
    {
        var key = $"blocks-{Guid.NewGuid():N}";
        Assert.Equal(0, (await RunAsync("keys", "create", key)).ExitCode);

        var table = await RunAsync("keys", "versions", key);
        var json = await RunAsync("keys", "versions", key, "-o", "json");

        // After a restart each version used before shows a whole reserved block: the table says why.
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains(Commands.KeysCommands.EncryptionsFootnote, string.Join(' ', table.Out.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)), StringComparison.Ordinal);
        Assert.True(json.ExitCode == 0, json.ToString());
        Assert.Equal(["versions"], JsonDocument.Parse(json.Out).RootElement.EnumerateObject().Select(p => p.Name));
        Assert.DoesNotContain("ReservationBlock", json.Out + json.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void EnumName_StripsTheEnumsPrefix_ProtoEnumNameKeepsIt_AnUnknownNumberShownAsTheNumber()
    {
        Assert.Equal("ENCRYPT_DECRYPT", CliOutput.EnumName(Kms.Contracts.V1.KeyPurpose.EncryptDecrypt));
        Assert.Equal("EC_SIGN_P256_SHA256", CliOutput.EnumName(Kms.Contracts.V1.KeyAlgorithm.EcSignP256Sha256));
        Assert.Equal("DESTROY_SCHEDULED", CliOutput.EnumName(Kms.Contracts.V1.KeyState.DestroyScheduled));
        Assert.Equal("DESTROY_KEY_VERSION_NOW", CliOutput.EnumName(Kms.Contracts.V1.QuorumOperation.DestroyKeyVersionNow));
        Assert.Equal("EXECUTED", CliOutput.EnumName(Kms.Contracts.V1.QuorumRequestState.Executed));
        Assert.Equal("QUORUM_REQUEST_STATE_EXECUTED", CliOutput.ProtoEnumName(Kms.Contracts.V1.QuorumRequestState.Executed));
        Assert.Equal("99", CliOutput.EnumName((Kms.Contracts.V1.KeyState)99));
    }

    [Fact]
    public async Task Keys_CreateTwice_Exits5()
    {
        var key = $"twice-{Guid.NewGuid():N}";
        Assert.Equal(0, (await RunAsync("keys", "create", key)).ExitCode);

        var again = await RunAsync("keys", "create", key);

        Assert.Equal(ExitCodes.Conflict, again.ExitCode);
        Assert.StartsWith("kms: ALREADY_EXISTS", again.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Aliases_CreateGetUpdateListDelete()
    {
        var first = $"a-{Guid.NewGuid():N}";
        var second = $"b-{Guid.NewGuid():N}";
        var alias = $"current-{Guid.NewGuid():N}";
        await JsonAsync("keys", "create", first);
        await JsonAsync("keys", "create", second);

        Assert.Equal($"tenants/dev/keys/{first}", (await JsonAsync("aliases", "create", alias, "--key", first)).GetProperty("key").GetString());
        Assert.Equal($"tenants/dev/keys/{first}", (await JsonAsync("aliases", "get", alias)).GetProperty("key").GetString());
        Assert.Equal($"tenants/dev/keys/{second}", (await JsonAsync("aliases", "update", alias, "--key", second)).GetProperty("key").GetString());
        var listed = await JsonAsync("aliases", "list");
        Assert.Contains(listed.GetProperty("aliases").EnumerateArray(), a => a.GetProperty("name").GetString() == $"tenants/dev/aliases/{alias}");
        Assert.Equal($"tenants/dev/aliases/{alias}", (await JsonAsync("aliases", "delete", alias)).GetProperty("deleted").GetString());
        Assert.Equal(ExitCodes.NotFound, (await RunAsync("aliases", "get", alias)).ExitCode);
    }

    [Fact]
    public async Task EncryptDecrypt_StandardStreamsAndAnyKey_RoundTrip()
    {
        var key = (await JsonAsync("keys", "create", $"pipe-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        var plaintext = "through a pipe"u8.ToArray();

        var encrypted = await CliRun.InProcessAsync(fixture.Variables, _directory, plaintext, "encrypt", "--key", key, "--in", "-", "--out", "-");
        Assert.True(encrypted.ExitCode == 0, encrypted.ToString());

        var decrypted = await CliRun.InProcessAsync(fixture.Variables, _directory, Convert.FromBase64String(encrypted.Out), "decrypt", "--any-key", "--in", "-", "--out", "-");
        Assert.True(decrypted.ExitCode == 0, decrypted.ToString());
        Assert.Equal(plaintext, Convert.FromBase64String(decrypted.Out));
    }

    [Fact]
    public async Task Encrypt_ThroughAnAlias_ReportsTheKeyAndVersionItResolvedTo_AndTheAliasGiven()
    {
        // `encrypt --key tenants/dev/aliases/A` said "under tenants/dev/aliases/A": not which key
        // wrapped the data key (the one decrypt must trust), nor which version.
        var name = $"behind-{Guid.NewGuid():N}";
        var alias = $"tenants/dev/aliases/front-{Guid.NewGuid():N}";
        using var developer = fixture.Server.CreateClient();
        var key = await developer.CreateKeyAsync("tenants/dev", name);
        await developer.RotateKeyAsync(key.Name);
        await developer.CreateAliasAsync("tenants/dev", alias[(alias.LastIndexOf('/') + 1)..], key.Name);
        await File.WriteAllTextAsync(Path.Combine(_directory, "p"), "x");

        var text = await RunAsync("encrypt", "--key", alias, "--in", "p", "--out", "p.kmse");
        Assert.True(text.ExitCode == 0, text.ToString());
        Assert.Contains($"under {key.Name}/versions/2 (through {alias})", text.Out, StringComparison.Ordinal);

        var json = (await JsonAsync("encrypt", "--key", alias, "--in", "p", "--out", "p.kmse", "--force")).GetProperty("wrappedKeys").EnumerateArray().Single();
        Assert.Equal((alias, key.Name, $"{key.Name}/versions/2"), (json.GetProperty("given").GetString(), json.GetProperty("key").GetString(), json.GetProperty("keyVersion").GetString()));

        // Decrypt trusts the key it reported.
        Assert.Equal(0, (await RunAsync("decrypt", "--key", key.Name, "--in", "p.kmse", "--out", "p.out")).ExitCode);
    }

    [Fact]
    public async Task Decrypt_UntrustedKey_Exits7()
    {
        var key = (await JsonAsync("keys", "create", $"mine-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        var other = (await JsonAsync("keys", "create", $"other-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        await File.WriteAllTextAsync(Path.Combine(_directory, "p"), "x");
        Assert.Equal(0, (await RunAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse")).ExitCode);

        var result = await RunAsync("decrypt", "--key", other, "--in", "p.kmse", "--out", "p.out");

        Assert.Equal(ExitCodes.DecryptionFailed, result.ExitCode);
        Assert.False(File.Exists(Path.Combine(_directory, "p.out")));
    }

    [Fact]
    public async Task Encrypt_ExistingOutput_IsRefusedWithoutForce()
    {
        var key = (await JsonAsync("keys", "create", $"force-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        await File.WriteAllTextAsync(Path.Combine(_directory, "p"), "new");
        await File.WriteAllTextAsync(Path.Combine(_directory, "p.kmse"), "old");

        Assert.Equal(ExitCodes.Usage, (await RunAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse")).ExitCode);
        Assert.Equal("old", await File.ReadAllTextAsync(Path.Combine(_directory, "p.kmse")));
        Assert.Equal(0, (await RunAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse", "--force")).ExitCode);
        Assert.NotEqual("old", await File.ReadAllTextAsync(Path.Combine(_directory, "p.kmse")));
    }

    [Fact]
    public async Task Encrypt_DisabledKey_Exits5AndLeavesNoOutput()
    {
        var key = (await JsonAsync("keys", "create", $"off-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        await JsonAsync("keys", "disable", key);
        await File.WriteAllTextAsync(Path.Combine(_directory, "p"), "x");

        var result = await RunAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse");

        Assert.Equal(ExitCodes.Conflict, result.ExitCode);
        Assert.Equal(["p"], Directory.GetFiles(_directory).Select(Path.GetFileName));
    }

    [Fact]
    public async Task Encrypt_CopiesThePlaintextThroughABuffer_ClearedBeforeItGoesBackToThePool()
    {
        // Stream.CopyToAsync rents from the shared pool and gives the array back as it is: the
        // last 80 KiB of the plaintext stayed there for the next renter. The copy's pool here is
        // one the test watches.
        var key = (await JsonAsync("keys", "create", $"pool-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        await File.WriteAllBytesAsync(Path.Combine(_directory, "p"), Marked(200_000));
        var pool = new WatchedPool();

        var result = await CliRun.InProcessWithAsync(fixture.Variables, _directory, () => Stream.Null, pool, "encrypt", "--key", key, "--in", "p", "--out", "p.kmse");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.True(pool.Rented > 0, "the plaintext was not copied through the command's pool");
        Assert.Equal(pool.Rented, pool.Returned);
        Assert.Equal(0, pool.ReturnedHoldingData);
    }

    [Fact]
    public async Task Encrypt_SourceFailsMidway_NoFileAtOut_StandardOutputsMessageRefused_ErrorWithoutPlaintext()
    {
        // The source throws after three frames' worth of plaintext: to a file, nothing is left at
        // --out (nor a temporary file); to standard output, what was written has no final frame
        // and decrypt refuses it. The error is the source's, exit 9, and carries no plaintext.
        var key = (await JsonAsync("keys", "create", $"midway-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;

        var toFile = await CliRun.InProcessWithAsync(fixture.Variables, _directory, () => new FailingSource(3 * 64 * 1024 + 100), ArrayPool<byte>.Shared, "encrypt", "--key", key, "--in", "-", "--out", "p.kmse");

        Assert.Equal(ExitCodes.LocalIo, toFile.ExitCode);
        Assert.Equal($"kms: {FailingSource.Failure}", toFile.Error.Trim());
        Assert.Empty(Directory.GetFileSystemEntries(_directory));

        var toStandardOutput = await CliRun.InProcessWithAsync(fixture.Variables, _directory, () => new FailingSource(3 * 64 * 1024 + 100), ArrayPool<byte>.Shared, "encrypt", "--key", key, "--in", "-", "--out", "-");

        Assert.Equal(ExitCodes.LocalIo, toStandardOutput.ExitCode);
        Assert.DoesNotContain(FailingSource.Marker, toStandardOutput.Error, StringComparison.Ordinal);
        var partial = Convert.FromBase64String(toStandardOutput.Out);
        Assert.True(partial.Length > 3 * 64 * 1024, $"{partial.Length} bytes: the three frames were not written before the failure");
        await File.WriteAllBytesAsync(Path.Combine(_directory, "partial.kmse"), partial);
        var decrypted = await RunAsync("decrypt", "--any-key", "--in", "partial.kmse", "--out", "partial.out");
        Assert.True(decrypted.ExitCode == ExitCodes.DecryptionFailed, decrypted.ToString());
        Assert.False(File.Exists(Path.Combine(_directory, "partial.out")));
    }

    [Fact]
    public async Task DataKey_PlaintextOnlyWhenAskedFor()
    {
        var key = (await JsonAsync("keys", "create", $"dk-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;

        var without = await JsonAsync("datakey", "--key", key, "--context", "table=orders");
        Assert.False(without.TryGetProperty("plaintext", out _));
        Assert.NotEmpty(Convert.FromBase64String(without.GetProperty("ciphertext").GetString()!));

        var shown = await JsonAsync("datakey", "--key", key, "--show-plaintext", "--plaintext-out", "dk.bin", "--ciphertext-out", "dk.blob");
        Assert.Equal(32, Convert.FromBase64String(shown.GetProperty("plaintext").GetString()!).Length);
        var file = Path.Combine(_directory, "dk.bin");
        Assert.Equal(32, new FileInfo(file).Length);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));

        using var client = fixture.Server.CreateClient();
        using var decrypted = await client.DecryptAsync(await File.ReadAllBytesAsync(Path.Combine(_directory, "dk.blob")));
        Assert.Equal(await File.ReadAllBytesAsync(file), decrypted.Plaintext.ToArray());
    }

    [Fact]
    public async Task Random_ReturnsTheBytesAskedFor()
    {
        var random = await JsonAsync("random", "--bytes", "48");

        Assert.Equal(48, Convert.FromBase64String(random.GetProperty("data").GetString()!).Length);
    }

    [Fact]
    public async Task Rewrap_BlobsOnAnOldVersion_MovesThemToThePrimaryAndResumes()
    {
        var key = (await JsonAsync("keys", "create", $"rewrap-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        var context = new Dictionary<string, string> { ["table"] = "orders" };
        var blobs = Path.Combine(_directory, "blobs");
        Directory.CreateDirectory(blobs);
        using var client = fixture.Server.CreateClient();
        for (var i = 0; i < 7; i++)
        {
            var dataKey = await client.GenerateDataKeyWithoutPlaintextAsync(key, context);
            await File.WriteAllBytesAsync(Path.Combine(blobs, $"blob-{i:D2}"), dataKey.Ciphertext);
        }

        await JsonAsync("keys", "rotate", key);
        var report = await JsonAsync("rewrap", "--key", key, "--dir", "blobs", "--context", "table=orders", "--checkpoint", "rewrap.checkpoint", "--batch-size", "3");

        Assert.Equal(7, report.GetProperty("rewrapped").GetInt64());
        Assert.Equal(0, report.GetProperty("failed").GetInt64());
        foreach (var blob in Directory.GetFiles(blobs))
        {
            using var decrypted = await client.DecryptAsync(await File.ReadAllBytesAsync(blob), context);
            Assert.EndsWith("/versions/2", decrypted.KeyVersion, StringComparison.Ordinal);
        }

        var resumed = await JsonAsync("rewrap", "--key", key, "--dir", "blobs", "--context", "table=orders", "--checkpoint", "rewrap.checkpoint");
        Assert.Equal(0, resumed.GetProperty("seen").GetInt64());
        Assert.EndsWith("blob-06", resumed.GetProperty("resumedAfter").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Rewrap_WrongContext_ReportsFailuresAndExits7()
    {
        var key = (await JsonAsync("keys", "create", $"rewrap-bad-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        using var client = fixture.Server.CreateClient();
        var dataKey = await client.GenerateDataKeyWithoutPlaintextAsync(key, new Dictionary<string, string> { ["table"] = "orders" });
        await File.WriteAllBytesAsync(Path.Combine(_directory, "blob"), dataKey.Ciphertext);
        await File.WriteAllTextAsync(Path.Combine(_directory, "list.txt"), "blob\n");
        await JsonAsync("keys", "rotate", key);

        var result = await RunAsync("rewrap", "--key", key, "--in-list", "list.txt", "--context", "table=other", "-o", "json");

        Assert.Equal(ExitCodes.DecryptionFailed, result.ExitCode);
        var report = JsonDocument.Parse(result.Out).RootElement;
        Assert.Equal(1, report.GetProperty("failed").GetInt64());
        Assert.Equal("INVALID_ARGUMENT", report.GetProperty("failures")[0].GetProperty("code").GetString());
        Assert.Equal(dataKey.Ciphertext, await File.ReadAllBytesAsync(Path.Combine(_directory, "blob")));
    }

    [Fact]
    public async Task Rewrap_ThroughSymbolicLinks_RewritesTheTargetsAndKeepsTheirPermissions()
    {
        var key = (await JsonAsync("keys", "create", $"rewrap-link-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        var store = Directory.CreateDirectory(Path.Combine(_directory, "store")).FullName;
        var blobs = Directory.CreateDirectory(Path.Combine(_directory, "blobs")).FullName;
        using var client = fixture.Server.CreateClient();
        var groupReadable = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead;
        foreach (var name in new[] { "linked", "plain" })
        {
            var target = Path.Combine(name == "linked" ? store : blobs, name);
            await File.WriteAllBytesAsync(target, (await client.GenerateDataKeyWithoutPlaintextAsync(key)).Ciphertext);
            File.SetUnixFileMode(target, groupReadable);
        }

        File.CreateSymbolicLink(Path.Combine(blobs, "link"), Path.Combine("..", "store", "linked"));
        await JsonAsync("keys", "rotate", key);

        var report = await JsonAsync("rewrap", "--key", key, "--dir", "blobs");

        Assert.Equal(2, report.GetProperty("rewrapped").GetInt64());
        Assert.NotNull(File.ResolveLinkTarget(Path.Combine(blobs, "link"), returnFinalTarget: false));
        foreach (var blob in new[] { Path.Combine(store, "linked"), Path.Combine(blobs, "plain") })
        {
            using var decrypted = await client.DecryptAsync(await File.ReadAllBytesAsync(blob));
            Assert.EndsWith("/versions/2", decrypted.KeyVersion, StringComparison.Ordinal);
            Assert.Equal(groupReadable, File.GetUnixFileMode(blob));
        }
    }

    [Fact]
    public async Task Rewrap_BlobsTogetherOverTheBatchLimitAndAStrayFile_EachBlobRewrappedTheStrayFileFailsAlone()
    {
        var key = (await JsonAsync("keys", "create", $"rewrap-big-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        var blobs = Directory.CreateDirectory(Path.Combine(_directory, "blobs")).FullName;
        using var client = fixture.Server.CreateClient();
        var blob = (await client.EncryptAsync(key, new byte[48 * 1024])).Ciphertext;
        for (var i = 0; i < 100; i++)
        {
            // 100 blobs of 48 KiB: 4.8 MiB, over the 4 MiB a batch may carry.
            await File.WriteAllBytesAsync(Path.Combine(blobs, $"blob-{i:D3}"), blob);
        }

        await File.WriteAllBytesAsync(Path.Combine(blobs, "stray.iso"), new byte[6 * 1024 * 1024]);
        await JsonAsync("keys", "rotate", key);

        var result = await RunAsync("rewrap", "--key", key, "--dir", "blobs", "-o", "json");

        Assert.True(result.ExitCode == ExitCodes.InvalidArgument, result.ToString());
        var report = JsonDocument.Parse(result.Out).RootElement;
        Assert.Equal(100, report.GetProperty("rewrapped").GetInt64());
        Assert.EndsWith("stray.iso", Assert.Single(report.GetProperty("failures").EnumerateArray()).GetProperty("id").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task DataKey_CiphertextOutputExists_NoPlaintextKeyIsWritten()
    {
        var key = (await JsonAsync("keys", "create", $"dk-exists-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        await File.WriteAllTextAsync(Path.Combine(_directory, "dk.blob"), "old");

        var result = await RunAsync("datakey", "--key", key, "--plaintext-out", "dk.bin", "--ciphertext-out", "dk.blob");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.False(File.Exists(Path.Combine(_directory, "dk.bin")), "a plaintext data key was left without its ciphertext");
        Assert.Equal("old", await File.ReadAllTextAsync(Path.Combine(_directory, "dk.blob")));
    }

    [Fact]
    public async Task BinaryOutputToStandardOutput_NoTextFollowsIt()
    {
        var signer = (await JsonAsync("keys", "create", $"sign-out-{Guid.NewGuid():N}", "--algorithm", "EC_SIGN_P256_SHA256")).GetProperty("name").GetString()!;
        var key = (await JsonAsync("keys", "create", $"dk-out-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        await File.WriteAllTextAsync(Path.Combine(_directory, "m"), "message");

        foreach (var args in new[] { new[] { "sign", signer, "--in", "m", "--out", "-" }, ["datakey", "--key", key, "--ciphertext-out", "-"], ["public-key", signer, "--out", "-"] })
        {
            var result = await RunAsync(args);
            Assert.True(result.ExitCode == 0, result.ToString());

            // The captured standard output is the raw bytes (base64 here) and nothing else.
            Assert.NotEmpty(Convert.FromBase64String(result.Out));
        }
    }

    [Fact]
    public async Task PublicKeyAndAttestation_ExistingOutput_RefusedWithoutForce_PemNotPrintedWhenWritten()
    {
        var signer = (await JsonAsync("keys", "create", $"pub-{Guid.NewGuid():N}", "--algorithm", "EC_SIGN_P256_SHA256")).GetProperty("name").GetString()!;
        await File.WriteAllTextAsync(Path.Combine(_directory, "k.pem"), "old");
        await File.WriteAllTextAsync(Path.Combine(_directory, "a.json"), "old");

        Assert.Equal(ExitCodes.Usage, (await RunAsync("public-key", signer, "--out", "k.pem")).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("attest", "get", signer, "--out", "a.json")).ExitCode);
        Assert.Equal("old", await File.ReadAllTextAsync(Path.Combine(_directory, "k.pem")));
        Assert.Equal("old", await File.ReadAllTextAsync(Path.Combine(_directory, "a.json")));

        var written = await RunAsync("public-key", signer, "--out", "k.pem", "--force");
        Assert.True(written.ExitCode == 0, written.ToString());
        Assert.DoesNotContain("BEGIN PUBLIC KEY", written.Out, StringComparison.Ordinal);
        Assert.StartsWith("-----BEGIN PUBLIC KEY-----", await File.ReadAllTextAsync(Path.Combine(_directory, "k.pem")), StringComparison.Ordinal);
        Assert.Equal(0, (await RunAsync("attest", "get", signer, "--out", "a.json", "--force")).ExitCode);
    }

    [Fact]
    public async Task Decrypt_DisabledKey_Exits5NotAsATamperedFile()
    {
        var key = (await JsonAsync("keys", "create", $"dec-off-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;
        await File.WriteAllTextAsync(Path.Combine(_directory, "p"), "x");
        Assert.Equal(0, (await RunAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse")).ExitCode);
        await JsonAsync("keys", "disable", key);

        var result = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "p.out");

        Assert.True(result.ExitCode == ExitCodes.Conflict, result.ToString());
        Assert.StartsWith("kms: FAILED_PRECONDITION", result.Error, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(_directory, "p.out")));
    }

    [Fact]
    public async Task ServerCertificateNotTrusted_IsAConfigurationError_NotTryAgainLater()
    {
        using var otherCa = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=not the KMS's CA", otherCa, System.Security.Cryptography.HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new System.Security.Cryptography.X509Certificates.X509BasicConstraintsExtension(true, false, 0, true));
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        await File.WriteAllTextAsync(Path.Combine(_directory, "other-ca.pem"), certificate.ExportCertificatePem());
        var variables = fixture.Variables;
        variables["KMS_CA_FILE"] = Path.Combine(_directory, "other-ca.pem");

        var result = await CliRun.InProcessAsync(variables, _directory, null, "random");

        Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
        Assert.Contains("certificate", result.Error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")] // not DER inside
    [InlineData("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")] // no certificate at all
    public async Task CaFileThatHoldsNoReadableCertificate_IsAConfigurationError_NamingTheFile(string content)
    {
        // The client reports a CA file it cannot read as an ArgumentException naming it: no
        // CryptographicException reaches the CLI from there.
        var caFile = Path.Combine(_directory, "broken-ca.pem");
        await File.WriteAllTextAsync(caFile, content);
        var variables = fixture.Variables;
        variables["KMS_CA_FILE"] = caFile;

        var result = await CliRun.InProcessAsync(variables, _directory, null, "random");

        Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
        Assert.StartsWith("kms: the configuration does not work: CaCertificatePath " + caFile, result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ClientCertificateThatCannotBeLoaded_IsAConfigurationError_NamingTheFiles()
    {
        var certificate = Path.Combine(_directory, "client.crt");
        var key = Path.Combine(_directory, "client.key");
        await File.WriteAllTextAsync(certificate, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        // A key block of three zero bytes, made here: no key-shaped text in the source.
        await File.WriteAllTextAsync(key, new string(System.Security.Cryptography.PemEncoding.Write("PRIVATE KEY", new byte[3])) + "\n");
        var variables = fixture.Variables;
        variables.Remove("KMS_TOKEN_FILE");
        variables["KMS_CLIENT_CERT"] = certificate;
        variables["KMS_CLIENT_KEY"] = key;

        var result = await CliRun.InProcessAsync(variables, _directory, null, "random");

        Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
        Assert.StartsWith($"kms: cannot load the client certificate {certificate} with key {key}", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task KeyUserToken_CreateKey_Exits4()
    {
        var tokenFile = Path.Combine(_directory, "key-user.token");
        await File.WriteAllTextAsync(tokenFile, fixture.Server.KeyUserToken);
        var variables = fixture.Variables;
        variables["KMS_TOKEN_FILE"] = tokenFile;

        var result = await CliRun.InProcessAsync(variables, _directory, null, "keys", "create", $"denied-{Guid.NewGuid():N}");

        Assert.Equal(ExitCodes.Denied, result.ExitCode);
        Assert.StartsWith("kms: PERMISSION_DENIED", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Profile_PointsAtTheServer()
    {
        var config = Path.Combine(_directory, "config.json");
        await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new
        {
            profiles = new Dictionary<string, object>
            {
                ["test"] = new { endpoints = new[] { fixture.Server.Address.ToString() }, caFile = fixture.Server.CaCertificatePath, tokenFile = fixture.TokenFile, tenant = "dev" },
            },
        }));

        var result = await CliRun.InProcessAsync(new Dictionary<string, string>(), _directory, null, "random", "--config", config, "--profile", "test", "-o", "json");

        Assert.True(result.ExitCode == 0, result.ToString());
    }

    /// <summary>
    /// A newcomer who exported the CA and tenant but not the token got the server's "a valid client
    /// certificate or API token is required", which names no setting of the CLI: the message now says
    /// how to configure one — only when none is, not for a configured token the server refused.
    /// </summary>
    [Fact]
    public async Task NoCredentialConfigured_Unauthenticated_SaysHowToConfigureOne()
    {
        var variables = fixture.Variables;
        variables.Remove("KMS_TOKEN_FILE");
        var badToken = Path.Combine(_directory, "bad.token");
        await File.WriteAllTextAsync(badToken, "kms_0123456789abcdef_notasecretthatworks\n");

        var none = await CliRun.InProcessAsync(variables, _directory, null, "keys", "list");
        variables["KMS_TOKEN_FILE"] = badToken;
        var refused = await CliRun.InProcessAsync(variables, _directory, null, "keys", "list");

        Assert.Equal(ExitCodes.Denied, none.ExitCode);
        Assert.StartsWith("kms: UNAUTHENTICATED: ", none.Error, StringComparison.Ordinal);
        Assert.EndsWith(" (no credential is configured: --token-file, KMS_TOKEN_FILE or the profile's tokenFile; or --client-cert and --client-key)\n", none.Error, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Denied, refused.ExitCode);
        Assert.StartsWith("kms: UNAUTHENTICATED: ", refused.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("no credential is configured", refused.Error, StringComparison.Ordinal);
    }

    /// <summary>
    /// No server at the endpoint: the transport's "Connection refused (127.0.0.1:PORT)" did not say
    /// which setting named that address; the message now does (the README's server on another port
    /// needs KMS_ENDPOINT exported, and a forgotten export left the CLI on the default).
    /// </summary>
    [Fact]
    public async Task NoServerAtTheEndpoint_Unavailable_SaysWhereTheEndpointCameFrom()
    {
        var variables = fixture.Variables;
        int port;
        using (var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        }

        variables["KMS_ENDPOINT"] = $"https://127.0.0.1:{port}";

        var result = await CliRun.InProcessAsync(variables, _directory, null, "keys", "list", "--timeout", "10");

        Assert.Equal(ExitCodes.Unavailable, result.ExitCode);
        Assert.StartsWith("kms: UNAVAILABLE: ", result.Error, StringComparison.Ordinal);
        Assert.EndsWith($" (endpoint https://127.0.0.1:{port}/ from env KMS_ENDPOINT: is the server running there?)\n", result.Error, StringComparison.Ordinal);
    }

    private Task<CliResult> RunAsync(params string[] args) => CliRun.InProcessAsync(fixture.Variables, _directory, null, args);

    // Text a leak would show: the marker, repeated.
    private static byte[] Marked(int length) => [.. Enumerable.Range(0, length).Select(i => (byte)FailingSource.Marker[i % FailingSource.Marker.Length])];

    /// <summary>Hands out new arrays and counts those given back that still hold a non-zero byte.</summary>
    private sealed class WatchedPool : ArrayPool<byte>
    {
        public int Rented { get; private set; }

        public int Returned { get; private set; }

        public int ReturnedHoldingData { get; private set; }

        public override byte[] Rent(int minimumLength)
        {
            Rented++;
            return new byte[minimumLength];
        }

        public override void Return(byte[] array, bool clearArray = false)
        {
            if (clearArray)
            {
                Array.Clear(array);
            }

            Returned++;
            if (array.AsSpan().IndexOfAnyExcept((byte)0) >= 0)
            {
                ReturnedHoldingData++;
            }
        }
    }

    /// <summary>Standard input that gives <c>length</c> bytes of marked plaintext, then fails.</summary>
    private sealed class FailingSource(int length) : Stream
    {
        public const string Marker = "PLAINTEXT-MARKER-";

        public const string Failure = "the source failed mid-way";

        private readonly byte[] _data = Marked(length);
        private int _position;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => _position;
            set => throw new NotSupportedException();
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_position == _data.Length)
            {
                throw new IOException(Failure);
            }

            var count = Math.Min(buffer.Length, _data.Length - _position);
            _data.AsSpan(_position, count).CopyTo(buffer);
            _position += count;
            return count;
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => ValueTask.FromResult(Read(buffer.Span));

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => Task.FromResult(Read(buffer.AsSpan(offset, count)));

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private async Task<JsonElement> JsonAsync(params string[] args)
    {
        var result = await RunAsync([.. args, "-o", "json"]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return JsonDocument.Parse(result.Out).RootElement.Clone();
    }
}
