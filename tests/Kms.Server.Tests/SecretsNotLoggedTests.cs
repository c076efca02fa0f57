using System.Text;
using Grpc.Core;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>Round trips and failures, then a search of everything the server logged for the secrets involved.</summary>
public sealed class SecretsNotLoggedTests
{
    [Fact]
    public async Task RoundTripsAndFailures_NoDataKeyPlaintextOrContextValueInLogs()
    {
        await using var server = await KmsTestServer.StartAsync();
        using var client = server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", "logged");
        var plaintext = Encoding.UTF8.GetBytes("PLAINTEXT-MARKER-7f3a9c");
        var contextValue = "CONTEXT-VALUE-MARKER-51b2";
        var context = new Dictionary<string, string> { ["patient"] = contextValue };

        var encrypted = await client.EncryptAsync(key.Name, plaintext, context);
        using var decrypted = await client.DecryptAsync(encrypted.Ciphertext, context);
        using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
        var dataKeyBytes = dataKey.Plaintext.ToArray();
        using var dataKeyAgain = await client.DecryptAsync(dataKey.Ciphertext, context);

        // Failures log too: make sure they do not echo what they were given.
        await Assert.ThrowsAsync<RpcException>(() => client.DecryptAsync(encrypted.Ciphertext, new Dictionary<string, string> { ["patient"] = contextValue + "-x" }));
        await Assert.ThrowsAsync<RpcException>(() => client.EncryptAsync(key.Name, plaintext, new Dictionary<string, string> { [""] = contextValue }));
        await Assert.ThrowsAsync<RpcException>(() => client.EncryptAsync("tenants/dev/keys/missing", plaintext, context));

        Assert.NotEmpty(server.Logs.Events);
        Assert.Contains(server.Logs.Events, e => e.Contains("rejected", StringComparison.Ordinal));
        Assert.False(server.Logs.ContainsSecret(dataKeyBytes), "data key plaintext in logs");
        Assert.False(server.Logs.ContainsSecret(plaintext), "plaintext in logs");
        Assert.DoesNotContain(contextValue, server.Logs.AllText, StringComparison.Ordinal);
        Assert.DoesNotContain(server.Token.UserPin, server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ImportsMacsAndAsymmetricDecryption_NoMaterialMacKeyOrPlaintextInLogs()
    {
        await using var server = await KmsTestServer.StartAsync();
        using var client = server.CreateClient();
        var macKey = (await client.CreateKeyAsync("tenants/dev", "logged-mac", new Kms.Contracts.V1.Key { Purpose = Kms.Contracts.V1.KeyPurpose.Mac, AllowImport = true })).Name;
        var job = await client.CreateImportJobAsync("tenants/dev", "logged-job", Kms.Contracts.V1.ImportMethod.RsaOaep3072Sha1Aes256);
        var secret = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
        await client.ImportKeyVersionAsync(macKey, job.Name, Kms.Client.KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, secret));
        var data = Encoding.UTF8.GetBytes("MAC-DATA-MARKER-93c1");
        var mac = await client.GenerateMacAsync(macKey, data);

        // A refused import (wrong size) logs too: it must not echo the material.
        var shortSecret = System.Security.Cryptography.RandomNumberGenerator.GetBytes(20);
        await Assert.ThrowsAsync<RpcException>(() => client.ImportKeyVersionAsync(macKey, job.Name, Kms.Client.KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, shortSecret)));

        var rsaKey = (await client.CreateKeyAsync("tenants/dev", "logged-rsa", Kms.Contracts.V1.KeyPurpose.AsymmetricDecrypt, Kms.Contracts.V1.KeyAlgorithm.RsaDecryptOaep2048Sha1)).Name;
        using var rsa = System.Security.Cryptography.RSA.Create();
        rsa.ImportSubjectPublicKeyInfo((await client.GetPublicKeyAsync(rsaKey)).Der.Span, out _);
        var plaintext = Encoding.UTF8.GetBytes("RSA-PLAINTEXT-MARKER-2d8e");
        using var decrypted = await client.AsymmetricDecryptAsync(rsaKey, rsa.Encrypt(plaintext, System.Security.Cryptography.RSAEncryptionPadding.OaepSHA1));

        Assert.False(server.Logs.ContainsSecret(secret), "imported material in logs");
        Assert.False(server.Logs.ContainsSecret(shortSecret), "refused material in logs");
        Assert.False(server.Logs.ContainsSecret(plaintext), "RSA plaintext in logs");
        Assert.False(server.Logs.ContainsSecret(data), "MAC data in logs");
        Assert.False(server.Logs.ContainsSecret(mac), "MAC in logs");
    }
}
