// Record-level encryption with Kms: encrypt one column of each row, bound to its table,
// column and row id, with a data-key cache so a burst of writes costs one KMS call, not one
// per row. The encryption context (table, column) goes to the KMS and picks the cached data
// key; the row id is associated data: bound to the ciphertext, never stored or sent.
//
//   dotnet run --project samples/RecordEncryption -- [key name]
//
// Connects like the README's dev server: https://127.0.0.1:8443, .kms/tls/ca.crt,
// .kms/tokens/developer.token (override with KMS_ENDPOINT, KMS_CA_FILE, KMS_TOKEN_FILE:
// the variables of the kms CLI, docs/cli.md).
using System.Text;
using Kms.Client;
using Kms.Client.Caching;
using Kms.Client.Envelope;

namespace Kms.Samples.RecordEncryption;

/// <summary>The sample, callable from tests.</summary>
public static class RecordSample
{
    public static async Task<int> Main(string[] args)
    {
        using var client = new KmsClient(new KmsClientOptions
        {
            Endpoint = new Uri(Environment.GetEnvironmentVariable("KMS_ENDPOINT") ?? "https://127.0.0.1:8443"),
            CaCertificatePath = Environment.GetEnvironmentVariable("KMS_CA_FILE") ?? ".kms/tls/ca.crt",
            ApiTokenPath = Environment.GetEnvironmentVariable("KMS_TOKEN_FILE") ?? ".kms/tokens/developer.token",
        });
        var keyName = args.FirstOrDefault() ?? (await client.CreateKeyAsync("tenants/dev", $"records-{Guid.NewGuid():N}")).Name;
        return await RunAsync(client, keyName, Console.Out);
    }

    /// <summary>Encrypts three customer rows, reads them back, and shows that a row moved to another id fails.</summary>
    public static async Task<int> RunAsync(KmsClient client, string keyName, TextWriter output)
    {
        // One encryptor per key set, kept for the life of the process: it holds the cache.
        using var encryptor = new EnvelopeEncryptor(client, new EnvelopeOptions
        {
            KeyNames = [keyName],
            DataKeyCache = new DataKeyCacheOptions { MaxAge = TimeSpan.FromMinutes(5), MaxMessagesPerKey = 10_000 },
        });

        var table = new Dictionary<int, byte[]>();
        foreach (var (id, ssn) in new[] { (1, "078-05-1120"), (2, "219-09-9999"), (3, "457-55-5462") })
        {
            // Context and row id name where the ciphertext belongs: a row copied elsewhere will not decrypt.
            table[id] = await encryptor.EncryptAsync(Encoding.UTF8.GetBytes(ssn), ColumnContext, RowId(id));
        }

        foreach (var (id, ciphertext) in table)
        {
            // The reader names the context it expects: a ciphertext copied in from another column
            // (another context) is refused before any KMS call.
            var ssn = Encoding.UTF8.GetString(await encryptor.DecryptAsync(ciphertext, ColumnContext, RowId(id)));
            await output.WriteLineAsync($"row {id}: {ciphertext.Length} bytes stored, decrypts to ***-**-{ssn[^4..]}");
        }

        // Reads are not cached (DataKeyCacheOptions.DecryptionMaxAge is off by default): each is a
        // KMS Decrypt, in the KMS audit log, and refused as soon as the key is disabled.
        var stats = encryptor.CacheStatistics!;
        await output.WriteLineAsync($"KMS calls for 3 rows: {stats.EncryptMisses} GenerateDataKey, {stats.DecryptMisses} Decrypt");

        try
        {
            await encryptor.DecryptAsync(table[1], ColumnContext, RowId(2));
            await output.WriteLineAsync("row 1 read as row 2: decrypted (this must not happen)");
            return 1;
        }
        catch (EnvelopeDecryptionException e)
        {
            await output.WriteLineAsync($"row 1 read as row 2: refused ({e.Message})");
        }

        return 0;
    }

    private static readonly Dictionary<string, string> ColumnContext = new() { ["table"] = "customers", ["column"] = "ssn" };

    private static byte[] RowId(int id) => Encoding.UTF8.GetBytes($"customers/{id}");
}
