using System.Security.Cryptography;
using System.Text;
using Kms.Ceremony;
using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;

namespace Kms.Fuzz;

/// <summary>
/// Share files (docs/share-format.md): <see cref="ShareFile.Parse"/> on the input as it is, and on
/// the input with a correct checksum line appended — the checksum would otherwise stop every
/// mutation at the first check. Contract: refusal is a <see cref="CeremonyException"/>; a file
/// that parses reads back the same after it is written.
/// </summary>
internal sealed class ShareTarget : FuzzTarget
{
    private static readonly Argon2idParameters Cheap = new(64, 1, 1);

    public override string Name => "share";

    public override string Description => "share file kms-share-v1: ShareFile.Parse, raw and with its checksum line fixed (refusal: CeremonyException)";

    public override void Run(byte[] input)
    {
        Parse(input);
        var checksum = Convert.ToHexStringLower(SHA256.HashData(input));
        Parse([.. input, .. Encoding.ASCII.GetBytes($"  \"checksum\": \"{checksum}\"\n}}\n")]);
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        // The body of each file, without its checksum line: Run appends it.
        var shares = Shamir.Split(Convert.FromHexString("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"), 2, 3);
        var custodians = new[] { "alice", "Zoë Émile", "bob" };
        foreach (var share in shares)
        {
            var file = ShareFile.Protect(share, new ShareMetadata("dk-fuzz-1", "F29000", custodians[share.Index - 1], 2, 3), "correct horse battery staple of fuzz", Cheap, KdfPolicy.AllowWeakParametersForTests);
            var bytes = file.ToBytes();
            var body = bytes[..bytes.AsSpan().LastIndexOf("  \"checksum\""u8)];
            yield return ($"share-{share.Index}", body);
            share.Dispose();
        }
    }

    private static void Parse(byte[] content)
    {
        ShareFile file;
        try
        {
            file = ShareFile.Parse(content, "fuzz.share", KdfPolicy.AllowWeakParametersForTests);
        }
        catch (CeremonyException)
        {
            return;
        }

        // Whitespace and escapes may differ from what kms writes; the fields may not.
        var again = ShareFile.Parse(file.ToBytes(), "fuzz.share", KdfPolicy.AllowWeakParametersForTests);
        if (again.Fingerprint != file.Fingerprint || again.ToString() != file.ToString())
        {
            throw new FuzzContractException("a share file that parsed does not read back the same after writing");
        }
    }
}
