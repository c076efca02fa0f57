using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text.Json;
using Kms.Cli.Infrastructure;
using Kms.Client.Envelope;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms encrypt --signed</c> (suite 0x0002, docs/envelope-format-signed.md) and
/// <c>kms decrypt --require-signed</c> against the real server.
/// </summary>
public sealed class SignedEnvelopeCommandTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    // The SDK's default frame length: a plaintext of two and a bit frames has two regular frames
    // before its final one.
    private const int FrameLength = 64 * 1024;

    private const int FooterLength = 96;

    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task EncryptSigned_File_IsSuite2WithAFooterTheSdkVerifies_DecryptsWithAndWithoutRequireSigned()
    {
        var key = await NewKeyAsync("signed");
        var plaintext = RandomNumberGenerator.GetBytes(2 * FrameLength + 1000);
        await File.WriteAllBytesAsync(Path.Combine(_directory, "p"), plaintext);

        var encrypted = await JsonAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse", "--context", "file=p", "--signed");

        Assert.True(encrypted.GetProperty("signed").GetBoolean());
        var message = await File.ReadAllBytesAsync(Path.Combine(_directory, "p.kmse"));
        Assert.Equal(0x0002, Suite(message));
        // The SDK reads it as signed: one shot verifies the signature over every byte before the
        // 96-byte footer first; the message without its footer's last byte is refused.
        var context = new Dictionary<string, string> { ["file"] = "p" };
        using (var client = fixture.Server.CreateClient())
        using (var reader = new EnvelopeEncryptor(client, new EnvelopeOptions { KeyNames = [key], RequireSignedMessages = true }))
        {
            Assert.Equal(plaintext, await reader.DecryptAsync(message, context));
            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message[..^1], context));
            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message[..^FooterLength], context));
        }

        var plain = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "plain.out", "--context", "file=p");
        var strict = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "strict.out", "--context", "file=p", "--require-signed");

        Assert.True(plain.ExitCode == 0, plain.ToString());
        Assert.True(strict.ExitCode == 0, strict.ToString());
        Assert.Equal(plaintext, await File.ReadAllBytesAsync(Path.Combine(_directory, "plain.out")));
        Assert.Equal(plaintext, await File.ReadAllBytesAsync(Path.Combine(_directory, "strict.out")));
    }

    [Fact]
    public async Task DecryptRequireSigned_UnsignedFile_RefusedBeforeAnyKmsCall_NothingWritten()
    {
        var key = await NewKeyAsync("unsigned");
        await File.WriteAllTextAsync(Path.Combine(_directory, "p"), "not signed");
        var encrypted = await JsonAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse");
        Assert.Equal(0x0001, Suite(await File.ReadAllBytesAsync(Path.Combine(_directory, "p.kmse"))));
        // With the key disabled, any call to the KMS about the file is FAILED_PRECONDITION (exit 5):
        // a refusal that says "not signed" (exit 7) was made before the KMS was asked.
        await JsonAsync("keys", "disable", key);

        var toFile = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "p.out", "--require-signed");
        var toStandardOutput = await RunAsync("decrypt", "--any-key", "--in", "p.kmse", "--out", "-", "--require-signed");
        var withoutTheFlag = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "p.out");

        const string Refusal = "kms: decryption failed: the message is not signed (suite 0x0001); this reader requires signed messages (suite 0x0002)\n";
        Assert.True(toFile.ExitCode == ExitCodes.DecryptionFailed, toFile.ToString());
        Assert.Equal(Refusal, toFile.Error);
        Assert.Equal(ExitCodes.DecryptionFailed, toStandardOutput.ExitCode);
        Assert.Equal(Refusal, toStandardOutput.Error);
        Assert.Equal("", toStandardOutput.Out);
        Assert.True(withoutTheFlag.ExitCode == ExitCodes.Conflict, withoutTheFlag.ToString());
        Assert.Equal(["p", "p.kmse"], Directory.GetFileSystemEntries(_directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.False(encrypted.GetProperty("signed").GetBoolean());
    }

    [Fact]
    public async Task DecryptSigned_FooterAltered_NoFileLeft_StandardOutputHoldsTheFramesBeforeTheLast()
    {
        // Every frame's tag verifies; only the signature at the end fails. To a file nothing is put
        // in place; to standard output the regular frames were released before the footer was read
        // (docs/cli.md: check the exit code, or decrypt to a file).
        var key = await NewKeyAsync("footer");
        var plaintext = RandomNumberGenerator.GetBytes(2 * FrameLength + 1000);
        await File.WriteAllBytesAsync(Path.Combine(_directory, "p"), plaintext);
        await JsonAsync("encrypt", "--key", key, "--in", "p", "--out", "p.kmse", "--signed");
        var message = await File.ReadAllBytesAsync(Path.Combine(_directory, "p.kmse"));
        message[^1] ^= 0x01;
        await File.WriteAllBytesAsync(Path.Combine(_directory, "p.kmse"), message);

        var toFile = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "p.out");
        var toFileStrict = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "p.out", "--require-signed");
        var toStandardOutput = await RunAsync("decrypt", "--key", key, "--in", "p.kmse", "--out", "-");

        Assert.True(toFile.ExitCode == ExitCodes.DecryptionFailed, toFile.ToString());
        Assert.Equal("kms: decryption failed\n", toFile.Error);
        Assert.Equal(ExitCodes.DecryptionFailed, toFileStrict.ExitCode);
        Assert.Equal(["p", "p.kmse"], Directory.GetFileSystemEntries(_directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(ExitCodes.DecryptionFailed, toStandardOutput.ExitCode);
        Assert.Equal(plaintext[..(2 * FrameLength)], Convert.FromBase64String(toStandardOutput.Out));
    }

    [Fact]
    public async Task EncryptSigned_ContextOf64Entries_UsageError_NothingWritten()
    {
        // The public key is a signed message's 64th context entry: the caller has 63.
        var key = await NewKeyAsync("full");
        await File.WriteAllTextAsync(Path.Combine(_directory, "p"), "x");
        string[] context = [.. Enumerable.Range(0, 64).SelectMany(i => new[] { "--context", $"k{i:D2}=v" })];

        var signed = await RunAsync(["encrypt", "--key", key, "--in", "p", "--out", "p.kmse", .. context, "--signed"]);
        var unsigned = await RunAsync(["encrypt", "--key", key, "--in", "p", "--out", "p.kmse", .. context]);

        Assert.True(signed.ExitCode == ExitCodes.Usage, signed.ToString());
        Assert.Contains("a signed envelope message's encryption context has at most 63 entries", signed.Error, StringComparison.Ordinal);
        Assert.True(unsigned.ExitCode == 0, unsigned.ToString());
        Assert.Equal(0x0001, Suite(await File.ReadAllBytesAsync(Path.Combine(_directory, "p.kmse"))));
    }

    /// <summary>The suite field: the two bytes after the magic and the version, big-endian.</summary>
    private static int Suite(byte[] message)
    {
        Assert.Equal("KMSE"u8.ToArray(), message[..4]);
        Assert.Equal(1, message[4]);
        return BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(5, 2));
    }

    private async Task<string> NewKeyAsync(string prefix) =>
        (await JsonAsync("keys", "create", $"{prefix}-{Guid.NewGuid():N}")).GetProperty("name").GetString()!;

    private Task<CliResult> RunAsync(params string[] args) => CliRun.InProcessAsync(fixture.Variables, _directory, null, args);

    private async Task<JsonElement> JsonAsync(params string[] args)
    {
        var result = await RunAsync([.. args, "-o", "json"]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return JsonDocument.Parse(result.Out).RootElement.Clone();
    }
}
