using System.Security.Cryptography;
using Kms.Client.Envelope;

namespace Kms.Fuzz;

/// <summary>
/// Suite 0x0002 past its signature (docs/envelope-format-signed.md). In the <c>envelope</c> target a
/// mutated signed message fails its signature, so what comes after a verified signature — one-shot
/// frame parsing, the streaming reader's final frame and end — is reached only by unmutated seeds.
/// Here an input is a signed message without its footer: the harness signs it, with the key pair
/// whose public key its context carries (the fixed fuzz key pair of the seeds, or a golden vector's)
/// or else the fuzz key pair, appends the footer, and decrypts. The <c>envelope</c> target, which
/// signs nothing, still checks that the signature refuses mutations.
/// Contract: refusal is an <see cref="EnvelopeDecryptionException"/>; the one-shot and streaming
/// paths agree; a reader with <see cref="EnvelopeOptions.RequireSignedMessages"/> gives the same
/// plaintext for a suite 0x0002 message and refuses every other.
/// </summary>
internal sealed class EnvelopeSignedTarget : FuzzTarget
{
    // The fuzz key pair: fixed, so the seeds written by one process verify in another.
    private const string FuzzScalar = "ffbe5a28e594686379a360b736f0eacda1e344cadcc545cfa45ba12f584752dcc2b0cbae44114e881cc68cd2fc1a16a3";
    private const string FuzzX = "a4419e1d18cf1b90caf23173eec2f0a24af97bfbbf6bf88b3fee2711e8fb6b366ab245b1dabf592c7bae70013fda03e6";
    private const string FuzzY = "71d3203ae916886dc5c31937e85b8485c550ae0c810588e755ecca1a957b3a9d4fdc194460790de2709c635265233462";
    private static readonly int[] SeedSizes = [0, 1, 63, 64, 65, 200];

    private static readonly ECDsa FuzzKey = Import(Convert.FromHexString(FuzzScalar), Convert.FromHexString("04" + FuzzX + FuzzY));

    // Public key (as a context carries it) to key pair: the fuzz key pair and every signed golden vector's.
    private static readonly Dictionary<string, ECDsa> Signers = LoadSigners();

    private static readonly EnvelopeEncryptor Reader = new(new EnvelopeTarget.SoftwareKeyProvider(), new EnvelopeOptions { KeyNames = [EnvelopeTarget.KeyName], TrustAnyKey = true, FrameLength = 64 });

    private static readonly EnvelopeEncryptor SignedOnlyReader = new(new EnvelopeTarget.SoftwareKeyProvider(), new EnvelopeOptions { KeyNames = [EnvelopeTarget.KeyName], TrustAnyKey = true, FrameLength = 64, RequireSignedMessages = true });

    public override string Name => "envelope-signed";

    public override string Description => "envelope suite 0x0002 re-signed after mutation: EnvelopeEncryptor.DecryptAsync one-shot and streaming, and with RequireSignedMessages (refusal: EnvelopeDecryptionException)";

    public override void Run(byte[] input)
    {
        var message = Sign(input);
        var plaintext = EnvelopeTarget.DecryptBothWays(Reader, message);

        byte[]? signedOnly = null;
        try
        {
            signedOnly = SignedOnlyReader.DecryptAsync(message, EnvelopeEncryptor.AnyContext).GetAwaiter().GetResult();
        }
        catch (EnvelopeDecryptionException)
        {
        }

        // Suite bytes at 5..6 (magic, version, suite): a message the plain reader took is taken by
        // the signed-only reader exactly when it is signed, to the same bytes.
        var signed = message.Length >= 7 && message[5] == 0 && message[6] == EnvelopeFormat.Suite2;
        if (signedOnly is not null && (!signed || plaintext is null || !signedOnly.AsSpan().SequenceEqual(plaintext)))
        {
            throw new FuzzContractException("a reader requiring signed messages took one that is not signed, or one the plain reader refused, or gave other bytes");
        }

        if (signedOnly is null && signed && plaintext is not null)
        {
            throw new FuzzContractException("a reader requiring signed messages refused a signed message the plain reader took");
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        var wrapped = new WrappedDataKey(EnvelopeTarget.KeyName, EnvelopeTarget.FixedWrapped);
        foreach (var (size, i) in SeedSizes.Select((s, i) => (s, i)))
        {
            var context = new Dictionary<string, string>(StringComparer.Ordinal) { [EnvelopeFormat.PublicKeyContextKey] = EncodedPublicKey(FuzzKey) };
            if (i % 2 == 1)
            {
                context["table"] = "orders";
                context["id"] = i.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }

            var plaintext = Enumerable.Range(0, size).Select(b => (byte)b).ToArray();
            using var signature = EnvelopeSignature.ForWriting(Import(FuzzKey.ExportParameters(includePrivateParameters: true)));
            var message = EnvelopeMessage.Seal(EnvelopeTarget.FixedDataKey.ToArray(), Enumerable.Repeat((byte)i, EnvelopeFormat.MessageIdLength).ToArray(), EnvelopeContext.Encode(context), [wrapped], 64, plaintext, [], signature);
            yield return ($"fuzz-key-{size:D3}", message[..^EnvelopeFormat.SignatureLength]);
        }

        // The signed golden vectors, valid and not, without their last 96 bytes (a valid one's footer).
        foreach (var (vector, i) in EnvelopeTarget.Vectors.Select((v, i) => (v, i)).Where(p => p.v.Message.Length is > EnvelopeFormat.SignatureLength and <= 4096 && IsSigned(p.v.Message)))
        {
            yield return ($"vector-{i:D2}", vector.Message[..^EnvelopeFormat.SignatureLength]);
        }
    }

    /// <summary><paramref name="body"/> and its footer: signed by the key pair its context names if known, else by the fuzz key pair.</summary>
    private static byte[] Sign(byte[] body)
    {
        var signer = FuzzKey;
        try
        {
            var headerLength = EnvelopeHeader.Measure(body);
            if (headerLength <= body.Length
                && EnvelopeHeader.Parse(body.AsSpan(0, headerLength)).Context.TryGetValue(EnvelopeFormat.PublicKeyContextKey, out var publicKey)
                && Signers.TryGetValue(publicKey, out var known))
            {
                signer = known;
            }
        }
        catch (EnvelopeDecryptionException)
        {
            // A header the reader refuses too: signed by the fuzz key pair, for the reader to refuse.
        }

        var message = new byte[body.Length + EnvelopeFormat.SignatureLength];
        body.CopyTo(message, 0);
        var digest = SHA384.HashData(body);
        if (!signer.TrySignHash(digest, message.AsSpan(body.Length), DSASignatureFormat.IeeeP1363FixedFieldConcatenation, out var written) || written != EnvelopeFormat.SignatureLength)
        {
            throw new InvalidOperationException("the P-384 signature did not fit its footer");
        }

        return message;
    }

    private static bool IsSigned(byte[] message) => message.Length >= 7 && message[5] == 0 && message[6] == EnvelopeFormat.Suite2;

    private static Dictionary<string, ECDsa> LoadSigners()
    {
        var signers = new Dictionary<string, ECDsa>(StringComparer.Ordinal) { [EncodedPublicKey(FuzzKey)] = FuzzKey };
        using var document = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "vectors", "envelope-signed.json")));
        foreach (var vector in document.RootElement.GetProperty("vectors").EnumerateArray())
        {
            // A vector whose public key is no P-384 point in the one encoding (compressed, x + p) has
            // no key pair to sign with: its messages are signed by the fuzz key pair and refused.
            var publicKey = vector.GetProperty("public_key").GetString() ?? "";
            var point = Convert.FromBase64String(publicKey);
            if (point.Length != 97 || point[0] != 0x04 || signers.ContainsKey(publicKey))
            {
                continue;
            }

            try
            {
                signers[publicKey] = Import(Convert.FromHexString(vector.GetProperty("private_key").GetString()!), point);
            }
            catch (CryptographicException)
            {
            }
        }

        return signers;
    }

    private static string EncodedPublicKey(ECDsa key)
    {
        var q = key.ExportParameters(includePrivateParameters: false).Q;
        return Convert.ToBase64String([0x04, .. q.X!, .. q.Y!]);
    }

    private static ECDsa Import(byte[] scalar, byte[] point) => Import(new ECParameters
    {
        Curve = ECCurve.NamedCurves.nistP384,
        D = scalar,
        Q = new ECPoint { X = point[1..49], Y = point[49..97] },
    });

    private static ECDsa Import(ECParameters parameters)
    {
        var key = ECDsa.Create();
        key.ImportParameters(parameters);
        return key;
    }
}
