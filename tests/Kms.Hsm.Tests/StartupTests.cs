using System.Text;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>What the adapter refuses at start-up, each with a message an operator can act on.</summary>
public sealed class StartupTests
{
    [Fact]
    public void Open_NoDomainKeyOutsideDevMode_RefusesPointingAtCeremony()
    {
        var token = SoftHsm.CreateToken();
        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(token.Options(devMode: false), NullLogger.Instance));
        Assert.Contains("ceremony", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Open_DevDomainKeyOutsideDevMode_Refused()
    {
        var token = SoftHsm.CreateToken();
        await (await OpenAsync(token)).DisposeAsync();
        var options = token.Options(devMode: false);
        options.DomainKeyId = HsmOptions.DevDomainKeyId;

        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(options, NullLogger.Instance));
        Assert.Contains("dev-mode", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Open_SecondDevStart_FindsSameDomainKey()
    {
        var token = SoftHsm.CreateToken();
        string first;
        await using (var hsm = await OpenAsync(token))
        {
            Assert.True(hsm.DomainKeyCreated);
            first = hsm.DomainKeyCheckValue;
        }

        await using var again = await OpenAsync(token);
        Assert.False(again.DomainKeyCreated);
        Assert.Equal(first, again.DomainKeyCheckValue);
    }

    [Fact]
    public async Task Open_TwoKeysCarryTheDomainKeyLabel_RefusesToGuess()
    {
        var token = SoftHsm.CreateToken();
        await (await OpenAsync(token)).DisposeAsync();
        RawToken.WithSession(token, (session, factories) =>
            Plant(session, factories, Encoding.UTF8.GetBytes("planted"), weak: false));

        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(token.Options(), NullLogger.Instance));
        Assert.Contains("refusing to guess", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_WeakDomainKeyPlantedBeforeFirstStart_RefusedListingViolations()
    {
        var token = SoftHsm.CreateToken();
        RawToken.WithSession(token, (session, factories) =>
            Plant(session, factories, Encoding.UTF8.GetBytes(HsmOptions.DevDomainKeyId), weak: true));

        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(token.Options(), NullLogger.Instance));
        Assert.Contains("CKA_DECRYPT must be False", e.Message, StringComparison.Ordinal);
        Assert.Contains("CKA_MODIFIABLE must be False", e.Message, StringComparison.Ordinal);
        Assert.Contains("CKA_UNWRAP_TEMPLATE", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Open_DomainKeyWhoseUnwrapTemplateAllowsTokenObjects_RefusedInProduction_ServedInDevMode(bool devMode)
    {
        // A key made before the unwrap template forced private session objects.
        var token = SoftHsm.CreateToken();
        var options = token.Options(devMode);
        if (!devMode)
        {
            options.DomainKeyId = "dk-before-private-unwrap";
        }

        RawToken.WithSession(token, (session, factories) =>
        {
            var a = factories.ObjectAttributeFactory;
            using var generate = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
            List<IObjectAttribute> nested = [a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false)];
            try
            {
                Native.With(
                [
                    a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_VALUE_LEN, 32UL),
                    a.Create(CKA.CKA_TOKEN, true), a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_LABEL, "kms-domain-key"),
                    a.Create(CKA.CKA_ID, Encoding.UTF8.GetBytes(options.EffectiveDomainKeyId)),
                    a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false), a.Create(CKA.CKA_WRAP, true), a.Create(CKA.CKA_UNWRAP, true),
                    a.Create(CKA.CKA_ENCRYPT, false), a.Create(CKA.CKA_DECRYPT, false), a.Create(CKA.CKA_SIGN, false), a.Create(CKA.CKA_VERIFY, false),
                    a.Create(CKA.CKA_DERIVE, false), a.Create(CKA.CKA_COPYABLE, false),
                    a.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { CKM.CKM_AES_KEY_WRAP_PAD }),
                    a.Create(CKA.CKA_UNWRAP_TEMPLATE, nested), a.Create(CKA.CKA_MODIFIABLE, false),
                ], t => session.GenerateKey(generate, t));
            }
            finally
            {
                foreach (var attribute in nested)
                {
                    attribute.Dispose();
                }
            }
        });

        if (devMode)
        {
            await using var hsm = await OpenAsync(token);
            Assert.False(hsm.DomainKeyCreated);
        }
        else
        {
            var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(options, NullLogger.Instance));
            Assert.Contains("CKA_PRIVATE=true and CKA_TOKEN=false", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Open_ProfileWantsWrapWithTrusted_DomainKeyNotTrusted_RefusedNamingCkaTrusted()
    {
        var shipped = File.ReadAllText(RepositoryPaths.Of("hsm-config", "profiles", "softhsm2.json"));
        var profile = Path.Combine(Path.GetTempPath(), $"profile-{Guid.NewGuid():N}.json");
        File.WriteAllText(profile, shipped.Replace("\"wrapWithTrusted\": false", "\"wrapWithTrusted\": true", StringComparison.Ordinal));
        try
        {
            var options = SoftHsm.CreateToken().Options();
            options.Profile = profile;

            var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(options, NullLogger.Instance));

            Assert.Contains("CKA_TRUSTED", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(profile);
        }
    }

    [Fact]
    public void Open_WrongPin_RefusedWithoutRetry()
    {
        var token = SoftHsm.CreateToken();
        var options = token.Options();
        options.PinFile = null;
        options.Pin = "not-the-pin";
        var logger = new ListLogger();
        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(options, logger));
        Assert.Contains("refused the PIN", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("not-the-pin", e.ToString(), StringComparison.Ordinal);

        // At the open the exception is the refusal, and whoever opened says it (the server's start
        // refusal line, the CLI's error): not logged as well, which put event 2006 before that line
        // (4d1efbd). A recovery's login while serving is logged (2006): nothing else says it.
        Assert.DoesNotContain(logger.Messages, m => m.Contains("refused the PIN", StringComparison.Ordinal));
        Assert.DoesNotContain(logger.Messages, m => m.Contains("not-the-pin", StringComparison.Ordinal));
    }

    [Fact]
    public void Open_UnknownTokenLabel_NamesTheLabel()
    {
        var options = SoftHsm.CreateToken().Options();
        options.TokenLabel = "no-such-token";
        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(options, NullLogger.Instance));
        Assert.Contains("no-such-token", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_ProfileNeedsMechanismTokenLacks_Refused()
    {
        var profile = Path.Combine(Path.GetTempPath(), $"profile-{Guid.NewGuid():N}.json");
        File.WriteAllText(profile, """
            { "name": "needs-skipjack", "requiredMechanisms": ["CKM_AES_GCM", "CKM_SKIPJACK_WRAP"], "checkValueAttribute": true,
              "allowedMechanismsAttribute": true, "unwrapTemplateAttribute": true, "decryptionFailureReturnValues": ["CKR_GENERAL_ERROR"] }
            """);
        var options = SoftHsm.CreateToken().Options();
        options.Profile = profile;
        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(options, NullLogger.Instance));
        Assert.Contains("CKM_SKIPJACK_WRAP", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_MissingModule_ClearError()
    {
        var options = SoftHsm.CreateToken().Options();
        options.ModulePath = "/nonexistent/libpkcs11.so";
        var e = Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(options, NullLogger.Instance));
        Assert.Contains("/nonexistent/libpkcs11.so", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EmbeddedSoftHsmProfile_Loads()
    {
        var profile = HsmProfile.Load("softhsm2");
        Assert.Equal("softhsm2", profile.Name);
        Assert.False(profile.WrapWithTrusted);
        Assert.Contains("CKR_GENERAL_ERROR", profile.DecryptionFailureReturnValues);
    }

    private static Task<Pkcs11Hsm> OpenAsync(TestToken token) => Task.Run(() => Pkcs11Hsm.Open(token.Options(), NullLogger.Instance));

    // A key labelled like the domain key: with the right flags but no safeguards when weak.
    private static void Plant(ISession session, Pkcs11InteropFactories factories, byte[] id, bool weak)
    {
        var a = factories.ObjectAttributeFactory;
        using var generate = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
        Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_VALUE_LEN, 32UL),
            a.Create(CKA.CKA_TOKEN, true), a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_LABEL, "kms-domain-key"), a.Create(CKA.CKA_ID, id),
            a.Create(CKA.CKA_WRAP, true), a.Create(CKA.CKA_UNWRAP, true), a.Create(CKA.CKA_DECRYPT, weak),
            a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false),
        ], t => session.GenerateKey(generate, t));
    }
}
