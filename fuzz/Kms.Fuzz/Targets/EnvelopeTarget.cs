using System.Text.Json;
using Grpc.Core;
using Kms.Client.Envelope;

namespace Kms.Fuzz;

/// <summary>
/// Envelope messages (docs/envelope-format.md): header, context, wrapped keys and frames, through
/// the public API (one-shot and streaming decryption), with a software key provider that hands
/// out a fixed data key — or the golden vector's, for the vector's wrapped key — so frames past a
/// valid header are reached without a KMS. Seeds include both files of golden vectors (suites 0x0001
/// and 0x0002). Nothing is re-signed here: a mutated signed message meets the real signature check;
/// <see cref="EnvelopeSignedTarget"/> re-signs to reach what follows. Contract: refusal is an
/// <see cref="EnvelopeDecryptionException"/>; the one-shot and streaming paths agree.
/// </summary>
internal sealed class EnvelopeTarget : FuzzTarget
{
    internal const string KeyName = "tenants/fuzz/keys/k";
    internal static readonly byte[] FixedDataKey = Convert.FromHexString("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
    internal static readonly byte[] FixedWrapped = Convert.FromHexString("0102030405060708");

    // Both files of golden vectors, read where the tests read them (linked into the output by the
    // project): suite 0x0001's and suite 0x0002's, whose data keys the key provider hands out.
    internal static readonly List<(string Description, byte[] DataKey, WrappedDataKey[] Wrapped, byte[] Message)> Vectors =
        [.. LoadVectors("envelope-v1.json"), .. LoadVectors("envelope-signed.json")];
    private static readonly int[] SeedSizes = [0, 1, 63, 64, 65, 200];
    private static readonly EnvelopeEncryptor Encryptor = new(new SoftwareKeyProvider(), new EnvelopeOptions { KeyNames = [KeyName], TrustAnyKey = true, FrameLength = 64 });

    // Writes suite 0x0002 seeds (docs/envelope-format-signed.md), so the public key in the context,
    // the footer and the streaming reader's held-back final frame are reached too; Encryptor reads both.
    private static readonly EnvelopeEncryptor SignedWriter = new(new SoftwareKeyProvider(), new EnvelopeOptions { KeyNames = [KeyName], TrustAnyKey = true, FrameLength = 64, Suite = EnvelopeSuite.CommittingSigned });

    public override string Name => "envelope";

    public override string Description => "envelope message v1, suites 0x0001 and 0x0002: EnvelopeEncryptor.DecryptAsync, one-shot and streaming (refusal: EnvelopeDecryptionException)";

    public override void Run(byte[] input) => DecryptBothWays(Encryptor, input);

    /// <summary>
    /// The plaintext of <paramref name="input"/> decrypted by <paramref name="reader"/> in one shot
    /// and streaming, or null when both refused it; a crash when only one accepted it or they differ.
    /// </summary>
    internal static byte[]? DecryptBothWays(EnvelopeEncryptor reader, byte[] input)
    {
        byte[]? oneShot = null;
        try
        {
            _ = EnvelopeEncryptor.ReadEncryptionContext(input);
            oneShot = reader.DecryptAsync(input, EnvelopeEncryptor.AnyContext).GetAwaiter().GetResult();
        }
        catch (EnvelopeDecryptionException)
        {
        }

        var output = new MemoryStream();
        try
        {
            reader.DecryptAsync(new MemoryStream(input), output, EnvelopeEncryptor.AnyContext).GetAwaiter().GetResult();
        }
        catch (EnvelopeDecryptionException)
        {
            if (oneShot is not null)
            {
                throw new FuzzContractException("a message decrypted in one shot but not streaming");
            }

            return null;
        }

        if (oneShot is null || !oneShot.AsSpan().SequenceEqual(output.ToArray()))
        {
            throw new FuzzContractException("a message decrypted streaming but not in one shot, or to other bytes");
        }

        return oneShot;
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        foreach (var (size, i) in SeedSizes.Select((s, i) => (s, i)))
        {
            var context = i % 2 == 0 ? null : new Dictionary<string, string> { ["table"] = "orders", ["id"] = i.ToString(System.Globalization.CultureInfo.InvariantCulture) };
            var plaintext = Enumerable.Range(0, size).Select(b => (byte)b).ToArray();
            yield return ($"fixed-key-{size:D3}", Encryptor.EncryptAsync(plaintext, context).GetAwaiter().GetResult());
            yield return ($"signed-{size:D3}", SignedWriter.EncryptAsync(plaintext, context).GetAwaiter().GetResult());
        }

        foreach (var (vector, i) in Vectors.Select((v, i) => (v, i)).Where(p => p.v.Message.Length <= 4096))
        {
            yield return ($"vector-{i:D2}", vector.Message);
        }
    }

    private static List<(string, byte[], WrappedDataKey[], byte[])> LoadVectors(string file)
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "vectors", file)));
        return [.. document.RootElement.GetProperty("vectors").EnumerateArray().Select(v => (
            v.GetProperty("description").GetString()!,
            Convert.FromHexString(v.GetProperty("data_key").GetString()!),
            v.GetProperty("wrapped_keys").EnumerateArray().Select(k => new WrappedDataKey(k.GetProperty("key_name").GetString()!, Convert.FromHexString(k.GetProperty("wrapped").GetString()!))).ToArray(),
            Convert.FromHexString(v.GetProperty("message").GetString()!)))];
    }

    /// <summary>The fixed data key for any wrapped key, except a golden vector's, which gets the vector's data key.</summary>
    internal sealed class SoftwareKeyProvider : IEnvelopeKeyProvider
    {
        public Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
            Task.FromResult(new GeneratedDataKey(FixedDataKey.ToArray(), new WrappedDataKey(keyName, FixedWrapped)));

        public Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
            Task.FromResult(new WrappedDataKey(keyName, FixedWrapped));

        public Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
        {
            if (wrappedKey.Wrapped.Length == 1 && wrappedKey.Wrapped[0] == 0)
            {
                // How a KMS refuses: the encryptor must turn it into its own exception.
                throw new RpcException(new Status(StatusCode.InvalidArgument, "decryption failed"));
            }

            var vector = Vectors.FirstOrDefault(v => v.Wrapped.Any(w => w.KeyName == wrappedKey.KeyName && w.Wrapped.AsSpan().SequenceEqual(wrappedKey.Wrapped)));
            return Task.FromResult(new UnwrappedDataKey((vector.DataKey ?? FixedDataKey).ToArray(), wrappedKey.KeyName));
        }
    }
}
