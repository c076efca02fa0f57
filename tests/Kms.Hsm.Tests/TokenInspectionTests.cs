using System.Text;
using Kms.Testing;

namespace Kms.Hsm.Tests;

/// <summary>The init-token report, and the lock-out behaviour SECURITY.md and the runbook document.</summary>
public sealed class TokenInspectionTests
{
    [Fact]
    public void Inspect_FreshSoftHsmToken_UsableWithEveryProfileMechanism()
    {
        var token = SoftHsm.CreateToken();
        var report = TokenInspection.Inspect(token.Options(devMode: false));

        Assert.Equal(token.Label, report.Label);
        Assert.Equal("SoftHSM project", report.Manufacturer);
        Assert.Equal("softhsm2", report.Profile);
        Assert.True(report.Usable, string.Join(", ", report.MissingMechanisms));
        Assert.Contains("CKM_AES_KEY_WRAP_PAD", report.Mechanisms);
        Assert.False(report.UserPinLocked);
    }

    [Fact]
    public void Inspect_ProfileNeedingAMechanismTheTokenLacks_ReportsItMissing()
    {
        var token = SoftHsm.CreateToken();
        var profile = Path.Combine(Path.GetTempPath(), $"profile-{Guid.NewGuid():N}.json");
        File.WriteAllText(profile, """
            { "name": "needs-camellia", "requiredMechanisms": [ "CKM_AES_KEY_WRAP_PAD", "CKM_CAMELLIA_KEY_GEN" ],
              "checkValueAttribute": true, "allowedMechanismsAttribute": true, "unwrapTemplateAttribute": true }
            """);
        var options = token.Options(devMode: false);
        options.Profile = profile;

        var report = TokenInspection.Inspect(options);

        Assert.False(report.Usable);
        Assert.Equal(["CKM_CAMELLIA_KEY_GEN"], report.MissingMechanisms);
    }

    [Fact]
    public void WrongUserPin_TenTimes_SoftHsmDoesNotLockTheToken()
    {
        // Documented in docs/ceremony.md: SoftHSM has no lock-out; a real HSM usually does
        // (the report's UserPinFinalTry/UserPinLocked flags say where a token stands).
        var token = SoftHsm.CreateToken();
        for (var i = 0; i < 10; i++)
        {
            Assert.Throws<HsmConfigurationException>(() => HsmCeremonySession.Open(token.Options(devMode: false), "wrong"u8));
        }

        var report = TokenInspection.Inspect(token.Options(devMode: false));
        Assert.False(report.UserPinLocked);
        using var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin));
        Assert.Equal(16, session.GenerateRandom(16).Length);
    }
}
