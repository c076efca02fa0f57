using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Kms.Client;
using Kms.Hsm;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;
using KeyAlgorithm = Kms.Contracts.V1.KeyAlgorithm;
using KeyPurpose = Kms.Contracts.V1.KeyPurpose;

namespace Kms.Bench;

/// <summary>
/// ECDSA P-256 Sign (32-byte digest) and HMAC-SHA256 GenerateMac (64 bytes) through gRPC
/// over TLS 1.3 against the real server (in this process, on loopback, API-token auth,
/// durable audit on), at a sweep of concurrencies — and, in the same run, the same two
/// operations as raw Pkcs11Interop <c>C_Sign</c> calls on 1 and 2 threads, so results are
/// reported as ratios to the HSM's own rate on this machine.
/// </summary>
internal static class SignBench
{
    // DER of the named curve's OID 1.2.840.10045.3.1.7 (P-256), as CKA_EC_PARAMS wants it.
    private static readonly byte[] P256Parameters = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

    private enum Operation
    {
        EcdsaP256,
        HmacSha256,
    }

    public static async Task<int> RunAsync(TimeSpan duration, int[] concurrencies)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        var failed = 0;
        try
        {
            // Before the server loads the module: login is per process, and the server logs in itself.
            Console.WriteLine("raw Pkcs11Interop C_Sign (each thread its own session and its own session-object key):");
            Console.WriteLine("| operation | 1 thread ops/s | 2 threads ops/s |");
            Console.WriteLine("|---|---:|---:|");
            var raw = new Dictionary<Operation, double>();
            foreach (var (operation, label) in new[] { (Operation.EcdsaP256, "CKM_ECDSA P-256, 32 B digest"), (Operation.HmacSha256, "CKM_SHA256_HMAC, 64 B") })
            {
                var one = MeasureRaw(options, operation, threads: 1, duration);
                var two = MeasureRaw(options, operation, threads: 2, duration);
                raw[operation] = two;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {label} | {one:N0} | {two:N0} |"));
            }

            var app = await LoadGenerator.StartServerAsync(options, root, audit: true);
            try
            {
                using var client = LoadGenerator.Connect(app, root);
                var signKey = await client.CreateKeyAsync("tenants/dev", "bench-sign", KeyPurpose.SignVerify, KeyAlgorithm.EcSignP256Sha256);
                var macKey = await client.CreateKeyAsync("tenants/dev", "bench-mac", KeyPurpose.Mac, KeyAlgorithm.HmacSha256);
                var digest = SHA256.HashData(RandomNumberGenerator.GetBytes(64));
                var data = RandomNumberGenerator.GetBytes(64);

                failed += await SweepAsync("Sign (ECDSA P-256, 32 B digest)", raw[Operation.EcdsaP256], concurrencies, duration,
                    () => client.SignDigestAsync(signKey.Name, digest));
                failed += await SweepAsync("GenerateMac (HMAC-SHA256, 64 B)", raw[Operation.HmacSha256], concurrencies, duration,
                    () => client.GenerateMacAsync(macKey.Name, data));
            }
            finally
            {
                await app.StopAsync();
                await app.DisposeAsync();
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }

        // Figures from a run with errors are not figures: fail it.
        if (failed > 0)
        {
            Console.Error.WriteLine($"sign: {failed} calls failed");
            return 1;
        }

        return 0;
    }

    private static async Task<int> SweepAsync(string label, double rawTwoThreads, int[] concurrencies, TimeSpan duration, Func<Task> call)
    {
        Console.WriteLine();
        Console.WriteLine($"{label} through gRPC, durable audit on:");
        Console.WriteLine("| concurrency | ops/s | p50 ms | p99 ms | ratio to raw 2 threads |");
        Console.WriteLine("|---:|---:|---:|---:|---:|");
        var failed = 0;
        var best = (Concurrency: 0, OpsPerSecond: 0.0);
        foreach (var concurrency in concurrencies)
        {
            failed += (await LoadGenerator.ClosedLoopAsync(concurrency, TimeSpan.FromSeconds(1), call)).Errors; // warm-up
            var (opsPerSecond, p50, p99, errors) = await LoadGenerator.ClosedLoopAsync(concurrency, duration, call);
            failed += errors;
            if (opsPerSecond > best.OpsPerSecond)
            {
                best = (concurrency, opsPerSecond);
            }

            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {concurrency} | {opsPerSecond:N0} | {p50:F2} | {p99:F2} | {opsPerSecond / rawTwoThreads:F2} |{(errors > 0 ? $" {errors} errors" : "")}"));
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"best: {best.OpsPerSecond:N0} ops/s (c={best.Concurrency}) = {best.OpsPerSecond / rawTwoThreads:F2} x raw 2 threads ({rawTwoThreads:N0} ops/s)"));
        return failed;
    }

    // The floor: each thread opens its own session, makes its own session-object key and calls
    // C_Sign back to back. One session stays open (and logged in) throughout, so SoftHSM keeps the objects.
    private static double MeasureRaw(HsmOptions options, Operation operation, int threads, TimeSpan duration)
    {
        var module = Pkcs11Module.Acquire(options.ModulePath, options.ModuleEnvironment);
        try
        {
            var slot = module.Call(library => library.GetSlotList(SlotsType.WithTokenPresent).Single(s => s.GetTokenInfo().Label == options.TokenLabel));
            using var login = slot.OpenSession(SessionType.ReadWrite);
            login.Login(CKU.CKU_USER, options.Pin!);
            var counts = new long[threads];
            using var start = new Barrier(threads + 1);
            var stopwatch = new Stopwatch();
            var workers = Enumerable.Range(0, threads).Select(thread => new Thread(() =>
            {
                using var session = slot.OpenSession(SessionType.ReadWrite);
                var (key, input, mechanismType) = operation == Operation.EcdsaP256
                    ? (GenerateP256(module, session), RandomNumberGenerator.GetBytes(32), CKM.CKM_ECDSA)
                    : (GenerateHmacKey(module, session), RandomNumberGenerator.GetBytes(64), CKM.CKM_SHA256_HMAC);
                start.SignalAndWait();
                var count = 0L;
                while (stopwatch.Elapsed < duration)
                {
                    using var mechanism = module.Factories.MechanismFactory.Create(mechanismType);
                    session.Sign(mechanism, key, input);
                    count++;
                }

                counts[thread] = count;
            })
            { IsBackground = true }).ToList();
            workers.ForEach(w => w.Start());
            start.SignalAndWait();
            stopwatch.Start(); // keys are made: time only the signing (Elapsed reads 0 until now)
            workers.ForEach(w => w.Join());
            var rate = counts.Sum() / stopwatch.Elapsed.TotalSeconds;
            login.Logout();
            return rate;
        }
        finally
        {
            module.Release();
        }
    }

    private static IObjectHandle GenerateP256(Pkcs11Module module, ISession session)
    {
        var a = module.Factories.ObjectAttributeFactory;
        using var generate = module.Factories.MechanismFactory.Create(CKM.CKM_EC_KEY_PAIR_GEN);
        List<IObjectAttribute> publicTemplate = [
            a.Create(CKA.CKA_TOKEN, false), a.Create(CKA.CKA_EC_PARAMS, P256Parameters), a.Create(CKA.CKA_VERIFY, true),
        ];
        List<IObjectAttribute> privateTemplate = [
            a.Create(CKA.CKA_TOKEN, false), a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false),
            a.Create(CKA.CKA_SIGN, true), a.Create(CKA.CKA_DECRYPT, false), a.Create(CKA.CKA_UNWRAP, false), a.Create(CKA.CKA_DERIVE, false),
        ];
        session.GenerateKeyPair(generate, publicTemplate, privateTemplate, out _, out var privateKey);
        GC.KeepAlive(publicTemplate); // Pkcs11Interop frees attribute memory in finalizers
        GC.KeepAlive(privateTemplate);
        return privateKey;
    }

    private static IObjectHandle GenerateHmacKey(Pkcs11Module module, ISession session)
    {
        var a = module.Factories.ObjectAttributeFactory;
        using var generate = module.Factories.MechanismFactory.Create(CKM.CKM_GENERIC_SECRET_KEY_GEN);
        List<IObjectAttribute> template = [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_GENERIC_SECRET), a.Create(CKA.CKA_VALUE_LEN, 32UL),
            a.Create(CKA.CKA_TOKEN, false), a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false),
            a.Create(CKA.CKA_SIGN, true), a.Create(CKA.CKA_VERIFY, false), a.Create(CKA.CKA_ENCRYPT, false), a.Create(CKA.CKA_DECRYPT, false),
            a.Create(CKA.CKA_WRAP, false), a.Create(CKA.CKA_UNWRAP, false), a.Create(CKA.CKA_DERIVE, false),
        ];
        var key = session.GenerateKey(generate, template);
        GC.KeepAlive(template);
        return key;
    }
}
