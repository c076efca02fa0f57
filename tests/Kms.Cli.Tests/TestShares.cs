using System.Security.Cryptography;
using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;

namespace Kms.Cli.Tests;

/// <summary>
/// Share files made without a ceremony, for commands that must read them (and refuse them) before
/// any HSM step: a random key split M of N under the insecure test KDF (a restore reads them with
/// <c>--insecure-test-kdf</c>), each custodian's passphrase <see cref="PassphraseOf"/>. The check
/// value is whatever the test names, not the key's: nothing here gets as far as rebuilding it.
/// </summary>
internal static class TestShares
{
    public static string PassphraseOf(string custodian) => $"correct horse battery staple of {custodian}";

    /// <summary>Writes <c>share-INDEX-NAME.json</c> for each custodian into <paramref name="directory"/>; their paths, in custodian order.</summary>
    public static string[] Write(string directory, string domainId, string kcv, int threshold, params string[] custodians)
    {
        Directory.CreateDirectory(directory);
        var key = RandomNumberGenerator.GetBytes(32);
        var shares = Shamir.Split(key, threshold, custodians.Length);
        try
        {
            return [.. shares.Select((share, i) =>
            {
                var file = ShareFile.Protect(share, new ShareMetadata(domainId, kcv, custodians[i], threshold, custodians.Length),
                    PassphraseOf(custodians[i]), new Argon2idParameters(64, 1, 1), KdfPolicy.AllowWeakParametersForTests);
                var path = Path.Combine(directory, $"share-{share.Index}-{custodians[i]}.json");
                File.WriteAllBytes(path, file.ToBytes());
                return path;
            })];
        }
        finally
        {
            foreach (var share in shares)
            {
                share.Dispose();
            }
        }
    }
}
