using System.Diagnostics;
using System.Security.Cryptography;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;

namespace Kms.Hsm.Tests;

/// <summary>
/// A recycle is planned maintenance: it must not turn one long key generation into an outage of
/// every other call. While a long operation (RSA generation, bounded by
/// <see cref="HsmOptions.KeyGenerationTimeout"/>) holds a session, the recycle waits before it
/// retires the generation, and ordinary calls are served on it meanwhile; a new long operation
/// does not start on a generation whose recycle is pending (it would hold it off again): it waits
/// for the recycle and runs on the next generation.
/// </summary>
/// <remarks>
/// The key generation is made long by the fault injector: its native phase is held under the
/// module gate (as a slow <c>C_GenerateKeyPair</c> would be) until the test releases it. Real-time
/// waits are hang guards only.
/// </remarks>
[Collection(ReinitializationGroup.Name)]
public sealed class RecycleDeferralTests
{
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task RecycleStartedDuringALongKeyGeneration_OrdinaryCallsServedMeanwhile_RecycleAfterIt_GenerationSucceeds()
    {
        // Hsm:CallTimeout of 3 s: on the old source each ordinary call waited that long for the
        // recycle, which waited for the key generation, and was answered UNAVAILABLE.
        var options = SoftHsm.CreateToken().Options(sessions: 3);
        options.RecycleAfterDestroyedObjects = 0; // only this test starts the recycle
        options.CallTimeout = TimeSpan.FromSeconds(3);
        options.KeyGenerationTimeout = TimeSpan.FromMinutes(2);
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBefore = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [4, 5, 6], default);
        var moduleGeneration = hsm.Module.Generation;
        var checkValue = hsm.DomainKeyCheckValue;

        hsm.Faults.HangOnly("generate key pair");
        Task<GeneratedKeyMaterial> generation;
        try
        {
            generation = Task.Run(async () => await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default));
            await UntilAsync(() => hsm.Faults.HungCalls == 1 || generation.IsCompleted, "the key generation did not reach its native phase");
            Assert.Equal(1, hsm.Faults.HungCalls);

            Assert.True(hsm.TryStartRecycle());
            await UntilAsync(() => hsm.Retiring || Deferred(logger) > 0, "the recycle neither retired the generation nor deferred");

            // Ordinary calls, one after another, while the generation is held: each is served.
            for (var i = 0; i < 3; i++)
            {
                var iv = RandomNumberGenerator.GetBytes(12);
                var plaintext = RandomNumberGenerator.GetBytes(16 + i);
                var sealedNow = await hsm.EncryptAesGcmAsync(key, iv, [7], plaintext, default);
                Assert.Equal(plaintext, await hsm.DecryptAesGcmAsync(key, iv, [7], sealedNow, default));
                var dataKey = await hsm.GenerateDataKeyAsync(key, 32, [8], default);
                Assert.Equal(dataKey.DataKey, await hsm.DecryptAesGcmAsync(key, dataKey.Iv, [8], dataKey.CiphertextAndTag, default));
                Assert.Equal([4, 5, 6], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBefore, default));
            }

            // ... on the generation the recycle has not retired yet.
            Assert.Equal(1, hsm.Faults.HungCalls);
            Assert.False(generation.IsCompleted);
            Assert.False(hsm.Retiring);
            Assert.Equal(0, hsm.Recycles);
            Assert.Equal(moduleGeneration, hsm.Module.Generation);
            Assert.Equal(1, Deferred(logger));
        }
        finally
        {
            hsm.Faults.Clear(); // also when an assertion failed: disposing waits for the held call
        }

        // The generation ends, and the recycle happens after it.
        var material = await generation.WaitAsync(HangGuard);
        await UntilAsync(() => hsm.Recycles == 1 && !hsm.Recycling, "the recycle did not happen once the key generation ended");
        Assert.Equal(1, hsm.Recycles);
        Assert.True(hsm.Module.Generation > moduleGeneration);
        Assert.Equal(checkValue, hsm.DomainKeyCheckValue);
        Assert.Equal(1, logger.Messages.Count(m => m.Contains("re-initialised after", StringComparison.Ordinal)));
        Assert.Equal([4, 5, 6], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBefore, default));

        // The key generated on the old generation works on the new one; .NET verifies its signature.
        await AssertSignsVerifiedByDotNetAsync(hsm, material);
        Assert.DoesNotContain(logger.Messages, m => m.Contains("lost", StringComparison.Ordinal) || m.Contains("failed", StringComparison.Ordinal) || m.Contains("did not return", StringComparison.Ordinal));
    }

    [Fact]
    public async Task KeyGenerationStartedWhileARecycleIsPending_WaitsForIt_SucceedsOnTheNewGeneration()
    {
        // Hsm:CallTimeout of 30 s is a hang guard here: the second generation waits for the recycle
        // within it, and nothing in this test comes near it.
        var options = SoftHsm.CreateToken().Options(sessions: 3);
        options.RecycleAfterDestroyedObjects = 0;
        options.CallTimeout = TimeSpan.FromSeconds(30);
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var moduleGeneration = hsm.Module.Generation;

        hsm.Faults.HangOnly("generate key pair");
        Task<GeneratedKeyMaterial> first;
        Task<(GeneratedKeyMaterial Material, int Recycles, long ModuleGeneration)> second;
        try
        {
            first = Task.Run(async () => await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default));
            await UntilAsync(() => hsm.Faults.HungCalls == 1 || first.IsCompleted, "the first key generation did not reach its native phase");
            Assert.True(hsm.TryStartRecycle());
            await UntilAsync(() => hsm.Retiring || Deferred(logger) > 0, "the recycle neither retired the generation nor deferred");

            // What the second generation saw when it was answered: the recycles done and the module generation then.
            second = Task.Run(async () =>
            {
                var material = await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default);
                return (material, hsm.Recycles, hsm.Module.Generation);
            });
            await UntilAsync(
                () => hsm.LongOperationsWaitingForRecycle == 1 || hsm.Faults.HungCalls > 1 || second.IsCompleted,
                "the second key generation neither waited for the recycle nor started");

            // It waits for the recycle: it did not start on the old generation (where it would hold
            // the recycle off again), and is not answered.
            Assert.False(second.IsCompleted, $"the second key generation was answered while the recycle was pending: {second.Exception?.InnerException?.Message ?? "served"}");
            Assert.Equal(1, hsm.Faults.HungCalls);
            Assert.Equal(1, hsm.LongOperationsWaitingForRecycle);
            Assert.Equal(0, hsm.Recycles);
        }
        finally
        {
            hsm.Faults.Clear();
        }

        _ = await first.WaitAsync(HangGuard);
        var (secondMaterial, recyclesThen, moduleGenerationThen) = await second.WaitAsync(HangGuard);
        Assert.Equal(1, recyclesThen); // it ran after the recycle ...
        Assert.True(moduleGenerationThen > moduleGeneration); // ... on the re-initialised module
        Assert.Equal(0, hsm.LongOperationsWaitingForRecycle);
        await UntilAsync(() => !hsm.Recycling, "the recycle did not end");
        Assert.Equal(1, hsm.Recycles);

        await AssertSignsVerifiedByDotNetAsync(hsm, secondMaterial);
    }

    [Fact]
    public async Task DeviceLostWhileTheRecycleWaits_RecycleDropped_TheRecoveryIsNotDeferred()
    {
        // A fault on another call while the RSA generation still runs: the recycle gives way to the
        // recovery at once, not once the generation ends.
        var options = SoftHsm.CreateToken().Options(sessions: 3);
        options.RecycleAfterDestroyedObjects = 0;
        options.CallTimeout = TimeSpan.FromSeconds(30);
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBefore = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [2], default);

        hsm.Faults.HangOnly("generate key pair");
        Task<GeneratedKeyMaterial> generation;
        try
        {
            generation = Task.Run(async () => await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default));
            await UntilAsync(() => hsm.Faults.HungCalls == 1 || generation.IsCompleted, "the key generation did not reach its native phase");
            Assert.True(hsm.TryStartRecycle());
            await UntilAsync(() => hsm.DeferredRecycles == 1, "the recycle did not defer");

            hsm.Faults.FailAlso("generate random", Net.Pkcs11Interop.Common.CKR.CKR_DEVICE_REMOVED);
            var e = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(async () => await hsm.GenerateRandomAsync(4, default));
            Assert.Equal(Kms.Core.Errors.KmsErrorCode.Unavailable, e.Code);

            // The generation is still held, and the recycle no longer waits for it.
            await UntilAsync(() => !hsm.Recycling, "the recycle waited for the long operation after the fault");
            Assert.Equal(1, hsm.Faults.HungCalls);
            Assert.False(generation.IsCompleted);
            Assert.Equal(0, hsm.Recycles);
            Assert.Single(logger.Messages, m => m.Contains("re-initialisation dropped", StringComparison.Ordinal));
        }
        finally
        {
            hsm.Faults.Clear();
        }

        _ = await generation.WaitAsync(HangGuard); // it had begun: it finishes on its generation
        Assert.Equal([2], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBefore, default).AsTask().WaitAsync(HangGuard));
        Assert.Contains(logger.Messages, m => m.Contains("HSM recovered", StringComparison.Ordinal));
    }

    [Fact]
    public async Task LongOperationAbandonedWhileTheRecycleWaits_RecycleDropped_TheRecoveryIsNotDeferred()
    {
        // The held RSA generation is abandoned at Hsm:KeyGenerationTimeout (2 s): its generation is
        // faulted, which is the recovery's business. The recycle waiting for it gives way at once
        // rather than waiting for the abandoned call to come back.
        var options = SoftHsm.CreateToken().Options(sessions: 3);
        options.RecycleAfterDestroyedObjects = 0;
        options.CallTimeout = TimeSpan.FromSeconds(30);
        options.KeyGenerationTimeout = TimeSpan.FromSeconds(2);
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBefore = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [1], default);

        hsm.Faults.HangOnly("generate key pair");
        try
        {
            var generation = Task.Run(async () => await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default));
            await UntilAsync(() => hsm.Faults.HungCalls == 1 || generation.IsCompleted, "the key generation did not reach its native phase");
            Assert.True(hsm.TryStartRecycle());
            await UntilAsync(() => hsm.DeferredRecycles == 1, "the recycle did not defer");

            var e = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(async () => await generation.WaitAsync(HangGuard));
            Assert.Equal("the HSM did not answer in time; retry shortly", e.Message);

            // Still hung, the abandoned call holds its session: the recycle did not wait for it.
            await UntilAsync(() => !hsm.Recycling, "the recycle did not give way to the fault");
            Assert.Equal(1, hsm.Faults.HungCalls);
            Assert.Equal(0, hsm.Recycles);
            Assert.Single(logger.Messages, m => m.Contains("re-initialisation dropped", StringComparison.Ordinal));
        }
        finally
        {
            hsm.Faults.Clear();
        }

        // The next call recovers and is served.
        Assert.Equal([1], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBefore, default).AsTask().WaitAsync(HangGuard));
        Assert.Contains(logger.Messages, m => m.Contains("HSM recovered", StringComparison.Ordinal));
    }

    private static int Deferred(ListLogger logger) => logger.Messages.Count(m => m.Contains("re-initialisation deferred", StringComparison.Ordinal));

    private static async Task UntilAsync(Func<bool> condition, string what)
    {
        var guard = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(guard.Elapsed < HangGuard, $"hang guard: {what} in {HangGuard}");
            await Task.Delay(10);
        }
    }

    // The RSA key the HSM generated signs (PSS over SHA-256), and .NET verifies it with its public key.
    private static async Task AssertSignsVerifiedByDotNetAsync(Pkcs11Hsm hsm, GeneratedKeyMaterial material)
    {
        var digest = SHA256.HashData([1, 2, 3]);
        var signature = await hsm.SignAsync(new KeyMaterialRef(KeyVersionId.NewId(), material.Wrapped), KeyAlgorithm.RsaSignPss2048Sha256, digest, default);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(material.SubjectPublicKeyInfo, out _);
        Assert.True(rsa.VerifyHash(digest, signature, HashAlgorithmName.SHA256, RSASignaturePadding.Pss));
    }
}
