using System.CommandLine;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using Kms.Cli.Infrastructure;
using Kms.Contracts.V1;
using Kms.Core.Keys;
using CoreAlgorithm = Kms.Core.Keys.KeyAlgorithm;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms sign</c>, <c>kms verify</c>, <c>kms public-key</c>, <c>kms mac</c>, <c>kms verify-mac</c>
/// and <c>kms attest get|verify</c>. Files are hashed here with the key's hash and only the
/// digest is sent, so a file of any size can be signed.
/// </summary>
internal static class SigningCommands
{
    /// <summary>Most bytes <c>kms mac</c> reads (the server's limit for MAC data).</summary>
    private const int MaxMacBytes = 64 * 1024;

    public static IEnumerable<Command> Create(CommandRunner runner) => [Sign(runner), Verify(runner), PublicKey(runner), Mac(runner), VerifyMac(runner), Attest(runner)];

    private static Argument<string> KeyArgument() =>
        NameArgument.Create<string>("KEY", "a key (its primary version), an alias, or a version: ID, TENANT/ID, tenants/T/keys/K[/versions/N]");

    private static Option<string> In(string what) => new("--in") { Description = $"the {what} to read (- for standard input)", Required = true, HelpName = "FILE" };

    private static Option<string> Format() => new("--format") { Description = "ECDSA signature encoding: der (default) or p1363 (refused for RSA and Ed25519 keys, which have one encoding)", HelpName = "der|p1363", DefaultValueFactory = _ => "der" };

    private static Command Sign(CommandRunner runner)
    {
        var key = KeyArgument();
        var input = In("message");
        var output = new Option<string>("--out") { Description = "where to write the signature (raw bytes; - for standard output)", Required = true, HelpName = "FILE" };
        var format = Format();
        var force = OutputFile.ForceOption();
        var command = new Command("sign", "sign a file with a SIGN_VERIFY key (hashed here, the digest is signed in the HSM)") { key, input, output, format, force };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var name = ctx.KeyOrVersionName(parse.GetRequiredValue(key));

            // The files are opened before the key's algorithm is asked for: a wrong path fails
            // without a call to the server (and --in stays open, a pipe included, until it is read).
            await using var source = InputFile.Open(ctx.Environment, parse.GetRequiredValue(input), "--in", out _);
            await using var target = OutputFile.Open(ctx.Environment, parse.GetRequiredValue(output), parse.GetValue(force), "--out");
            KeyAlgorithmSpec? spec;
            try
            {
                spec = await AlgorithmOfAsync(ctx, name, ct);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.PermissionDenied)
            {
                // A key policy may let a principal SIGN but not VERIFY, which reading the public
                // key needs: then the service hashes the message (at most 64 KiB).
                spec = null;
            }

            var request = new SignRequest { Name = name, SignatureFormat = ParseFormat(parse.GetValue(format)) };
            byte[]? message = null;
            SignResponse response;
            try
            {
                if (spec?.Digest is { } digest)
                {
                    request.Digest = ByteString.CopyFrom(await HashAsync(source, digest, ct));
                }
                else
                {
                    message = await ReadSmallAsync(source, parse.GetRequiredValue(input), MaxMacBytes, ct);
                    request.Message = UnsafeByteOperations.UnsafeWrap(message);
                }

                response = await ctx.Client.Raw.SignAsync(request, cancellationToken: ct);
            }
            finally
            {
                Clear(message);
            }

            await target.Stream.WriteAsync(response.Signature.Memory, ct);
            await target.CommitAsync(ct);
            if (target.Path is null)
            {
                // Standard output holds the signature's bytes: no text after them.
                return ExitCodes.Ok;
            }

            ctx.Output.Result(
                new JsonObject { ["key_version"] = response.KeyVersion, ["algorithm"] = spec?.Name, ["signature"] = Convert.ToBase64String(response.Signature.Span) },
                spec is null ? $"signed with {response.KeyVersion}" : $"signed with {response.KeyVersion} ({spec.Name})");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Verify(CommandRunner runner)
    {
        var key = KeyArgument();
        var input = In("message");
        var signature = new Option<string>("--signature") { Description = "the signature file (raw bytes)", Required = true, HelpName = "FILE" };
        var format = Format();
        var command = new Command("verify", "check a signature with a SIGN_VERIFY key version (exit 7 when it does not verify)") { key, input, signature, format };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var name = ctx.KeyOrVersionName(parse.GetRequiredValue(key));

            // Both files are opened before the key's algorithm is asked for: a wrong path fails without a call to the server.
            await using var source = InputFile.Open(ctx.Environment, parse.GetRequiredValue(input), "--in", out _);
            byte[] signatureBytes;
            await using (var signatureFile = InputFile.Open(ctx.Environment, parse.GetRequiredValue(signature), "--signature", out _))
            {
                signatureBytes = await ReadSmallAsync(signatureFile, parse.GetRequiredValue(signature), 4096, ct);
            }

            var spec = await AlgorithmOfAsync(ctx, name, ct);
            var request = new VerifyRequest
            {
                Name = name,
                SignatureFormat = ParseFormat(parse.GetValue(format)),
                Signature = ByteString.CopyFrom(signatureBytes),
            };
            byte[]? message = null;
            try
            {
                if (spec.Digest is { } digest)
                {
                    request.Digest = ByteString.CopyFrom(await HashAsync(source, digest, ct));
                }
                else
                {
                    message = await ReadSmallAsync(source, parse.GetRequiredValue(input), MaxMacBytes, ct);
                    request.Message = UnsafeByteOperations.UnsafeWrap(message);
                }

                var response = await ctx.Client.Raw.VerifyAsync(request, cancellationToken: ct);
                return Report(ctx, response.Valid, response.KeyVersion, "signature");
            }
            finally
            {
                Clear(message);
            }
        });
        return command;
    }

    private static Command PublicKey(CommandRunner runner)
    {
        var key = KeyArgument();
        var output = new Option<string?>("--out") { Description = "write the PEM to this file instead of standard output", HelpName = "FILE" };
        var force = OutputFile.ForceOption();
        var command = new Command("public-key", "print the public key (PEM) of a SIGN_VERIFY or ASYMMETRIC_DECRYPT key version") { key, output, force };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var name = ctx.KeyOrVersionName(ctx.ParseResult.GetRequiredValue(key));

            // Opened before the call: a path that cannot take the key is said so without asking the server.
            await using var target = ctx.ParseResult.GetValue(output) is { } path ? OutputFile.Open(ctx.Environment, path, ctx.ParseResult.GetValue(force), "--out") : null;
            var response = await ctx.Client.GetPublicKeyAsync(name, ct);
            if (target is not null)
            {
                await target.Stream.WriteAsync(Encoding.ASCII.GetBytes(response.Pem), ct);
                await target.CommitAsync(ct);
                if (target.Path is null)
                {
                    return ExitCodes.Ok;
                }

                ctx.Output.Result(CliOutput.Proto(response), $"wrote the public key of {response.KeyVersion} to {target.Path}");
                return ExitCodes.Ok;
            }

            ctx.Output.Result(CliOutput.Proto(response), response.Pem.TrimEnd());
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Mac(CommandRunner runner)
    {
        var key = KeyArgument();
        var input = In("data (at most 64 KiB)");
        var command = new Command("mac", "HMAC of a small file with a MAC key (hex on standard output)") { key, input };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var name = ctx.KeyOrVersionName(ctx.ParseResult.GetRequiredValue(key));
            var data = await ReadSmallAsync(ctx, ctx.ParseResult.GetRequiredValue(input), MaxMacBytes, ct);
            GenerateMacResponse response;
            try
            {
                response = await ctx.Client.Raw.GenerateMacAsync(new GenerateMacRequest { Name = name, Data = UnsafeByteOperations.UnsafeWrap(data) }, cancellationToken: ct);
            }
            finally
            {
                Clear(data);
            }

            var hex = Convert.ToHexStringLower(response.Mac.Span);
            ctx.Output.Result(new JsonObject { ["key_version"] = response.KeyVersion, ["mac"] = hex }, hex);
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command VerifyMac(CommandRunner runner)
    {
        var key = KeyArgument();
        var input = In("data (at most 64 KiB)");
        var mac = new Option<string>("--mac") { Description = "the MAC, hex", Required = true, HelpName = "HEX" };
        var command = new Command("verify-mac", "check an HMAC (exit 7 when it does not match)") { key, input, mac };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var name = ctx.KeyOrVersionName(ctx.ParseResult.GetRequiredValue(key));
            byte[] expected;
            try
            {
                expected = Convert.FromHexString(ctx.ParseResult.GetRequiredValue(mac));
            }
            catch (FormatException)
            {
                throw new CliUsageException("--mac is not hex");
            }

            var data = await ReadSmallAsync(ctx, ctx.ParseResult.GetRequiredValue(input), MaxMacBytes, ct);
            try
            {
                var response = await ctx.Client.Raw.VerifyMacAsync(new VerifyMacRequest { Name = name, Data = UnsafeByteOperations.UnsafeWrap(data), Mac = ByteString.CopyFrom(expected) }, cancellationToken: ct);
                return Report(ctx, response.Valid, response.KeyVersion, "MAC");
            }
            finally
            {
                Clear(data);
            }
        });
        return command;
    }

    private static Command Attest(CommandRunner runner)
    {
        var attest = new Command("attest", "key provenance statements signed by the deployment's audit key (docs/attestation.md)");

        var key = KeyArgument();
        var output = new Option<string>("--out") { Description = "where to write the statement and its signature (JSON)", Required = true, HelpName = "FILE" };
        var force = OutputFile.ForceOption();
        var get = new Command("get", "fetch a key version's signed provenance statement") { key, output, force };
        runner.SetAction(get, async (ctx, ct) =>
        {
            var name = ctx.KeyOrVersionName(ctx.ParseResult.GetRequiredValue(key));

            // Opened before the call: a path that cannot take the statement is said so without asking the server.
            await using var target = OutputFile.Open(ctx.Environment, ctx.ParseResult.GetRequiredValue(output), ctx.ParseResult.GetValue(force), "--out");
            var response = await ctx.Client.GetKeyAttestationAsync(name, ct);
            var bundle = new JsonObject
            {
                ["statement"] = Convert.ToBase64String(response.Statement.Span),
                ["signature"] = Convert.ToBase64String(response.Signature.Span),
                ["signing_key_fingerprint"] = response.SigningKeyFingerprint,
            };
            await target.Stream.WriteAsync(Encoding.UTF8.GetBytes(bundle.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n"), ct);
            await target.CommitAsync(ct);
            if (target.Path is null)
            {
                return ExitCodes.Ok;
            }

            ctx.Output.Result(bundle, $"statement signed by audit key {response.SigningKeyFingerprint}; check it offline with 'kms attest verify'");
            return ExitCodes.Ok;
        });
        attest.Subcommands.Add(get);

        var file = NameArgument.Create<string>("FILE", "a file written by 'kms attest get'");
        var publicKey = new Option<string>("--public-key") { Description = "the audit signing key (PEM) as published, e.g. {DataDir}/audit/signing-key.pem", HelpName = "PEM", Required = true };
        var verify = new Command("verify", "check a provenance statement offline with the published audit key (exit 7 when it does not verify)") { file, publicKey };
        runner.SetAction(verify, (ctx, _) =>
        {
            var key = CeremonyCommands.PublicKeyFromPem(LocalPath.ReadAllText(ctx.Environment, ctx.ParseResult.GetRequiredValue(publicKey), "--public-key"));
            byte[] statement;
            byte[] signature;
            try
            {
                var bundle = JsonNode.Parse(LocalPath.ReadAllText(ctx.Environment, ctx.ParseResult.GetRequiredValue(file)))!;
                statement = Convert.FromBase64String(bundle["statement"]!.GetValue<string>());
                signature = Convert.FromBase64String(bundle["signature"]!.GetValue<string>());
            }
            catch (Exception e) when (e is JsonException or FormatException or NullReferenceException or InvalidOperationException)
            {
                throw new CliFailureException(ExitCodes.DecryptionFailed, "not a statement file written by 'kms attest get'");
            }

            var attestation = KeyAttestation.Verify(key, statement, signature)
                ?? throw new CliFailureException(ExitCodes.DecryptionFailed, "the statement does not verify with this audit key: do not trust it");
            ctx.Output.Result(JsonNode.Parse(statement)!, () => CliOutput.Properties(
            [
                // The key that verified it (--public-key), as verify-transcript says; "issued" is what the statement names.
                ("verified", $"signed by audit key {Kms.Core.Audit.AuditChain.Fingerprint(key)}"),
                .. attestation.Describe().Select(row => (row.Name, (string?)row.Value)),
            ]));
            return Task.FromResult(ExitCodes.Ok);
        });
        attest.Subcommands.Add(verify);
        return attest;
    }

    private static int Report(CliContext ctx, bool valid, string keyVersion, string what)
    {
        ctx.Output.Result(new JsonObject { ["valid"] = valid, ["key_version"] = keyVersion }, valid ? $"valid {what} ({keyVersion})" : $"INVALID {what} ({keyVersion})");
        return valid ? ExitCodes.Ok : ExitCodes.DecryptionFailed;
    }

    private static SignatureFormat ParseFormat(string? format) => format switch
    {
        null or "der" => SignatureFormat.Der,
        "p1363" => SignatureFormat.P1363,
        _ => throw new CliUsageException("--format is der or p1363"),
    };

    // The key's algorithm, from its public key (key users may read it; it says the hash to use).
    private static async Task<KeyAlgorithmSpec> AlgorithmOfAsync(CliContext ctx, string name, CancellationToken ct)
    {
        var algorithm = (await ctx.Client.GetPublicKeyAsync(name, ct)).Algorithm;
        return KeyAlgorithms.Of((CoreAlgorithm)(int)algorithm);
    }

    // The files hashed and read here may be plaintext (a message to sign, data to MAC): the
    // buffers they pass through are cleared once used, and the bytes read are the caller's to
    // clear (Clear) once the request that carries them (wrapped, not copied) was sent.
    private static async Task<byte[]> HashAsync(Stream source, DigestAlgorithm digest, CancellationToken ct)
    {
        using var hash = IncrementalHash.CreateHash(KeyAlgorithms.HashName(digest));
        var buffer = new byte[81920];
        try
        {
            int read;
            while ((read = await source.ReadAsync(buffer, ct)) > 0)
            {
                hash.AppendData(buffer, 0, read);
            }

            return hash.GetHashAndReset();
        }
        finally
        {
            CryptographicOperations.ZeroMemory(buffer);
        }
    }

    private static async Task<byte[]> ReadSmallAsync(CliContext ctx, string path, int limit, CancellationToken ct)
    {
        await using var source = InputFile.Open(ctx.Environment, path, "--in", out _);
        return await ReadSmallAsync(source, path, limit, ct);
    }

    private static async Task<byte[]> ReadSmallAsync(Stream source, string path, int limit, CancellationToken ct)
    {
        // One buffer a byte past the limit, read into in place: a MemoryStream growing would
        // leave each smaller copy behind, uncleared.
        var buffer = new byte[limit + 1];
        try
        {
            var total = 0;
            int read;
            while ((read = await source.ReadAsync(buffer.AsMemory(total), ct)) > 0)
            {
                total += read;
                if (total > limit)
                {
                    throw new CliUsageException($"{path} is larger than {limit} bytes");
                }
            }

            return buffer[..total];
        }
        finally
        {
            CryptographicOperations.ZeroMemory(buffer);
        }
    }

    private static void Clear(byte[]? read)
    {
        if (read is not null)
        {
            CryptographicOperations.ZeroMemory(read);
        }
    }
}
