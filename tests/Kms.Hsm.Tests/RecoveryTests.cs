using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Hsm.Tests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ReinitializationGroup
{
    // Re-initialising the module affects every user of it in this process: run alone. So must
    // anything else that holds or takes the module gate beyond one native call (GateHookTests):
    // an injected hang holds a read of it until cleared, and an exclusive hold (the module's
    // C_Finalize and C_Initialize, CloseAllSessionsForFaultInjection) waits for every read in
    // flight while every new one queues behind it. The two from parallel tests deadlock the
    // process whenever the test that hangs waits for a second call to reach its hang.
    public const string Name = "HSM re-initialisation";
}

/// <summary>Lost sessions and a lost library: UNAVAILABLE, then served again without a restart.</summary>
[Collection(ReinitializationGroup.Name)]
public sealed class RecoveryTests
{
    [Fact]
    public async Task SessionsClosedBehindOurBack_UnavailableThenRecoversWithNewGeneration()
    {
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(), NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [4, 2], default);
        var generation = hsm.Generation;

        hsm.CloseAllSessionsForFaultInjection();

        var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        Assert.Equal([4, 2], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        Assert.True(hsm.Generation > generation);
        Assert.Equal(1, hsm.Cache.Count);
    }

    [Fact]
    public async Task DomainKeyReplacedByOneWithTheSameCheckValue_RecoveryRefusesIt_TheRealOneServesAgain()
    {
        // Someone with the PIN replaces the domain key by one they know, whose 3-byte check value
        // they made equal by brute force (2^24 AES operations: this pair took 1 s to find).
        // If recovery accepted it, every key created afterwards would be wrapped under it.
        var (real, forged) = (ForgedCheckValue.Real, ForgedCheckValue.Forged);
        Assert.Equal(HsmCeremonySession.AesCheckValue(real), HsmCeremonySession.AesCheckValue(forged));
        var token = SoftHsm.CreateToken();
        var options = token.Options(devMode: false);
        ReplaceDomainKey(token, real);
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));

        ReplaceDomainKey(token, forged);
        hsm.CloseAllSessionsForFaultInjection();
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var refused = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateAes256KeyAsync(default));
            Assert.Equal(KmsErrorCode.Unavailable, refused.Code);
        }

        ReplaceDomainKey(token, real);
        Assert.Equal([7], await hsm.DecryptAesGcmAsync(key, new byte[12], [], await hsm.EncryptAesGcmAsync(key, new byte[12], [], [7], default), default));
    }

    private static void ReplaceDomainKey(TestToken token, byte[] value)
    {
        var options = token.Options(devMode: false);
        using var ceremony = HsmCeremonySession.Open(options, System.Text.Encoding.UTF8.GetBytes(token.UserPin));
        ceremony.DestroyDomainKey(options.DomainKeyLabel, options.DomainKeyId!);
        ceremony.ImportDomainKey(value, options.DomainKeyLabel, options.DomainKeyId!);
    }

    [Fact]
    public async Task LibraryFinalizedBehindOurBack_UnavailableThenReinitialisesAndServes()
    {
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(), NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [1], default);
        var moduleGeneration = hsm.Module.Generation;
        var checkValue = hsm.DomainKeyCheckValue;

        hsm.Module.FinalizeForFaultInjection();

        var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(8, default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        Assert.Equal([1], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        Assert.True(hsm.Module.Generation > moduleGeneration);
        Assert.Equal(checkValue, hsm.DomainKeyCheckValue);
    }

    [Fact]
    public async Task LoggedOutBehindOurBack_UnavailableThenLogsInAgainAndServes()
    {
        // The sessions stay open but the login is gone (another user of the module in this
        // process called C_Logout; an HSM may log out on its own): CKR_USER_NOT_LOGGED_IN is a
        // lost device like a closed session, so the adapter recovers and presents the PIN again,
        // rather than failing every call that needs the login (INTERNAL) until a restart.
        var token = SoftHsm.CreateToken();
        await using var hsm = Pkcs11Hsm.Open(token.Options(), NullLogger.Instance);
        var generation = hsm.Generation;

        RawToken.WithSession(token, (session, _) => session.Logout());

        var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateAes256KeyAsync(default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        Assert.Equal([5], await hsm.DecryptAesGcmAsync(key, new byte[12], [], await hsm.EncryptAesGcmAsync(key, new byte[12], [], [5], default), default));
        Assert.True(hsm.Generation > generation);
    }

    [Fact]
    public async Task PinChangedWhileDown_RecoveryRefusedOnce_NeverRetriesLogin()
    {
        var token = SoftHsm.CreateToken();
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(token.Options(), logger);
        RawToken.WithSession(token, (session, _) => session.SetPin(token.UserPin, token.UserPin + "-changed"));

        hsm.CloseAllSessionsForFaultInjection();
        for (var i = 0; i < 4; i++)
        {
            var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(1, default));
            Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        }

        Assert.Single(logger.Messages, m => m.Contains("refused the PIN", StringComparison.Ordinal));
    }

    [Fact]
    public async Task PinChangedWhileDown_WithResidencyRegions_ThePinIsPresentedOnceForTheWholeToken()
    {
        // Each region's adapter logs in to the same token with the same PIN: a real HSM may lock
        // the token after three refusals, so one refusal must stop them all.
        var (token, options) = TokenWithRegions("eu", "us");
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        RawToken.WithSession(token, (session, _) => session.SetPin(token.UserPin, token.UserPin + "-changed"));

        hsm.CloseAllSessionsForFaultInjection();
        foreach (var adapter in new IHsm[] { hsm, hsm.ForRegion("eu"), hsm.ForRegion("us"), hsm })
        {
            for (var i = 0; i < 2; i++)
            {
                var e = await Assert.ThrowsAsync<KmsException>(async () => await adapter.GenerateRandomAsync(1, default));
                Assert.Equal(KmsErrorCode.Unavailable, e.Code);
            }
        }

        Assert.Single(logger.Messages, m => m.Contains("refused the PIN", StringComparison.Ordinal));
    }

    [Fact]
    public async Task PinChangedWhileDown_RegionsRecoveringAtOnce_ThePinIsStillPresentedOnce()
    {
        // The flag alone was checked before a recovery opened its sessions: recoveries of the
        // regions' adapters running together each passed it and each presented the changed PIN.
        var (token, options) = TokenWithRegions("eu", "us");
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var adapters = new[] { hsm, (Pkcs11Hsm)hsm.ForRegion("eu"), (Pkcs11Hsm)hsm.ForRegion("us") };
        RawToken.WithSession(token, (session, _) => session.SetPin(token.UserPin, token.UserPin + "-changed"));
        hsm.CloseAllSessionsForFaultInjection();
        foreach (var adapter in adapters)
        {
            await Assert.ThrowsAsync<KmsException>(async () => await adapter.GenerateRandomAsync(1, default));
            adapter.Faults.Hang();
        }

        // Each adapter's recovery passes the flag and waits just before it opens its sessions.
        var calls = adapters.Select(adapter => Task.Run(async () => await adapter.GenerateRandomAsync(1, default))).ToList();
        while (adapters.Any(a => a.Faults.HungCalls == 0))
        {
            await Task.Delay(10);
        }

        foreach (var adapter in adapters)
        {
            adapter.Faults.Clear();
        }

        foreach (var call in calls)
        {
            Assert.Equal(KmsErrorCode.Unavailable, (await Assert.ThrowsAsync<KmsException>(() => call)).Code);
        }

        Assert.Single(logger.Messages, m => m.Contains("refused the PIN", StringComparison.Ordinal));
    }

    // A token holding the deployment's domain key and one per residency region, and options naming them.
    private static (TestToken Token, HsmOptions Options) TokenWithRegions(params string[] regions)
    {
        var token = SoftHsm.CreateToken();
        var options = token.Options();
        using var ceremony = HsmCeremonySession.Open(token.Options(devMode: false), System.Text.Encoding.UTF8.GetBytes(token.UserPin));
        foreach (var region in regions)
        {
            ceremony.ImportDomainKey(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32), $"kms-domain-key-{region}", $"dk-{region}");
            options.Regions[region] = new HsmRegionOptions { DomainKeyId = $"dk-{region}" };
        }

        return (token, options);
    }

    [Fact]
    public async Task AfterDispose_UnavailableNotInternal()
    {
        var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(), NullLogger.Instance);
        await hsm.DisposeAsync();
        var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(1, default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
    }

    [Fact]
    public async Task ConcurrentCallsDuringFault_AllUnavailableOrCorrect_NeverCrash()
    {
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(sessions: 4), NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        using var stop = new CancellationTokenSource();
        var failures = 0;
        var load = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [9], default);
                    Assert.Equal([9], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
                }
                catch (KmsException e) when (e.Code == KmsErrorCode.Unavailable)
                {
                    Interlocked.Increment(ref failures);
                }
            }
        });

        await Task.Delay(100);
        hsm.CloseAllSessionsForFaultInjection();
        await Task.Delay(300);
        await stop.CancelAsync();
        await load;

        Assert.Equal([9], await hsm.DecryptAesGcmAsync(key, new byte[12], [], await hsm.EncryptAesGcmAsync(key, new byte[12], [], [9], default), default));
    }
}
