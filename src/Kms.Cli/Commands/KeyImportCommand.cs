using System.CommandLine;
using System.Security.Cryptography;
using System.Text;
using Kms.Cli.Infrastructure;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Core.Keys;
using CoreAlgorithm = Kms.Core.Keys.KeyAlgorithm;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms keys import</c>: BYOK. Wraps local key material for an import job (created on the fly
/// unless <c>--job</c> names one) and imports it as the key's new primary version. The material
/// is read from a file, wrapped in memory, zeroed, and never leaves this process unwrapped.
/// </summary>
internal static class KeyImportCommand
{
    private const int MaxMaterialBytes = 16 * 1024;

    public static Command Create(CommandRunner runner)
    {
        var key = NameArgument.Create<string>("KEY", "the key that gets the imported version: ID, TENANT/ID or tenants/TENANT/keys/ID");
        var material = new Option<string>("--material")
        {
            Description = "the key material: raw bytes for AES and HMAC keys; PKCS#8 (DER or PEM 'PRIVATE KEY') for RSA and EC",
            Required = true,
            HelpName = "FILE",
        };
        var job = new Option<string?>("--job") { Description = "an existing import job (tenants/T/importJobs/J); default: create one", HelpName = "JOB" };
        var method = new Option<string>("--method")
        {
            Description = "the import method of a new job",
            HelpName = "NAME",
            DefaultValueFactory = _ => "RSA_OAEP_3072_SHA1_AES_256",
        };
        var command = new Command("import", "import your own key material (BYOK) as a new primary version of a key created with --allow-import") { key, material, job, method };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var keyName = ctx.KeyName(parse.GetRequiredValue(key));

            // Checked before an import job is created for material that is not there, or may not be read.
            var materialPath = LocalPath.Readable(ctx.Environment, parse.GetRequiredValue(material), "--material");
            var spec = KeyAlgorithms.Of((CoreAlgorithm)(int)(await ctx.Client.GetKeyAsync(keyName, ct)).Algorithm);
            var importJob = parse.GetValue(job) is { } existing
                ? await ctx.Client.GetImportJobAsync(existing, ct)
                : await ctx.Client.CreateImportJobAsync(keyName[..keyName.LastIndexOf("/keys/", StringComparison.Ordinal)], "cli-" + Guid.NewGuid().ToString("N")[..16], ParseMethod(parse.GetRequiredValue(method)), ct);
            if (importJob.State != ImportJobState.Active)
            {
                throw new CliFailureException(ExitCodes.Conflict, $"import job {importJob.Name} has expired; create a new one");
            }

            var bytes = ReadMaterial(materialPath, spec);
            byte[] wrapped;
            byte[] publicKey;
            try
            {
                publicKey = PublicKeyOf(bytes, spec);
                wrapped = KeyImport.Wrap(importJob.PublicKeyDer.Span, importJob.ImportMethod, bytes);
            }
            finally
            {
                CryptographicOperations.ZeroMemory(bytes);
            }

            var version = await ctx.Client.ImportKeyVersionAsync(keyName, importJob.Name, wrapped, publicKey, cancellationToken: ct);
            ctx.Output.Result(CliOutput.Proto(version), $"imported {version.Name} ({spec.Name}) through {importJob.Name}; it is now the primary version");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static ImportMethod ParseMethod(string name) =>
        Enum.GetValues<Kms.Core.Ports.ImportMethod>().FirstOrDefault(m => string.Equals(Kms.Core.Keys.ImportJob.MethodName(m), name, StringComparison.OrdinalIgnoreCase)) is var method && method != 0
            ? (ImportMethod)(int)method
            : throw new CliUsageException($"unknown --method {name}; one of: {string.Join(", ", Enum.GetValues<Kms.Core.Ports.ImportMethod>().Select(Kms.Core.Keys.ImportJob.MethodName))}");

    // PEM is decoded to its DER body; the PEM text is zeroed with it.
    private static byte[] ReadMaterial(string path, KeyAlgorithmSpec spec)
    {
        byte[] raw;
        try
        {
            var info = new FileInfo(path);
            raw = info.Length is > 0 and <= MaxMaterialBytes
                ? File.ReadAllBytes(path)
                : throw new CliUsageException($"--material {path} must hold 1 to {MaxMaterialBytes} bytes");
        }
        catch (UnauthorizedAccessException e)
        {
            throw LocalPath.NotReadable($"--material {path}", e);
        }
        catch (IOException e)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot read --material {path}: {e.Message}");
        }

        if (spec.IsAsymmetric && raw.AsSpan().StartsWith("-----BEGIN"u8))
        {
            var text = Encoding.ASCII.GetChars(raw);
            try
            {
                var fields = PemEncoding.Find(text);
                if (!text.AsSpan()[fields.Label].SequenceEqual("PRIVATE KEY"))
                {
                    throw new CliUsageException("--material PEM must be an unencrypted PKCS#8 'PRIVATE KEY'");
                }

                var der = new byte[fields.DecodedDataLength];
                Convert.TryFromBase64Chars(text.AsSpan()[fields.Base64Data], der, out _);
                return der;
            }
            catch (ArgumentException)
            {
                throw new CliUsageException("--material is not valid PEM");
            }
            finally
            {
                Array.Clear(text);
                CryptographicOperations.ZeroMemory(raw);
            }
        }

        return raw;
    }

    private static byte[] PublicKeyOf(byte[] pkcs8, KeyAlgorithmSpec spec)
    {
        try
        {
            switch (spec.Family)
            {
                case KeyFamily.Rsa:
                    using (var rsa = RSA.Create())
                    {
                        rsa.ImportPkcs8PrivateKey(pkcs8, out _);
                        return rsa.ExportSubjectPublicKeyInfo();
                    }

                case KeyFamily.Ec:
                    using (var ec = ECDsa.Create())
                    {
                        ec.ImportPkcs8PrivateKey(pkcs8, out _);
                        return ec.ExportSubjectPublicKeyInfo();
                    }

                default:
                    return [];
            }
        }
        catch (Exception e) when (e is CryptographicException or PlatformNotSupportedException)
        {
            // An EC key on a curve OpenSSL does not know gives PlatformNotSupportedException.
            throw new CliUsageException($"--material is not a PKCS#8 private key for {spec.Name}");
        }
    }
}
