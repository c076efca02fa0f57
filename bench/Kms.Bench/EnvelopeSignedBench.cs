using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Kms.Client.Envelope;

namespace Kms.Bench;

/// <summary>
/// One-shot encrypt + decrypt with suite 0x0001 against 0x0002, Stopwatch, no cache for either,
/// data keys from an in-process provider: the SDK's own cost of signing, KMS calls excluded.
/// Rounds alternate the suites. And (<see cref="RunCacheAsync"/>) signed 1 KiB encryption with the
/// data-key cache off against on.
/// </summary>
internal static class EnvelopeSignedBench
{
    public static async Task<int> RunAsync(int rounds)
    {
        var context = new Dictionary<string, string> { ["table"] = "orders", ["column"] = "card" };
        foreach (var size in new[] { 1024, 1 << 20 })
        {
            var plaintext = RandomNumberGenerator.GetBytes(size);
            var iterations = size == 1024 ? 2000 : 100;
            var totals = new Dictionary<EnvelopeSuite, List<double>>();
            for (var round = 0; round < rounds; round++)
            {
                foreach (var suite in new[] { EnvelopeSuite.Committing, EnvelopeSuite.CommittingSigned })
                {
                    using var encryptor = new EnvelopeEncryptor(new LocalKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/bench/keys/envelope"], Suite = suite });
                    for (var i = 0; i < 20; i++)
                    {
                        await encryptor.DecryptAsync(await encryptor.EncryptAsync(plaintext, context), context);
                    }

                    var watch = Stopwatch.StartNew();
                    for (var i = 0; i < iterations; i++)
                    {
                        await encryptor.DecryptAsync(await encryptor.EncryptAsync(plaintext, context), context);
                    }

                    var micros = watch.Elapsed.TotalMicroseconds / iterations;
                    (totals.TryGetValue(suite, out var list) ? list : totals[suite] = []).Add(micros);
                }
            }

            var unsigned = Median(totals[EnvelopeSuite.Committing]);
            var signed = Median(totals[EnvelopeSuite.CommittingSigned]);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{size} B encrypt+decrypt: 0x0001 {unsigned:F1} us, 0x0002 {signed:F1} us (median of {rounds} rounds; all 0x0001 [{string.Join(", ", totals[EnvelopeSuite.Committing].Select(v => v.ToString("F1", CultureInfo.InvariantCulture)))}], 0x0002 [{string.Join(", ", totals[EnvelopeSuite.CommittingSigned].Select(v => v.ToString("F1", CultureInfo.InvariantCulture)))}]); ratio {signed / unsigned:F2}"));
        }

        return 0;
    }

    /// <summary>
    /// 1 KiB signed one-shot encryptions, the data-key cache off (a key pair and a data key per
    /// message) against on (one of each per entry), in-process key provider: the SDK's saving
    /// without the KMS call it also saves. Rounds alternate.
    /// </summary>
    public static async Task<int> RunCacheAsync(int rounds)
    {
        var context = new Dictionary<string, string> { ["table"] = "orders", ["column"] = "card" };
        var plaintext = RandomNumberGenerator.GetBytes(1024);
        const int iterations = 2000;
        var off = new List<double>();
        var on = new List<double>();
        for (var round = 0; round < rounds; round++)
        {
            foreach (var cached in new[] { false, true })
            {
                var provider = new LocalKeyProvider();
                using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions
                {
                    KeyNames = ["tenants/bench/keys/envelope"],
                    Suite = EnvelopeSuite.CommittingSigned,
                    DataKeyCache = cached ? new Kms.Client.Caching.DataKeyCacheOptions() : null,
                });
                for (var i = 0; i < 20; i++)
                {
                    await encryptor.EncryptAsync(plaintext, context);
                }

                var watch = Stopwatch.StartNew();
                for (var i = 0; i < iterations; i++)
                {
                    await encryptor.EncryptAsync(plaintext, context);
                }

                (cached ? on : off).Add(watch.Elapsed.TotalMicroseconds / iterations);
            }
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"1024 B signed encrypt: cache off {Median(off):F1} us, on {Median(on):F1} us (median of {rounds} rounds; off [{string.Join(", ", off.Select(v => v.ToString("F1", CultureInfo.InvariantCulture)))}], on [{string.Join(", ", on.Select(v => v.ToString("F1", CultureInfo.InvariantCulture)))}]); ratio {Median(off) / Median(on):F2}"));
        return 0;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted[sorted.Count / 2];
    }
}
