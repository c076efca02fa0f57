using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Ceremony.Tests.Shares;

/// <summary>A small ceremony for tests: a fixed domain key split 3-of-5, cheap Argon2id parameters.</summary>
internal static class Ceremony
{
    public static readonly byte[] DomainKey = Convert.FromHexString("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");

    /// <summary>AES-256 of the zero block under <see cref="DomainKey"/> starts F29000 (openssl enc -aes-256-ecb).</summary>
    public const string DomainKcv = "F29000";

    public const string DomainId = "dk-eu-1";

    public static readonly Argon2idParameters Cheap = new(64, 1, 1);

    public static readonly string[] Custodians = ["alice", "bob", "carol", "dave", "erin"];

    public static string PassphraseOf(string custodian) => $"correct horse battery staple of {custodian}";

    public static FakeTimeProvider Clock { get; } = new(new DateTimeOffset(2026, 11, 30, 3, 12, 45, 123, TimeSpan.Zero));

    public static ShareMetadata Metadata(string custodian, int threshold = 3, int count = 5, string domainId = DomainId, string kcv = DomainKcv) =>
        new(domainId, kcv, custodian, threshold, count);

    public static ShareFile Protect(Share share, ShareMetadata metadata, string? passphrase = null) =>
        ShareFile.Protect(share, metadata, passphrase ?? PassphraseOf(metadata.Custodian), Cheap, KdfPolicy.AllowWeakParametersForTests, Clock);

    /// <summary>Splits <paramref name="key"/> and protects every share for its custodian.</summary>
    public static ShareFile[] Split(byte[]? key = null, int threshold = 3, int count = 5, string domainId = DomainId, string kcv = DomainKcv)
    {
        var shares = Shamir.Split(key ?? DomainKey, threshold, count);
        return shares.Select(s => Protect(s, Metadata(Custodians[s.Index - 1], threshold, count, domainId, kcv))).ToArray();
    }

    public static (ShareFile File, Share Share) Unlock(ShareFile file) => (file, file.Unprotect(PassphraseOf(file.Custodian)));

    public static ShareFile Reparse(byte[] bytes) => ShareFile.Parse(bytes, "test.share", KdfPolicy.AllowWeakParametersForTests);
}
