using Kms.Ceremony.Shares;

namespace Kms.Ceremony.Tests;

public sealed class ArchitectureTests
{
    [Fact]
    public void KmsCeremony_ReferencesOnlyTheRuntimeAndBouncyCastle()
    {
        // Offline and HSM-free: no PKCS#11, no transport, no storage; the caller brings the KCV.
        var references = typeof(ShareFile).Assembly.GetReferencedAssemblies().Select(a => a.Name!).ToList();

        Assert.All(references, r => Assert.True(
            r.StartsWith("System", StringComparison.Ordinal) || r == "netstandard" || r == "BouncyCastle.Cryptography",
            $"Kms.Ceremony references {r}"));
    }
}
