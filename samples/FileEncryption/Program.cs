// File encryption with Kms: stream a file of any size into an envelope message and back,
// in constant memory, under two keys (e.g. one per site: either can decrypt).
//
//   dotnet run --project samples/FileEncryption -- <file> [key name] [second key name]
//
// Connects like the README's dev server: https://127.0.0.1:8443, .kms/tls/ca.crt,
// .kms/tokens/developer.token (override with KMS_ENDPOINT, KMS_CA_FILE, KMS_TOKEN_FILE:
// the variables of the kms CLI, docs/cli.md).
using System.Security.Cryptography;
using Kms.Client;
using Kms.Client.Envelope;

namespace Kms.Samples.FileEncryption;

/// <summary>The sample, callable from tests.</summary>
public static class FileSample
{
    public static async Task<int> Main(string[] args)
    {
        if (args.Length == 0)
        {
            Console.Error.WriteLine("usage: FileEncryption <file> [key name] [second key name]");
            return 2;
        }

        // Before any key is made: a run on a name that is no file would leave two new keys behind.
        if (!File.Exists(args[0]))
        {
            Console.Error.WriteLine($"FileEncryption: there is no file {args[0]}; name any file (e.g. head -c 200000 /dev/urandom > big.bin)");
            return 2;
        }

        using var client = new KmsClient(new KmsClientOptions
        {
            Endpoint = new Uri(Environment.GetEnvironmentVariable("KMS_ENDPOINT") ?? "https://127.0.0.1:8443"),
            CaCertificatePath = Environment.GetEnvironmentVariable("KMS_CA_FILE") ?? ".kms/tls/ca.crt",
            ApiTokenPath = Environment.GetEnvironmentVariable("KMS_TOKEN_FILE") ?? ".kms/tokens/developer.token",
        });
        var keys = args.Length > 1
            ? args[1..]
            : [(await client.CreateKeyAsync("tenants/dev", $"files-a-{Guid.NewGuid():N}")).Name, (await client.CreateKeyAsync("tenants/dev", $"files-b-{Guid.NewGuid():N}")).Name];
        return await RunAsync(client, keys, args[0], Console.Out);
    }

    /// <summary>Encrypts <paramref name="path"/> to <c>path.kmse</c>, decrypts it to <c>path.out</c>, and compares.</summary>
    public static async Task<int> RunAsync(KmsClient client, IList<string> keyNames, string path, TextWriter output)
    {
        using var encryptor = new EnvelopeEncryptor(client, new EnvelopeOptions { KeyNames = keyNames });
        var context = new Dictionary<string, string> { ["file"] = Path.GetFileName(path) };

        await using (var plaintext = File.OpenRead(path))
        await using (var encrypted = File.Create(path + ".kmse"))
        {
            await encryptor.EncryptAsync(plaintext, encrypted, context);
        }

        // Write to a temporary name and rename only on success: a streamed decryption's output
        // is whole and authentic only when the call returns without an exception. The plaintext
        // file is new (never one, or a link, already there under that name: the name is fresh)
        // and readable by its owner only, as the original's permissions are not known here.
        var partial = $"{path}.out.{Guid.NewGuid():N}.partial";
        try
        {
            await using var encrypted = File.OpenRead(path + ".kmse");
            var create = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
            if (!OperatingSystem.IsWindows())
            {
                create.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
            }

            await using var decrypted = new FileStream(partial, create);
            await encryptor.DecryptAsync(encrypted, decrypted, context);
        }
        catch
        {
            File.Delete(partial);
            throw;
        }

        File.Move(partial, path + ".out", overwrite: true);

        var original = await HashAsync(path);
        var roundTripped = await HashAsync(path + ".out");
        var same = original.AsSpan().SequenceEqual(roundTripped);
        await output.WriteLineAsync($"{path}: {new FileInfo(path).Length} bytes -> {new FileInfo(path + ".kmse").Length} encrypted under {keyNames.Count} keys; round trip {(same ? "identical" : "DIFFERENT")}");
        return same ? 0 : 1;
    }

    private static async Task<byte[]> HashAsync(string path)
    {
        await using var stream = File.OpenRead(path);
        return await SHA256.HashDataAsync(stream);
    }
}
