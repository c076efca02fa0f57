using System.Text;
using CsCheck;
using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Tests.Properties;

/// <summary>A share file written and read back (docs/share-format.md) gives the same fields and, with the passphrase, the same share.</summary>
public sealed class ShareFilePropertyTests
{
    // Format characters (U+202E, ...) are refused in a new custodian name (ShareFileTests).
    private static readonly string[] Pieces = ["a", "Z", " ", "é", "e\u0301", "😀", "-", "\"", "\\", "\u0645"];
    private static readonly Gen<string> Custodian = Gen.Int[0, Pieces.Length - 1].Array[1, 6]
        .Select(ix => string.Concat(ix.Select(i => Pieces[i])))
        .Where(c => !char.IsWhiteSpace(c[0]) && !char.IsWhiteSpace(c[^1]));

    private static readonly Gen<string> DomainId = Gen.Char["!az09-_.~"].Array[1, 20].Select(c => new string(c));

    [Fact]
    public void ParseOfToBytes_AnyShareAndMetadata_SameFieldsAndShare()
    {
        var files =
            from value in Gen.Byte.Array[1, Shamir.MaxSecretLength]
            from threshold in Gen.Int[Shamir.MinThreshold, 255]
            from count in Gen.Int[threshold, 255]
            from index in Gen.Int[1, count]
            from custodian in Custodian
            from domainId in DomainId
            from kcv in Gen.Byte.Array[3]
            select (value, threshold, count, index, custodian, domainId, kcv);

        files.Sample(f =>
        {
            using var share = new Share(f.index, f.value);
            var metadata = new ShareMetadata(f.domainId, Convert.ToHexString(f.kcv).ToLowerInvariant(), f.custodian, f.threshold, f.count);
            var file = Tests.Shares.Ceremony.Protect(share, metadata, "correct horse battery staple");

            var read = Tests.Shares.Ceremony.Reparse(file.ToBytes());

            Assert.Equal(f.custodian.Normalize(NormalizationForm.FormC), read.Custodian);
            Assert.Equal((f.domainId, Convert.ToHexString(f.kcv), f.index, f.threshold, f.count, f.value.Length), (read.DomainId, read.DomainKcv, read.Index, read.Threshold, read.Count, read.ShareLength));
            Assert.Equal(file.Fingerprint, read.Fingerprint);
            Assert.Equal(file.ToBytes(), read.ToBytes());
            using var unlocked = read.Unprotect("correct horse battery staple");
            Assert.Equal(f.value, unlocked.Value.ToArray());
        }, iter: 40);
    }
}
