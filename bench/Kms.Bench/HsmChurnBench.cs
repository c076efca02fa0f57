using System.Diagnostics;
using System.Globalization;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Hsm;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Bench;

/// <summary>
/// What an unwrapped copy leaves behind in the HSM's process memory after it is destroyed. The
/// adapter with a handle cache far smaller than the keys it is asked for: every call unwraps its
/// key and evicts (destroys) another's copy, as a cache miss does under Zipf traffic. Beside it, the
/// same number of calls on one cached key (no unwrap, no destroy). The process is settled
/// (<see cref="ProcessMemory.Settle"/>) before and after each phase: glibc's "malloc in use"
/// growth divided by the copies destroyed is what one costs until the module is finalised; with
/// <c>recycleAfter</c> set, the adapter re-initialises the module on its own and the growth stays bounded.
/// </summary>
internal static class HsmChurnBench
{
    public static async Task<int> RunAsync(int calls, int recycleAfter)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        options.KeyCacheCapacity = 64;
        options.RecycleAfterDestroyedObjects = recycleAfter;
        try
        {
            await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
            var keys = new KeyMaterialRef[1024];
            for (var i = 0; i < keys.Length; i++)
            {
                keys[i] = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
            }

            var iv = new byte[12];
            var aad = new byte[16];
            var plaintext = new byte[32];
            _ = await hsm.EncryptAesGcmAsync(keys[0], iv, aad, plaintext, default);
            Console.WriteLine($"{keys.Length} keys, handle cache {options.KeyCacheCapacity}, {calls:N0} calls per phase, module re-initialised after {recycleAfter:N0} destroyed objects (0: never)");

            var before = ProcessMemory.Settle(TimeSpan.Zero);
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < calls; i++)
            {
                _ = await hsm.EncryptAesGcmAsync(keys[0], iv, aad, plaintext, default);
            }

            var hitSeconds = clock.Elapsed.TotalSeconds;
            var afterHits = ProcessMemory.Settle(clock.Elapsed);
            clock.Restart();
            for (var i = 0; i < calls; i++)
            {
                // Strided so consecutive calls never find the previous key's copy.
                _ = await hsm.EncryptAesGcmAsync(keys[(i * 97) % keys.Length], iv, aad, plaintext, default);
            }

            var missSeconds = clock.Elapsed.TotalSeconds;
            var afterMisses = ProcessMemory.Settle(clock.Elapsed);
            double InUse(System.Text.Json.Nodes.JsonObject o) => (double)o["malloc_in_use_mib"]!;
            double Native(System.Text.Json.Nodes.JsonObject o) => (double)o["native_after_trim_mib"]!;
            var hitGrowth = InUse(afterHits) - InUse(before);
            var missGrowth = InUse(afterMisses) - InUse(afterHits);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"hits: {calls / hitSeconds:N0} calls/s, malloc in use {hitGrowth:+0.0;-0.0} MiB ({hitGrowth * 1048576 / calls:F1} bytes a call), native after trim {Native(afterHits) - Native(before):+0.0;-0.0} MiB"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"misses (an unwrap and a destroy each): {calls / missSeconds:N0} calls/s, malloc in use {missGrowth:+0.0;-0.0} MiB ({missGrowth * 1048576 / calls:F1} bytes a call), native after trim {Native(afterMisses) - Native(afterHits):+0.0;-0.0} MiB; {hsm.Recycles} recycles, {hsm.Module.DestroyedObjects:N0} destroyed since the last"));

            // What C_Finalize gives back: the module re-initialised under the adapter, which recovers on its next call.
            var module = Pkcs11Module.Acquire(options.ModulePath, options.ModuleEnvironment);
            try
            {
                module.Reinitialize(module.Generation);
            }
            finally
            {
                module.Release();
            }

            _ = await hsm.EncryptAesGcmAsync(keys[0], iv, aad, plaintext, default);
            var afterFinalize = ProcessMemory.Settle(clock.Elapsed);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"after C_Finalize and C_Initialize: malloc in use {InUse(afterFinalize) - InUse(afterMisses):+0.0;-0.0} MiB, native after trim {Native(afterFinalize) - Native(afterMisses):+0.0;-0.0} MiB"));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }

        return 0;
    }
}
