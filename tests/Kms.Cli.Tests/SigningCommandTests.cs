using System.Security.Cryptography;
using System.Text.Json;
using Kms.Cli.Infrastructure;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>kms keys create --algorithm, sign/verify, public-key, mac/verify-mac, keys import and attest get/verify against the real server.</summary>
public sealed class SigningCommandTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task SignVerify_File_ValidThenTamperedExits7_PublicKeyIsPem_AttestationVerifiesOffline()
    {
        var key = $"sign-{Guid.NewGuid():N}";
        var created = await JsonAsync("keys", "create", key, "--algorithm", "EC_SIGN_P384_SHA384");
        Assert.Equal("KEY_PURPOSE_SIGN_VERIFY", created.GetProperty("purpose").GetString());
        Assert.Equal("KEY_ALGORITHM_EC_SIGN_P384_SHA384", created.GetProperty("algorithm").GetString());
        var document = Path.Combine(_directory, "contract.txt");
        await File.WriteAllBytesAsync(document, RandomNumberGenerator.GetBytes(200_000));
        var signature = Path.Combine(_directory, "contract.sig");

        Assert.Equal(0, (await RunAsync("sign", key, "--in", document, "--out", signature)).ExitCode);
        Assert.Equal(0, (await RunAsync("verify", key, "--in", document, "--signature", signature)).ExitCode);

        var pem = Path.Combine(_directory, "signer.pem");
        Assert.Equal(0, (await RunAsync("public-key", key, "--out", pem)).ExitCode);
        using (var ec = ECDsa.Create())
        {
            ec.ImportFromPem(await File.ReadAllTextAsync(pem));
            Assert.True(ec.VerifyData(await File.ReadAllBytesAsync(document), await File.ReadAllBytesAsync(signature), HashAlgorithmName.SHA384, DSASignatureFormat.Rfc3279DerSequence));
        }

        var bytes = await File.ReadAllBytesAsync(document);
        bytes[100] ^= 1;
        await File.WriteAllBytesAsync(document, bytes);
        var tampered = await RunAsync("verify", key, "--in", document, "--signature", signature);
        Assert.Equal(ExitCodes.DecryptionFailed, tampered.ExitCode);
        Assert.Contains("INVALID", tampered.Out, StringComparison.Ordinal);

        var statement = Path.Combine(_directory, "signer.attestation.json");
        Assert.Equal(0, (await RunAsync("attest", "get", key, "--out", statement)).ExitCode);
        var auditKey = Path.Combine(fixture.Server.DataDir, "audit", "signing-key.pem");
        var verified = await RunAsync("attest", "verify", statement, "--public-key", auditKey);
        Assert.True(verified.ExitCode == 0, verified.ToString());
        Assert.Contains("EC_SIGN_P384_SHA384", verified.Out, StringComparison.Ordinal);

        // A properties table as the other commands print (backup verify's "verified" row first):
        // every row's value starts in the one column, the HSM's attributes too.
        var rows = verified.Out.Split('\n').Where(line => line.StartsWith('│')).ToList();
        Assert.StartsWith("│ verified ", rows.FirstOrDefault(), StringComparison.Ordinal);
        Assert.Contains(rows, row => row.Contains("│ HSM CKA_SENSITIVE ", StringComparison.Ordinal));
        Assert.Single(rows.Select(row => row.IndexOf('│', 1)).Distinct());

        var bundle = System.Text.Json.Nodes.JsonNode.Parse(await File.ReadAllTextAsync(statement))!;
        var forged = Convert.FromBase64String(bundle["signature"]!.GetValue<string>());
        forged[10] ^= 1;
        bundle["signature"] = Convert.ToBase64String(forged);
        await File.WriteAllTextAsync(statement, bundle.ToJsonString());
        Assert.Equal(ExitCodes.DecryptionFailed, (await RunAsync("attest", "verify", statement, "--public-key", auditKey)).ExitCode);
    }

    [Fact]
    public async Task Verify_AfterRotation_OldSignatureVerifiesUnderTheVersionNamed_NotUnderThePrimary()
    {
        // docs/cli.md: "KEY may name a version (…/versions/N) … Name the version when verifying an
        // old signature after a rotation" — in every form a key is named.
        var key = $"sign-{Guid.NewGuid():N}";
        await JsonAsync("keys", "create", key, "--algorithm", "EC_SIGN_P256_SHA256");
        var document = Path.Combine(_directory, "contract.txt");
        await File.WriteAllBytesAsync(document, RandomNumberGenerator.GetBytes(10_000));
        var signature = Path.Combine(_directory, "contract.sig");
        Assert.Equal(0, (await RunAsync("sign", key, "--in", document, "--out", signature)).ExitCode);
        await JsonAsync("keys", "rotate", key);

        foreach (var version in new[] { $"{key}/versions/1", $"dev/{key}/versions/1", $"tenants/dev/keys/{key}/versions/1" })
        {
            var verified = await RunAsync("verify", version, "--in", document, "--signature", signature);
            Assert.True(verified.ExitCode == 0, verified.ToString());
            Assert.Contains($"tenants/dev/keys/{key}/versions/1", verified.Out, StringComparison.Ordinal);
        }

        Assert.Equal(ExitCodes.DecryptionFailed, (await RunAsync("verify", key, "--in", document, "--signature", signature)).ExitCode);
        var publicKey = await RunAsync("public-key", $"{key}/versions/2");
        Assert.True(publicKey.ExitCode == 0, publicKey.ToString());
    }

    [Fact]
    public async Task KeysImport_HmacKeyFile_MacEqualsDotNet_VerifyMacRefusesAnother()
    {
        var key = $"mac-{Guid.NewGuid():N}";
        await JsonAsync("keys", "create", key, "--purpose", "mac", "--allow-import");
        var secret = RandomNumberGenerator.GetBytes(32);
        var material = Path.Combine(_directory, "hmac.key");
        await File.WriteAllBytesAsync(material, secret);

        var imported = await JsonAsync("keys", "import", key, "--material", material);
        Assert.Equal("KEY_ORIGIN_IMPORTED", imported.GetProperty("origin").GetString());

        var data = Path.Combine(_directory, "payload.json");
        await File.WriteAllTextAsync(data, "{\"user\":42}");
        var mac = await JsonAsync("mac", key, "--in", data);
        var expected = Convert.ToHexStringLower(HMACSHA256.HashData(secret, await File.ReadAllBytesAsync(data)));
        Assert.Equal(expected, mac.GetProperty("mac").GetString());
        Assert.Equal(0, (await RunAsync("verify-mac", key, "--in", data, "--mac", expected)).ExitCode);
        Assert.Equal(ExitCodes.DecryptionFailed, (await RunAsync("verify-mac", key, "--in", data, "--mac", new string('0', 64))).ExitCode);
    }

    [Fact]
    public async Task KeysImport_EcPemPrivateKey_SignaturesVerifyWithTheImportersPublicKey()
    {
        var key = $"ec-{Guid.NewGuid():N}";
        await JsonAsync("keys", "create", key, "--algorithm", "EC_SIGN_P256_SHA256", "--allow-import");
        using var mine = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var material = Path.Combine(_directory, "ec.pem");
        await File.WriteAllTextAsync(material, mine.ExportPkcs8PrivateKeyPem());

        Assert.Equal(0, (await RunAsync("keys", "import", key, "--material", material)).ExitCode);

        var document = Path.Combine(_directory, "doc");
        await File.WriteAllTextAsync(document, "signed with my own key");
        var signature = Path.Combine(_directory, "doc.sig");
        Assert.Equal(0, (await RunAsync("sign", key, "--in", document, "--out", signature)).ExitCode);
        Assert.True(mine.VerifyData(await File.ReadAllBytesAsync(document), await File.ReadAllBytesAsync(signature), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence));
    }

    [Fact]
    public async Task Sign_PrincipalAllowedToSignButNotToVerify_ServiceHashesTheMessage()
    {
        // A key policy of SIGN alone: reading the public key (to learn the hash) needs VERIFY.
        var key = $"sign-only-{Guid.NewGuid():N}";
        var created = await JsonAsync("keys", "create", key, "--algorithm", "EC_SIGN_P256_SHA256");
        var signer = Path.Combine(_directory, "signer.token");
        await File.WriteAllTextAsync(signer, await fixture.Server.CreatePrincipalWithTokenAsync("sign-only", "dev", "key-user"));
        using (var admin = fixture.Server.CreateClient())
        {
            await admin.Raw.SetKeyPolicyAsync(new Kms.Contracts.V1.SetKeyPolicyRequest
            {
                Name = created.GetProperty("name").GetString(),
                Entries =
                {
                    new Kms.Contracts.V1.KeyPolicyEntry { Principal = "token:sign-only", Operations = { "SIGN" } },
                    new Kms.Contracts.V1.KeyPolicyEntry { Principal = "token:developer", Operations = { "VERIFY" } },
                },
            });
        }

        var variables = fixture.Variables;
        variables["KMS_TOKEN_FILE"] = signer;
        var document = Path.Combine(_directory, "invoice.txt");
        await File.WriteAllTextAsync(document, "pay 100 to acme");
        var signature = Path.Combine(_directory, "invoice.sig");

        var signed = await CliRun.InProcessAsync(variables, _directory, null, "sign", key, "--in", document, "--out", signature);

        Assert.True(signed.ExitCode == 0, signed.ToString());
        Assert.Equal(0, (await RunAsync("verify", key, "--in", document, "--signature", signature)).ExitCode);
    }

    [Fact]
    public async Task KeysImport_IntoAKeyNotCreatedForIt_Exit5_NothingAdded()
    {
        var key = $"plain-{Guid.NewGuid():N}";
        Assert.False((await JsonAsync("keys", "create", key)).GetProperty("allowImport").GetBoolean());
        var material = Path.Combine(_directory, "aes.key");
        await File.WriteAllBytesAsync(material, RandomNumberGenerator.GetBytes(32));

        var result = await RunAsync("keys", "import", key, "--material", material);

        Assert.Equal(ExitCodes.Conflict, result.ExitCode);
        Assert.Contains("allow_import", result.Error, StringComparison.Ordinal);
        Assert.Single((await JsonAsync("keys", "versions", key)).GetProperty("versions").EnumerateArray());
        var allowed = $"byok-{Guid.NewGuid():N}";
        Assert.True((await JsonAsync("keys", "create", allowed, "--allow-import")).GetProperty("allowImport").GetBoolean());
        Assert.Equal(0, (await RunAsync("keys", "import", allowed, "--material", material)).ExitCode);
    }

    [Fact]
    public async Task KeysImport_ByAKeyManager_Exit4_NothingAdded_AKeyImporterMayImport()
    {
        // A key-manager creates keys and moves aliases; were it also to import, it alone could
        // put material it knows behind an alias callers use.
        var key = $"byok-{Guid.NewGuid():N}";
        await JsonAsync("keys", "create", key, "--allow-import");
        var material = Path.Combine(_directory, "aes.key");
        await File.WriteAllBytesAsync(material, RandomNumberGenerator.GetBytes(32));
        var manager = Path.Combine(_directory, "manager.token");
        await File.WriteAllTextAsync(manager, await fixture.Server.CreatePrincipalWithTokenAsync($"manager-{Guid.NewGuid():N}"[..20], "dev", "key-manager"));
        var importer = Path.Combine(_directory, "importer.token");
        await File.WriteAllTextAsync(importer, await fixture.Server.CreatePrincipalWithTokenAsync($"importer-{Guid.NewGuid():N}"[..20], "dev", "key-importer"));
        var variables = fixture.Variables;

        variables["KMS_TOKEN_FILE"] = manager;
        var refused = await CliRun.InProcessAsync(variables, _directory, null, "keys", "import", key, "--material", material);

        Assert.Equal(ExitCodes.Denied, refused.ExitCode);
        Assert.Contains("kms.keys.import", refused.Error, StringComparison.Ordinal);
        Assert.Single((await JsonAsync("keys", "versions", key)).GetProperty("versions").EnumerateArray());
        variables["KMS_TOKEN_FILE"] = importer;
        var imported = await CliRun.InProcessAsync(variables, _directory, null, "keys", "import", key, "--material", material);
        Assert.True(imported.ExitCode == 0, imported.ToString());
        Assert.Equal(2, (await JsonAsync("keys", "versions", key)).GetProperty("versions").GetArrayLength());
    }

    // The file is read into one buffer a byte past the limit (cleared after use): 64 KiB exactly
    // is read whole, one byte more is refused before anything is sent.
    [Fact]
    public async Task Mac_FileOfExactlyTheLimit_Read_OneByteMore_Exits2()
    {
        var key = $"mac-limit-{Guid.NewGuid():N}";
        await JsonAsync("keys", "create", key, "--purpose", "mac");
        var data = Path.Combine(_directory, "limit.bin");
        await File.WriteAllBytesAsync(data, RandomNumberGenerator.GetBytes(64 * 1024));
        var mac = (await JsonAsync("mac", key, "--in", data)).GetProperty("mac").GetString()!;
        Assert.Equal(0, (await RunAsync("verify-mac", key, "--in", data, "--mac", mac)).ExitCode);

        await File.WriteAllBytesAsync(data, new byte[(64 * 1024) + 1]);
        var refused = await RunAsync("mac", key, "--in", data);
        Assert.Equal(ExitCodes.Usage, refused.ExitCode);
        Assert.Contains($"{data} is larger than 65536 bytes", refused.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task KeysCreate_AlgorithmOfAnotherPurpose_Exits2()
    {
        var result = await RunAsync("keys", "create", $"x-{Guid.NewGuid():N}", "--purpose", "mac", "--algorithm", "EC_SIGN_P256_SHA256");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("SIGN_VERIFY", result.Error, StringComparison.Ordinal);
    }

    private Task<CliResult> RunAsync(params string[] args) => CliRun.InProcessAsync(fixture.Variables, _directory, null, args);

    private async Task<JsonElement> JsonAsync(params string[] args)
    {
        var result = await RunAsync([.. args, "-o", "json"]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return JsonDocument.Parse(result.Out).RootElement.Clone();
    }
}
