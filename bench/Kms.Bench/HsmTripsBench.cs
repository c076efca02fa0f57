using System.Diagnostics;
using System.Globalization;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Hsm;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Bench;

/// <summary>
/// A data key the way GenerateDataKey asked the HSM for one until the thirty-eighth session — a
/// random draw, then an encryption: two trips through the adapter's bound (each a session from the
/// pool, a hop to the thread pool and a timer) — against the one-trip form
/// (<see cref="IHsm.GenerateDataKeyAsync"/>: both in one session and one hop), alternating in one
/// process on one key, so the machine's noise falls on both alike.
/// </summary>
internal static class HsmTripsBench
{
    public static async Task<int> RunAsync(int rounds, TimeSpan duration, int concurrency)
    {
        var (options, _) = BenchEnvironment.CreateToken();
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var aad = new byte[40];

        async Task TwoTrips()
        {
            var random = await hsm.GenerateRandomAsync(32 + CiphertextBlob.IvLength, default);
            _ = await hsm.EncryptAesGcmAsync(key, random[32..], aad, random[..32], default);
        }

        async Task OneTrip() => _ = await hsm.GenerateDataKeyAsync(key, 32, aad, default);

        // Warm both (the JIT's tiers, the handle cache) before anything is measured.
        _ = await RunAsync(TwoTrips, concurrency, TimeSpan.FromSeconds(3));
        _ = await RunAsync(OneTrip, concurrency, TimeSpan.FromSeconds(3));
        Console.WriteLine($"{concurrency} callers, {duration.TotalSeconds:F0} s a side, {rounds} rounds alternating (raw PKCS#11 floor: `perf`'s baseline)");
        Console.WriteLine("| round | two trips ops/s | µs CPU/op | one trip ops/s | µs CPU/op | one ÷ two (ops/s) | CPU two ÷ one |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
        for (var round = 1; round <= rounds; round++)
        {
            var (twoOps, twoCpu) = round % 2 == 1 ? await RunAsync(TwoTrips, concurrency, duration) : default;
            var (oneOps, oneCpu) = await RunAsync(OneTrip, concurrency, duration);
            if (round % 2 == 0)
            {
                (twoOps, twoCpu) = await RunAsync(TwoTrips, concurrency, duration);
            }

            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {round} | {twoOps:N0} | {twoCpu:F1} | {oneOps:N0} | {oneCpu:F1} | {oneOps / twoOps:F2} | {twoCpu / oneCpu:F2} |"));
        }

        return 0;
    }

    private static async Task<(double OpsPerSecond, double CpuMicrosecondsPerOp)> RunAsync(Func<Task> call, int concurrency, TimeSpan duration)
    {
        var calls = 0L;
        var before = CpuSample.Now();
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            while (clock.Elapsed < duration)
            {
                await call();
                Interlocked.Increment(ref calls);
            }
        })));
        var seconds = clock.Elapsed.TotalSeconds;
        var (cores, _, _) = CpuSample.Now().Since(before);
        return (calls / seconds, cores * seconds * 1e6 / calls);
    }
}
