using System.CommandLine;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;
using Kms.Client.Envelope;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms encrypt</c> and <c>kms decrypt</c> (files and streams, with the envelope SDK: framed,
/// key-committing AES-256-GCM under a data key from the KMS, in constant memory),
/// <c>kms datakey</c> and <c>kms random</c>.
/// </summary>
internal static class CryptoCommands
{
    // EnvelopeOptions needs a key to encrypt with even when the encryptor only decrypts; with
    // TrustAnyKey a decrypting encryptor never sends this name anywhere.
    private const string DecryptOnlyKeyName = "tenants/_/keys/_decrypt-only";

    public static IEnumerable<Command> Create(CommandRunner runner) => [Encrypt(runner), Decrypt(runner), DataKey(runner), Random(runner)];

    private static Option<string> In(string what) => new("--in") { Description = $"the {what} to read (- for standard input)", Required = true, HelpName = "FILE" };

    private static Option<string> Out(string what) => new("--out") { Description = $"where to write the {what} (- for standard output); written to a temporary file and renamed on success", Required = true, HelpName = "FILE" };

    private static Option<Dictionary<string, string>> Context(string description) => ContextOption.Create("--context", description);

    private static Command Encrypt(CommandRunner runner)
    {
        var keys = new Option<string[]>("--key")
        {
            Description = "a key (or alias) that wraps the data key; repeat for more keys, any one of which can decrypt",
            Required = true,
            HelpName = "KEY",
        };
        var input = In("plaintext");
        var output = Out("envelope message");
        var context = Context("encryption context entry (repeatable): stored in clear in the header, needed again to decrypt");
        var signed = new Option<bool>("--signed")
        {
            Description = "sign the message (suite 0x0002, docs/envelope-format-signed.md), so that a principal allowed only to decrypt under the keys cannot write one a reader accepts; without it, suite 0x0001",
        };
        var force = OutputFile.ForceOption();
        var command = new Command("encrypt", "encrypt a file or stream into an envelope message (docs/envelope-format.md)") { keys, input, output, context, signed, force };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var keyNames = parse.GetRequiredValue(keys).Select(ctx.KeyName).ToList();
            var encryptionContext = parse.GetValue(context)!;
            var inPath = parse.GetRequiredValue(input);
            var outPath = parse.GetRequiredValue(output);
            InputFile.RefuseSame(ctx.Environment, inPath, outPath);
            var sign = parse.GetValue(signed);

            using var encryptor = new EnvelopeEncryptor(ctx.Client, new EnvelopeOptions
            {
                KeyNames = keyNames,
                Suite = sign ? EnvelopeSuite.CommittingSigned : EnvelopeSuite.Committing,
            });
            await using var source = InputFile.Open(ctx.Environment, inPath, "--in", out var length);
            await using var target = OutputFile.Open(ctx.Environment, outPath, parse.GetValue(force), "--out");
            IReadOnlyList<WrappedDataKey> wrapped = [];
            var plaintextBytes = await ProgressDisplay.RunAsync(ctx, "encrypting", length, async progress =>
            {
                await using var counted = new CountingStream(source, progress);
                await using var encrypting = await encryptor.OpenEncryptingStreamAsync(target.Stream, encryptionContext, cancellationToken: ct);
                wrapped = encrypting.WrappedKeys;
                try
                {
                    await PlaintextCopy.CopyAsync(counted, encrypting, ctx.Environment.CopyBuffers, ct);
                }
                catch
                {
                    // Given up on purpose (a source that failed, or cancelled): the message stays
                    // without its final frame, and the stream does not take this for a caller's slip.
                    encrypting.Abandon();
                    throw;
                }

                await encrypting.CompleteAsync(ct);
                return counted.BytesRead;
            });
            await target.CommitAsync(ct);

            // What wrapped the data key: the key an alias pointed at, and its version (the header
            // records the key, never the alias). Reported, so "under orders" is not taken for a key.
            var used = keyNames.Select((given, i) => (Given: given, Key: i < wrapped.Count ? wrapped[i].KeyName : given, KeyVersion: i < wrapped.Count ? wrapped[i].KeyVersion : null)).ToList();
            if (target.Path is not null)
            {
                var written = new FileInfo(target.Path).Length;
                ctx.Output.Result(
                    new JsonObject
                    {
                        ["in"] = inPath,
                        ["out"] = target.Path,
                        ["keys"] = new JsonArray([.. keyNames.Select(k => (JsonNode)k)]),
                        ["wrappedKeys"] = new JsonArray([.. used.Select(u => (JsonNode)new JsonObject { ["given"] = u.Given, ["key"] = u.Key, ["keyVersion"] = u.KeyVersion })]),
                        ["encryptionContext"] = ContextJson(encryptionContext),
                        ["plaintextBytes"] = plaintextBytes,
                        ["ciphertextBytes"] = written,
                        ["signed"] = sign,
                    },
                    $"encrypted {inPath} ({plaintextBytes} bytes) to {target.Path} ({written} bytes) under {string.Join(", ", used.Select(u => (u.KeyVersion ?? u.Key) + (u.Key == u.Given ? "" : $" (through {u.Given})")))}{(sign ? ", signed" : "")}");
            }

            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Decrypt(CommandRunner runner)
    {
        var keys = new Option<string[]>("--key")
        {
            Description = "a key (not an alias) whose wrapped data key you trust (repeatable); a message wrapped only under other keys is refused",
            HelpName = "KEY",
        };
        var anyKey = new Option<bool>("--any-key") { Description = "instead of --key: trust whichever key the message names, if the KMS lets you use it" };
        var input = In("envelope message");
        var output = Out("plaintext");
        var context = Context("the encryption context the message must have, entry by entry (none: it must have none)");
        var requireSigned = new Option<bool>("--require-signed")
        {
            Description = "refuse a message that is not signed (suite 0x0001), before any KMS call; signed messages (suite 0x0002) are read with or without it",
        };
        var force = OutputFile.ForceOption();
        var command = new Command("decrypt", "decrypt an envelope message; nothing is left at --out unless the whole message verified (a signed message's signature included)")
        {
            keys, anyKey, input, output, context, requireSigned, force,
        };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var keyNames = (parse.GetValue(keys) ?? []).Select(ctx.KeyName).ToList();
            var trustAnyKey = parse.GetValue(anyKey);
            if (keyNames.Count > 0 && trustAnyKey)
            {
                throw new CliUsageException("give --key or --any-key, not both");
            }

            if (keyNames.Count == 0 && !trustAnyKey)
            {
                throw new CliUsageException("say which keys you trust: --key KEY (repeatable), or --any-key");
            }

            // A file records the key, never the alias, and trusting whatever an alias points to
            // would trust whoever may update it: decrypt trusts keys by name.
            if (keyNames.FirstOrDefault(name => Kms.Core.Names.ResourceSegments.Is(name, Kms.Core.Names.ResourceSegments.Collection, "aliases")) is { } alias)
            {
                throw new CliUsageException($"decrypt trusts keys, not aliases: name the key (or keys) {alias} points or pointed to with --key");
            }

            var expectedContext = parse.GetValue(context)!;
            var inPath = parse.GetRequiredValue(input);
            var outPath = parse.GetRequiredValue(output);
            InputFile.RefuseSame(ctx.Environment, inPath, outPath);

            // Signed messages stream (StreamSignedMessages stays on): to a file, nothing is put in
            // place before the signature at the message's end verified, which is what refusing to
            // stream them would protect; to standard output, docs/cli.md says to decrypt to a file.
            var options = trustAnyKey
                ? new EnvelopeOptions { KeyNames = [DecryptOnlyKeyName], TrustAnyKey = true }
                : new EnvelopeOptions { KeyNames = keyNames };
            options.RequireSignedMessages = parse.GetValue(requireSigned);
            using var encryptor = new EnvelopeEncryptor(ctx.Client, options);
            await using var source = InputFile.Open(ctx.Environment, inPath, "--in", out var length);
            await using var target = OutputFile.Open(ctx.Environment, outPath, parse.GetValue(force), "--out");
            var plaintextBytes = await ProgressDisplay.RunAsync(ctx, "decrypting", length, async progress =>
            {
                await using var counted = new CountingStream(source, progress);
                await using var plaintext = await encryptor.OpenDecryptingStreamAsync(counted, expectedContext, cancellationToken: ct);
                var before = target.Stream.CanSeek ? target.Stream.Position : 0;
                // The decrypting stream's CopyToAsync writes from its own buffer (zeroed on
                // dispose), not through a pooled one as Stream's does: no PlaintextCopy here.
                await plaintext.CopyToAsync(target.Stream, ct);
                return target.Stream.CanSeek ? target.Stream.Position - before : -1;
            });
            await target.CommitAsync(ct);

            if (target.Path is not null)
            {
                ctx.Output.Result(
                    new JsonObject
                    {
                        ["in"] = inPath,
                        ["out"] = target.Path,
                        ["encryptionContext"] = ContextJson(expectedContext),
                        ["plaintextBytes"] = plaintextBytes,
                    },
                    $"decrypted {inPath} to {target.Path} ({plaintextBytes} bytes)");
            }

            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command DataKey(CommandRunner runner)
    {
        var key = new Option<string>("--key") { Description = "the key that encrypts the data key", Required = true, HelpName = "KEY" };
        var context = Context("encryption context entry (repeatable), needed again to decrypt the data key");
        var showPlaintext = new Option<bool>("--show-plaintext") { Description = "also print the plaintext data key (base64) on standard output" };
        var plaintextOut = new Option<string>("--plaintext-out") { Description = "write the plaintext data key (32 raw bytes) to this new file, mode 0600", HelpName = "FILE" };
        var ciphertextOut = new Option<string>("--ciphertext-out") { Description = "write the encrypted data key (raw bytes) to this file", HelpName = "FILE" };
        var force = OutputFile.ForceOption();
        var command = new Command("datakey", "generate a data key under a key; by default only its ciphertext is returned")
        {
            key, context, showPlaintext, plaintextOut, ciphertextOut, force,
        };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var keyName = ctx.KeyName(parse.GetRequiredValue(key));
            var encryptionContext = parse.GetValue(context)!;
            var show = parse.GetValue(showPlaintext);
            var plaintextPath = parse.GetValue(plaintextOut);
            var overwrite = parse.GetValue(force);

            // Both files are opened before the call (an existing one refused): a failure then
            // cannot leave a plaintext data key written without its ciphertext.
            await using var plaintextFile = plaintextPath is null ? null : OutputFile.Open(ctx.Environment, plaintextPath, overwrite, "--plaintext-out");
            await using var ciphertextFile = parse.GetValue(ciphertextOut) is { } ciphertextPath ? OutputFile.Open(ctx.Environment, ciphertextPath, overwrite, "--ciphertext-out") : null;
            byte[] ciphertext;
            string keyVersion;
            string? plaintextBase64 = null;
            if (show || plaintextFile is not null)
            {
                using var dataKey = await ctx.Client.GenerateDataKeyAsync(keyName, encryptionContext, ct);
                (ciphertext, keyVersion) = (dataKey.Ciphertext, dataKey.KeyVersion);
                if (plaintextFile is not null)
                {
                    plaintextFile.Stream.Write(dataKey.Plaintext);
                }

                if (show)
                {
                    plaintextBase64 = Convert.ToBase64String(dataKey.Plaintext);
                }
            }
            else
            {
                (ciphertext, keyVersion) = await ctx.Client.GenerateDataKeyWithoutPlaintextAsync(keyName, encryptionContext, ct);
            }

            if (ciphertextFile is not null)
            {
                await ciphertextFile.Stream.WriteAsync(ciphertext, ct);
                await CommitAsync(ctx, ciphertextFile, ct);
            }

            if (plaintextFile is not null)
            {
                await CommitAsync(ctx, plaintextFile, ct);
            }

            if (plaintextFile is { Path: null } || ciphertextFile is { Path: null })
            {
                // Standard output holds raw bytes: no text after them.
                return ExitCodes.Ok;
            }

            var json = new JsonObject { ["keyVersion"] = keyVersion, ["ciphertext"] = Convert.ToBase64String(ciphertext) };
            if (plaintextBase64 is not null)
            {
                json["plaintext"] = plaintextBase64;
            }

            ctx.Output.Result(json, () => CliOutput.Properties(
            [
                ("key version", keyVersion),
                ("ciphertext", Convert.ToBase64String(ciphertext)),
                .. plaintextBase64 is null ? [] : new[] { ("plaintext", (string?)plaintextBase64) },
            ]));
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Random(CommandRunner runner)
    {
        var bytes = new Option<int>("--bytes") { Description = "how many bytes (1 to 1024)", DefaultValueFactory = _ => 32, HelpName = "N" };
        var command = new Command("random", "random bytes from the HSM, base64 on standard output") { bytes };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var data = await ctx.Client.GenerateRandomAsync(ctx.ParseResult.GetValue(bytes), ct);
            var text = Convert.ToBase64String(data);
            ctx.Output.Result(new JsonObject { ["bytes"] = data.Length, ["data"] = text }, text);
            return ExitCodes.Ok;
        });
        return command;
    }

    private static JsonObject ContextJson(Dictionary<string, string> context) =>
        new([.. context.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => KeyValuePair.Create(e.Key, (JsonNode?)e.Value))]);

    private static async Task CommitAsync(CliContext context, OutputFile file, CancellationToken cancellationToken)
    {
        await file.CommitAsync(cancellationToken);
        if (file.Path is not null)
        {
            context.Output.Note($"wrote {file.Name}");
        }
    }
}
