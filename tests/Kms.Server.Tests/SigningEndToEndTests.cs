using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using global::Grpc.Core;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Testing;
using Org.BouncyCastle.Crypto.Digests;
using Org.BouncyCastle.Crypto.Signers;
using Org.BouncyCastle.Security;
using KeyAttestation = Kms.Core.Keys.KeyAttestation;
using ProtoAlgorithm = Kms.Contracts.V1.KeyAlgorithm;

namespace Kms.Server.Tests;

/// <summary>
/// Signing, MAC, asymmetric decryption, BYOK and provenance statements through the real server
/// (TLS, SoftHSM, SQLite), cross-checked with .NET, BouncyCastle and the openssl tool.
/// </summary>
public sealed class SigningEndToEndTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private static readonly byte[] Message = "transfer 100 EUR to account 42"u8.ToArray();

    private KmsClient Client => fixture.Client;

    [Fact]
    public async Task SignEcdsaP256_VerifiedByDotNetBouncyCastleAndVerify()
    {
        var key = await CreateAsync(KeyPurpose.SignVerify, ProtoAlgorithm.EcSignP256Sha256);
        var signed = await Client.SignAsync(key, Message);
        var publicKey = await Client.GetPublicKeyAsync(key);

        Assert.Equal(ProtoAlgorithm.EcSignP256Sha256, signed.Algorithm);
        using (var ec = ECDsa.Create())
        {
            ec.ImportFromPem(publicKey.Pem);
            Assert.True(ec.VerifyData(Message, signed.Signature.ToByteArray(), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence));
        }

        var signer = new DsaDigestSigner(new ECDsaSigner(), new Sha256Digest());
        signer.Init(false, PublicKeyFactory.CreateKey(publicKey.Der.ToByteArray()));
        signer.BlockUpdate(Message, 0, Message.Length);
        Assert.True(signer.VerifySignature(signed.Signature.ToByteArray()));
        Assert.True(await Client.VerifyAsync(key, Message, signed.Signature.Memory));
    }

    [Fact]
    public async Task SignEcdsaP384_DerAndP1363_VerifiedByBouncyCastle_HighSTwinVerifies_NonMinimalDerDoesNot()
    {
        // The P-384 path through SoftHSM and the gRPC format switch, checked by another ECDSA
        // implementation; and what docs/signing.md says of encodings: DER is strict, but ECDSA is
        // malleable — (r, n - s) verifies as (r, s) does, neither is normalised nor refused.
        var key = await CreateAsync(KeyPurpose.SignVerify, ProtoAlgorithm.EcSignP384Sha384);
        var der = (await Client.SignAsync(key, Message)).Signature.ToByteArray();
        var p1363 = (await Client.SignAsync(key, Message, Kms.Contracts.V1.SignatureFormat.P1363)).Signature.ToByteArray();
        var publicKey = PublicKeyFactory.CreateKey((await Client.GetPublicKeyAsync(key)).Der.ToByteArray());

        Assert.Equal(96, p1363.Length);
        var derSigner = new DsaDigestSigner(new ECDsaSigner(), new Sha384Digest());
        derSigner.Init(false, publicKey);
        derSigner.BlockUpdate(Message, 0, Message.Length);
        Assert.True(derSigner.VerifySignature(der));
        var p1363Signer = new DsaDigestSigner(new ECDsaSigner(), new Sha384Digest(), PlainDsaEncoding.Instance);
        p1363Signer.Init(false, publicKey);
        p1363Signer.BlockUpdate(Message, 0, Message.Length);
        Assert.True(p1363Signer.VerifySignature(p1363));

        var n = Org.BouncyCastle.Asn1.Nist.NistNamedCurves.GetByName("P-384").N;
        byte[] twin = [.. p1363[..48], .. Org.BouncyCastle.Utilities.BigIntegers.AsUnsignedByteArray(48, n.Subtract(new Org.BouncyCastle.Math.BigInteger(1, p1363[48..])))];
        Assert.True(await Client.VerifyAsync(key, Message, twin, Kms.Contracts.V1.SignatureFormat.P1363));
        Assert.True(await Client.VerifyAsync(key, Message, Kms.Core.Crypto.EcdsaSignature.P1363ToDer(twin)));

        Assert.True(await Client.VerifyAsync(key, Message, der));
        Assert.True(await Client.VerifyAsync(key, Message, p1363, Kms.Contracts.V1.SignatureFormat.P1363));
        Assert.False(await Client.VerifyAsync(key, Message, der.Append((byte)0).ToArray()));
        byte[] leadingZero = [0x30, (byte)(der[1] + 1), 0x02, (byte)(der[3] + 1), 0x00, .. der[4..]];
        Assert.False(await Client.VerifyAsync(key, Message, leadingZero));
        Assert.False(await Client.VerifyAsync(key, Message, p1363));
    }

    [Fact]
    public async Task SignRsaPss_VerifiedByBouncyCastle_OneBitChangeRejectedByVerify()
    {
        var key = await CreateAsync(KeyPurpose.SignVerify, ProtoAlgorithm.RsaSignPss2048Sha256);
        var signed = await Client.SignAsync(key, Message);
        var publicKey = await Client.GetPublicKeyAsync(key);

        var pss = new PssSigner(new Org.BouncyCastle.Crypto.Engines.RsaEngine(), new Sha256Digest(), 32);
        pss.Init(false, PublicKeyFactory.CreateKey(publicKey.Der.ToByteArray()));
        pss.BlockUpdate(Message, 0, Message.Length);
        Assert.True(pss.VerifySignature(signed.Signature.ToByteArray()));

        var flipped = signed.Signature.ToByteArray();
        flipped[^1] ^= 1;
        Assert.False(await Client.VerifyAsync(key, Message, flipped));

        // P1363 is ECDSA's: asked of an RSA key through the SDK, refused naming the field (it was ignored).
        foreach (var refused in new Func<Task>[]
        {
            () => Client.SignAsync(key, Message, Kms.Contracts.V1.SignatureFormat.P1363),
            () => Client.VerifyAsync(key, Message, signed.Signature.Memory, Kms.Contracts.V1.SignatureFormat.P1363),
        })
        {
            var e = await Assert.ThrowsAsync<RpcException>(refused);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith("signature_format: ", e.Status.Detail, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task GetPublicKey_OpensslReadsIt_AndVerifiesTheServersDerSignature()
    {
        var key = await CreateAsync(KeyPurpose.SignVerify, ProtoAlgorithm.EcSignP256Sha256);
        var signed = await Client.SignAsync(key, Message);
        var publicKey = await Client.GetPublicKeyAsync(key);
        var directory = Directory.CreateTempSubdirectory("kms-openssl-");
        try
        {
            var pem = Path.Combine(directory.FullName, "public.pem");
            var message = Path.Combine(directory.FullName, "message");
            var signature = Path.Combine(directory.FullName, "signature.der");
            await File.WriteAllTextAsync(pem, publicKey.Pem);
            await File.WriteAllBytesAsync(message, Message);
            await File.WriteAllBytesAsync(signature, signed.Signature.ToByteArray());

            var (describeCode, describe) = await OpensslAsync("pkey", "-pubin", "-in", pem, "-noout", "-text");
            Assert.Equal(0, describeCode);
            Assert.Contains("prime256v1", describe, StringComparison.Ordinal);
            var (derCode, _) = await OpensslAsync("pkey", "-pubin", "-in", pem, "-outform", "DER", "-out", Path.Combine(directory.FullName, "public.der"));
            Assert.Equal(0, derCode);
            Assert.Equal(publicKey.Der.ToByteArray(), await File.ReadAllBytesAsync(Path.Combine(directory.FullName, "public.der")));

            var (verifyCode, verify) = await OpensslAsync("dgst", "-sha256", "-verify", pem, "-signature", signature, message);
            Assert.Equal(0, verifyCode);
            Assert.Contains("Verified OK", verify, StringComparison.Ordinal);
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task AsymmetricDecrypt_DotNetOaepSha1Ciphertext_Decrypts_TamperedIsOpaque()
    {
        var key = await CreateAsync(KeyPurpose.AsymmetricDecrypt, ProtoAlgorithm.RsaDecryptOaep2048Sha1);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo((await Client.GetPublicKeyAsync(key)).Der.Span, out _);
        var ciphertext = rsa.Encrypt(Message, RSAEncryptionPadding.OaepSHA1);

        using (var plaintext = await Client.AsymmetricDecryptAsync(key, ciphertext))
        {
            Assert.Equal(Message, plaintext.Plaintext.ToArray());
        }

        ciphertext[5] ^= 0x40;
        var e = await Assert.ThrowsAsync<RpcException>(() => Client.AsymmetricDecryptAsync(key, ciphertext));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal("decryption failed", e.Status.Detail);
    }

    [Fact]
    public async Task OaepSha256_OnSoftHsm_FailedPreconditionFromTheProfile_NothingCreated()
    {
        var id = ServerFixture.NewKeyId();
        var e = await Assert.ThrowsAsync<RpcException>(() => Client.CreateKeyAsync("tenants/dev", id, KeyPurpose.AsymmetricDecrypt, ProtoAlgorithm.RsaDecryptOaep2048Sha256));

        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("RSA-OAEP with SHA-1 only", e.Status.Detail, StringComparison.Ordinal);
        var missing = await Assert.ThrowsAsync<RpcException>(() => Client.GetKeyAsync($"tenants/dev/keys/{id}"));
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
    }

    [Fact]
    public async Task Ed25519_OnSoftHsm_FailedPrecondition()
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId(), KeyPurpose.SignVerify, ProtoAlgorithm.Ed25519));

        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("Ed25519", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BadInput_WrongPurposeAndWrongDigestLength_ClearStatuses()
    {
        var aes = (await Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId())).Name;
        var signing = await CreateAsync(KeyPurpose.SignVerify, ProtoAlgorithm.EcSignP256Sha256);

        var purpose = await Assert.ThrowsAsync<RpcException>(() => Client.SignAsync(aes, Message));
        Assert.Equal(StatusCode.FailedPrecondition, purpose.StatusCode);
        Assert.Contains("ENCRYPT_DECRYPT", purpose.Status.Detail, StringComparison.Ordinal);
        var mac = await Assert.ThrowsAsync<RpcException>(() => Client.GenerateMacAsync(signing, Message));
        Assert.Contains("not MAC", mac.Status.Detail, StringComparison.Ordinal);
        var digest = await Assert.ThrowsAsync<RpcException>(() => Client.SignDigestAsync(signing, new byte[20]));
        Assert.Equal(StatusCode.InvalidArgument, digest.StatusCode);
        Assert.Contains("32-byte", digest.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ImportHmacKeyOfKnownValue_MacEqualsDotNet_VerifyMacRejectsOneBit_AttestationSaysImported()
    {
        var key = await CreateAsync(KeyPurpose.Mac, ProtoAlgorithm.HmacSha256, allowImport: true);
        var job = await Client.CreateImportJobAsync("tenants/dev", ServerFixture.NewKeyId(), ImportMethod.RsaOaep3072Sha1Aes256);
        var secret = RandomNumberGenerator.GetBytes(32);

        var version = await Client.ImportKeyVersionAsync(key, job.Name, KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, secret));
        Assert.Equal(KeyOrigin.Imported, version.Origin);
        Assert.Equal(job.Name, version.ImportJob);

        var mac = await Client.GenerateMacAsync(key, Message);
        Assert.Equal(HMACSHA256.HashData(secret, Message), mac);
        Assert.True(await Client.VerifyMacAsync(key, Message, mac));
        mac[0] ^= 0x01;
        Assert.False(await Client.VerifyMacAsync(key, Message, mac));

        var attestation = await VerifiedAttestationAsync(version.Name);
        Assert.Equal("IMPORTED", attestation.Origin);
        Assert.Equal(job.Name, attestation.ImportJob);
        var expectedCheckValue = HMACSHA256.HashData(secret, Encoding.ASCII.GetBytes(Kms.Core.Ports.KeyVersionProperties.CheckValueText))[..8];
        Assert.Equal(Convert.ToHexStringLower(expectedCheckValue), attestation.CheckValue);
    }

    [Fact]
    public async Task Import_WrongWrappingOrSize_InvalidArgument_NoVersionAdded()
    {
        var key = await CreateAsync(KeyPurpose.EncryptDecrypt, ProtoAlgorithm.Aes256Gcm, allowImport: true);
        var job = await Client.CreateImportJobAsync("tenants/dev", ServerFixture.NewKeyId(), ImportMethod.RsaOaep3072Sha1Aes256);
        var garbage = RandomNumberGenerator.GetBytes(384 + 40);
        var shortKey = KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, new byte[16]);

        foreach (var wrapped in new[] { garbage, shortKey })
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => Client.ImportKeyVersionAsync(key, job.Name, wrapped));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        }

        Assert.EndsWith("/versions/1", (await Client.GetKeyAsync(key)).Primary.Name, StringComparison.Ordinal);
        var versions = new List<Kms.Contracts.V1.KeyVersion>();
        await foreach (var version in Client.ListKeyVersionsAsync(key))
        {
            versions.Add(version);
        }

        Assert.Single(versions);
    }

    [Fact]
    public async Task Import_AMaterialItsJobAlreadyImported_AgainOrRewrappedOrAsHmac_FailedPrecondition_NoVersionAdded_AuditedRefused()
    {
        // Through SoftHSM: the fingerprint of a secret is computed in the HSM, the same whether it
        // is unwrapped as AES or as an HMAC key, and whatever OAEP seed or ephemeral key wrapped it.
        var aes = await CreateAsync(KeyPurpose.EncryptDecrypt, ProtoAlgorithm.Aes256Gcm, allowImport: true);
        var mac = await CreateAsync(KeyPurpose.Mac, ProtoAlgorithm.HmacSha256, allowImport: true);
        var job = await Client.CreateImportJobAsync("tenants/dev", ServerFixture.NewKeyId(), ImportMethod.RsaOaep3072Sha1Aes256);
        var material = RandomNumberGenerator.GetBytes(32);
        var wrapped = KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, material);
        var rewrapped = KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, material);
        var imported = await Client.ImportKeyVersionAsync(aes, job.Name, wrapped);

        foreach (var (key, blob) in new[] { (aes, wrapped), (mac, wrapped), (aes, rewrapped), (mac, rewrapped) })
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => Client.ImportKeyVersionAsync(key, job.Name, blob));
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
            Assert.Contains($"already imported through import job {job.Name}", e.Status.Detail, StringComparison.Ordinal);
            Assert.DoesNotContain(Convert.ToBase64String(blob)[..16], e.Status.Detail, StringComparison.Ordinal);
            Assert.DoesNotContain(Convert.ToHexString(blob)[..16], e.Status.Detail, StringComparison.OrdinalIgnoreCase);
        }

        Assert.Equal(imported.Name, (await Client.GetKeyAsync(aes)).Primary.Name);
        Assert.Equal([1, 2], await VersionNumbersAsync(aes));
        Assert.Equal([1], await VersionNumbersAsync(mac));
        var events = (await Client.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Operation = "ImportKeyVersion", PageSize = 1000 })).Events
            .Where(e => e.Resource.StartsWith(aes, StringComparison.Ordinal)).ToList();
        Assert.Equal("OK", events[0].Outcome);
        Assert.All(events.Skip(1), e => Assert.Equal("FAILED_PRECONDITION", e.Outcome));
        Assert.Equal(2, events.Skip(1).Sum(e => Math.Max(1, e.Count)));

        // Another material through the job, and this one through a new job, are imported (as HMAC).
        await Client.ImportKeyVersionAsync(aes, job.Name, KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, RandomNumberGenerator.GetBytes(32)));
        var second = await Client.CreateImportJobAsync("tenants/dev", ServerFixture.NewKeyId(), ImportMethod.RsaOaep3072Sha1Aes256);
        await Client.ImportKeyVersionAsync(mac, second.Name, KeyImport.Wrap(second.PublicKeyDer.Span, second.ImportMethod, material));
        Assert.Equal([1, 2], await VersionNumbersAsync(mac));
    }

    [Fact]
    public async Task Import_TwoMaterialsThatDifferOnlyByTrailingZeroBytes_ThroughOneJob_BothImported()
    {
        // HMAC pads a key shorter than its block with zeros, so HMAC-SHA256 under K and under K
        // followed by zero bytes is one MAC: a fingerprint that is only that MAC took a 48-byte
        // HMAC-SHA384 key ending in 16 zero bytes for the AES-256 key before it (claim 115).
        var aes = await CreateAsync(KeyPurpose.EncryptDecrypt, ProtoAlgorithm.Aes256Gcm, allowImport: true);
        var mac = await CreateAsync(KeyPurpose.Mac, ProtoAlgorithm.HmacSha384, allowImport: true);
        var job = await Client.CreateImportJobAsync("tenants/dev", ServerFixture.NewKeyId(), ImportMethod.RsaOaep3072Sha1Aes256);
        var material = RandomNumberGenerator.GetBytes(32);
        byte[] padded = [.. material, .. new byte[16]];

        await Client.ImportKeyVersionAsync(aes, job.Name, KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, material));
        var version = await Client.ImportKeyVersionAsync(mac, job.Name, KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, padded));

        Assert.Equal(version.Name, (await Client.GetKeyAsync(mac)).Primary.Name);
        Assert.Equal(HMACSHA384.HashData(padded, Message), await Client.GenerateMacAsync(mac, Message));
        var again = await Assert.ThrowsAsync<RpcException>(() => Client.ImportKeyVersionAsync(mac, job.Name, KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, padded)));
        Assert.Equal(StatusCode.FailedPrecondition, again.StatusCode);
    }

    private async Task<List<int>> VersionNumbersAsync(string key)
    {
        var numbers = new List<int>();
        await foreach (var version in Client.ListKeyVersionsAsync(key))
        {
            numbers.Add(int.Parse(version.Name[(version.Name.LastIndexOf('/') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
        }

        return numbers;
    }

    [Fact]
    public async Task Attestation_GeneratedSigningKey_VerifiesOffline_ReportsTheHsmsAttributes_TamperedFails()
    {
        var key = await CreateAsync(KeyPurpose.SignVerify, ProtoAlgorithm.EcSignP256Sha256);
        var response = await Client.GetKeyAttestationAsync(key);
        var auditKey = PublicKeyDer((await Client.GetAuditSigningKeyAsync()).PublicKeyPem);

        var attestation = KeyAttestation.Verify(auditKey, response.Statement.Span, response.Signature.Span);
        Assert.NotNull(attestation);
        Assert.Equal("GENERATED", attestation.Origin);
        Assert.Equal("EC_SIGN_P256_SHA256", attestation.Algorithm);
        Assert.Equal(Convert.ToBase64String((await Client.GetPublicKeyAsync(key)).Der.Span), attestation.PublicKey);
        Assert.Equal("true", attestation.HsmAttributes["CKA_SENSITIVE"]);
        Assert.Equal("false", attestation.HsmAttributes["CKA_EXTRACTABLE"]);
        Assert.Equal("false", attestation.HsmAttributes["CKA_LOCAL"]);
        Assert.Equal("false", attestation.HsmAttributes["CKA_NEVER_EXTRACTABLE"]);
        Assert.NotNull(attestation.CreateRequest);

        var tampered = response.Statement.ToByteArray();
        var at = Encoding.UTF8.GetString(tampered).IndexOf("GENERATED", StringComparison.Ordinal);
        tampered[at] = (byte)'X';
        Assert.Null(KeyAttestation.Verify(auditKey, tampered, response.Signature.Span));
    }

    private static byte[] PublicKeyDer(string pem)
    {
        using var ec = ECDsa.Create();
        ec.ImportFromPem(pem);
        return ec.ExportSubjectPublicKeyInfo();
    }

    private async Task<KeyAttestation> VerifiedAttestationAsync(string name)
    {
        var response = await Client.GetKeyAttestationAsync(name);
        var auditKey = PublicKeyDer((await Client.GetAuditSigningKeyAsync()).PublicKeyPem);
        return KeyAttestation.Verify(auditKey, response.Statement.Span, response.Signature.Span) ?? throw new InvalidOperationException("the statement does not verify");
    }

    private async Task<string> CreateAsync(KeyPurpose purpose, ProtoAlgorithm algorithm, bool allowImport = false) =>
        (await Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId(), new Kms.Contracts.V1.Key { Purpose = purpose, Algorithm = algorithm, AllowImport = allowImport })).Name;

    private static async Task<(int Code, string Output)> OpensslAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo("openssl") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException("openssl did not start (apt-get install -y openssl)");
        var output = await process.StandardOutput.ReadToEndAsync();
        var error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, output + error);
    }
}
