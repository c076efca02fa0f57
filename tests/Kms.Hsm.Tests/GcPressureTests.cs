using System.Security.Cryptography;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// Pkcs11Interop frees attribute and mechanism memory in finalizers: anything passed to a
/// native call must stay reachable until the call returns. Collections forced in a loop
/// while every call unwraps (cache of one, keys in rotation) expose a template freed early
/// (corrupted attributes: CKR_ATTRIBUTE_VALUE_INVALID, CKR_TEMPLATE_INCONSISTENT, or a key
/// unwrapped with the wrong usage flags).
/// </summary>
public sealed class GcPressureTests
{
    [Fact]
    public async Task UnwrapAndGcmUnderForcedCollections_EveryCallSucceeds()
    {
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(sessions: 2, cacheCapacity: 1), NullLogger.Instance);
        var keys = new List<KeyMaterialRef>();
        for (var i = 0; i < 6; i++)
        {
            keys.Add(new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default)));
        }

        await using var collector = new Collector();

        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        await Parallel.ForEachAsync(Enumerable.Range(0, 4000), new ParallelOptions { MaxDegreeOfParallelism = 2 }, async (i, ct) =>
        {
            try
            {
                var key = keys[i % keys.Count];
                var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [(byte)i], [1, 2, 3], ct);
                if (i % 7 == 0)
                {
                    await hsm.GenerateAes256KeyAsync(ct);
                }

                Assert.Equal([1, 2, 3], await hsm.DecryptAesGcmAsync(key, new byte[12], [(byte)i], sealedBytes, ct));
            }
            catch (Exception e)
            {
                failures.Add($"{i}: {e.GetType().Name}: {e.Message} {e.InnerException?.Message}");
            }
        });

        Assert.Empty(failures);
    }

    [Fact]
    public async Task EcGenerateUnwrapAndSignUnderForcedCollections_EveryCallSucceeds()
    {
        // The EC path has templates of its own (key pair, unwrap) and reads CKA_EC_PARAMS and
        // CKA_EC_POINT back: memory freed early shows as a failed call or a wrong signature.
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(sessions: 2, cacheCapacity: 1), NullLogger.Instance);
        var keys = new List<(KeyMaterialRef Key, EcCurve Curve, ECDsa Verifier)>();
        foreach (var curve in new[] { EcCurve.P256, EcCurve.P384, EcCurve.P256, EcCurve.P384 })
        {
            var pair = await hsm.GenerateEcKeyPairAsync(curve, default);
            var verifier = ECDsa.Create();
            verifier.ImportSubjectPublicKeyInfo(pair.SubjectPublicKeyInfo, out _);
            keys.Add((new KeyMaterialRef(KeyVersionId.NewId(), pair.PrivateKey), curve, verifier));
        }

        await using var collector = new Collector();

        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        await Parallel.ForEachAsync(Enumerable.Range(0, 1000), new ParallelOptions { MaxDegreeOfParallelism = 2 }, async (i, ct) =>
        {
            try
            {
                var (key, curve, verifier) = keys[i % keys.Count];
                var digest = EcKeyTests.Digest(curve, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                var signature = await hsm.SignEcdsaAsync(key, curve, digest, ct);
                if (i % 10 == 0)
                {
                    await hsm.GenerateEcKeyPairAsync(curve, ct);
                }

                if (!verifier.VerifyHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation))
                {
                    failures.Add($"{i}: signature does not verify");
                }
            }
            catch (Exception e)
            {
                failures.Add($"{i}: {e.GetType().Name}: {e.Message} {e.InnerException?.Message}");
            }
        });
        foreach (var (_, _, verifier) in keys)
        {
            verifier.Dispose();
        }

        Assert.Empty(failures);
    }

    // Collects garbage on another thread, as hard as it can, until disposed.
    private sealed class Collector : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _running;

        public Collector() => _running = Task.Run(() =>
        {
            while (!_stop.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        });

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await _running;
            _stop.Dispose();
        }
    }
}
