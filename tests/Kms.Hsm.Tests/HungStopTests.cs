using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Xunit.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// A stop while the HSM hangs: the last release of the PKCS#11 module with a call still inside its
/// gate (abandoned past Hsm:CallTimeout, or a recovery stuck in the library) neither finalizes the
/// library under it nor waits for it, and the registry stays open to every other Acquire.
/// </summary>
/// <remarks>
/// Each test loads a private copy of SoftHSM's library (its own path, so its own entry in the
/// module registry and its own instance of the library in this process): its last release is the
/// test's, whatever other tests hold the shared module. No assertion reads a clock; the hang
/// guards turn a stop that waits for the hung device into a failure. Runs alone: it hangs calls
/// inside the module gate (GateHookTests).
/// </remarks>
[Collection(ReinitializationGroup.Name)]
public sealed class HungStopTests(ITestOutputHelper output)
{
    // Liveness guards, not thresholds: past the adapter's 10-s drain, far past the module's own
    // release, which waits for nothing.
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan ModuleGuard = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task LastRelease_WhileACallIsInsideTheGate_ReturnsWithoutFinalizing_AcquireNotBlocked_SamePathReusesTheInstance()
    {
        var token = SoftHsm.CreateToken();
        var path = PrivateModuleCopy();
        var module = Pkcs11Module.Acquire(path, SoftHsm.ModuleEnvironment);
        using var entered = new ManualResetEventSlim();
        using var returns = new ManualResetEventSlim();

        // A native call that does not return (a hung device), holding a read of the gate.
        var hung = Task.Run(() => module.Call(_ =>
        {
            entered.Set();
            returns.Wait();
            return 0;
        }));
        try
        {
            Assert.True(entered.Wait(ModuleGuard), "the call never entered the gate");

            // The last reference goes (a stop) while the call is inside.
            var releasing = Task.Run(module.Release);
            await WhenAsync(() => releasing.IsCompleted || module.WaitingExclusive > 0);

            // Another module is loaded meanwhile: the registry is not held by the release.
            var acquiring = Task.Run(() => Pkcs11Module.Acquire(SoftHsm.ModulePath, SoftHsm.ModuleEnvironment));
            var other = await Guarded(acquiring, ModuleGuard, "Acquire of another module blocked behind a Release that waits for a call inside the gate");
            other.Release();

            var inside = await Guarded(releasing, ModuleGuard, "the last Release waited for the call inside the gate");
            Assert.Equal(1, inside);
            Assert.True(module.IsLoaded, "finalized under a running call");
            Assert.Equal(0, module.References);

            // The same path again: the instance still initialised, not a second one (whose
            // C_Initialize would fail), and it serves.
            var again = Pkcs11Module.Acquire(path, SoftHsm.ModuleEnvironment);
            Assert.Same(module, again);
            Assert.Equal(token.Label, again.Call(library => SlotList.FindToken(library, token.Label, path).Slot.GetTokenInfo().Label));

            returns.Set();
            await Guarded(hung, ModuleGuard, "the held call did not return");

            // With nothing inside any more, the last release finalizes, and a later Acquire loads anew.
            Assert.Equal(0, again.Release());
            Assert.False(module.IsLoaded);
            var reloaded = Pkcs11Module.Acquire(path, SoftHsm.ModuleEnvironment);
            try
            {
                Assert.NotSame(module, reloaded);
                Assert.Equal(token.Label, reloaded.Call(library => SlotList.FindToken(library, token.Label, path).Slot.GetTokenInfo().Label));
            }
            finally
            {
                Assert.Equal(0, reloaded.Release());
            }
        }
        finally
        {
            returns.Set();
        }
    }

    [Fact]
    public async Task AdapterStop_WhileACallIsAbandonedAndItsRecoveryHangs_Ends_ModuleLeftLoaded_Logged_NextOpenUsesIt_FinalizedOnceTheyReturn()
    {
        var token = SoftHsm.CreateToken();
        var options = token.Options();
        options.ModulePath = PrivateModuleCopy();
        options.CallTimeout = TimeSpan.FromSeconds(1);
        var logger = new ListLogger();
        var hsm = Pkcs11Hsm.Open(options, logger);
        var module = hsm.Module;
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [5], default);

        hsm.Faults.Hang();
        try
        {
            // One call hangs and is abandoned; the next starts a recovery, whose drain waits for the
            // abandoned call and whose re-open then hangs too (the device answers nobody).
            var abandoned = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
            Assert.Equal("the HSM did not answer in time; retry shortly", abandoned.Message);
            var recovering = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
            Assert.Equal("the HSM is recovering; retry shortly", recovering.Message);
            Assert.Equal(1, hsm.AbandonedCalls);
            Assert.True(hsm.Recovering);

            // The stop (the server's, or the last region adapter's) ends while the device still hangs.
            await Guarded(hsm.DisposeAsync().AsTask(), HangGuard, "the adapter's stop waited for the hung HSM");
            Assert.True(hsm.Faults.HungCalls >= 1, "the hang was released before the stop ended");
            Assert.True(module.IsLoaded, "the library was finalized under a running call");
            Assert.Equal(0, module.References);
            output.WriteLine(string.Join('\n', logger.Messages));
            var left = Assert.Single(logger.Messages, m => m.StartsWith("The last user of the PKCS#11 module", StringComparison.Ordinal));
            Assert.Contains($"{options.ModulePath} stopped with ", left, StringComparison.Ordinal);
            Assert.Contains("(1 abandoned calls, 1 recoveries of this adapter still running)", left, StringComparison.Ordinal);

            // A server started again in this process opens on the library left initialised, and serves.
            var logged = logger.Messages.Count;
            await using (var next = Pkcs11Hsm.Open(options, logger))
            {
                Assert.Same(module, next.Module);
                Assert.Equal([5], await next.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
            }

            // Its stop, with the first adapter's calls still inside, leaves the library loaded again.
            Assert.True(module.IsLoaded);
            Assert.Contains(logger.Messages.Skip(logged), m => m.StartsWith("The last user of the PKCS#11 module", StringComparison.Ordinal));
        }
        finally
        {
            hsm.Faults.Clear();
        }

        // The device answers again: the abandoned call returns, the stopped adapter's recovery gives
        // up without presenting its zeroed PIN, and the next last release finalizes the library.
        await WhenAsync(() => hsm.AbandonedCalls == 0 && !hsm.Recovering && hsm.Faults.HungCalls == 0);
        Assert.DoesNotContain(logger.Messages, m => m.Contains("refused the PIN", StringComparison.Ordinal));
        var last = Pkcs11Hsm.Open(options, logger);
        Assert.Same(module, last.Module);
        Assert.Equal([5], await last.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        await last.DisposeAsync();
        Assert.False(module.IsLoaded, "the last release with nothing inside did not finalize the library");
    }

    [Fact]
    public async Task AdapterStop_ItsStopTimeRunsOutWhileACallHangs_EndsThen_LeavesTheCall_Logged2013And2012()
    {
        // A clock never advanced: the stop's own 10-s drain never passes, so only the stop's token (a
        // host's stop time running out) can end its wait for the hung call.
        var token = SoftHsm.CreateToken();
        var options = token.Options();
        options.ModulePath = PrivateModuleCopy();
        options.CallTimeout = TimeSpan.FromMinutes(10);
        var logger = new ListLogger();
        var hsm = Pkcs11Hsm.Open(options, logger, new Microsoft.Extensions.Time.Testing.FakeTimeProvider());
        var module = hsm.Module;
        hsm.Faults.Hang();
        Task<byte[]> call;
        try
        {
            call = Task.Run(async () => await hsm.GenerateRandomAsync(4, default));
            await WhenAsync(() => hsm.Faults.HungCalls == 1);

            using var stopTime = new CancellationTokenSource();
            var stop = hsm.StopAsync(stopTime.Token);
            await stopTime.CancelAsync();
            await Guarded(stop, HangGuard, "the stop did not end when its stop time ran out");
            Assert.True(hsm.Faults.HungCalls == 1, "the hang was released before the stop ended");
            Assert.True(module.IsLoaded, "the library was finalized under a running call");
            output.WriteLine(string.Join('\n', logger.Messages));
            var cut = Assert.Single(logger.Messages, m => m.StartsWith("Stopping: the HSM's calls in flight", StringComparison.Ordinal));
            Assert.Contains("cut short by the host's stop time: True", cut, StringComparison.Ordinal);
            Assert.Single(logger.Messages, m => m.StartsWith("The last user of the PKCS#11 module", StringComparison.Ordinal));

            // A dispose after the stop (the server's container) returns at once: nothing is waited for twice.
            await Guarded(hsm.DisposeAsync().AsTask(), ModuleGuard, "the dispose after the stop waited");
            Assert.Single(logger.Messages, m => m.StartsWith("The last user of the PKCS#11 module", StringComparison.Ordinal));
        }
        finally
        {
            hsm.Faults.Clear();
        }

        // The device answers again: the call returns, and the next last release finalizes the library.
        await Guarded(call, HangGuard, "the hung call did not return once the hang was cleared");
        var last = Pkcs11Hsm.Open(options, logger);
        Assert.Same(module, last.Module);
        await last.DisposeAsync();
        Assert.False(module.IsLoaded, "the last release with nothing inside did not finalize the library");
    }

    // SoftHSM's library under a path of its own: a separate instance in this process, sharing the
    // token directory (as two processes can).
    private static string PrivateModuleCopy()
    {
        var path = Scratch.NewPath("libsofthsm2-", ".so");
        File.Copy(SoftHsm.ModulePath, path);
        return path;
    }

    private static async Task<T> Guarded<T>(Task<T> task, TimeSpan guard, string what)
    {
        try
        {
            return await task.WaitAsync(guard);
        }
        catch (TimeoutException)
        {
            Assert.Fail($"{what} (hang guard of {guard.TotalSeconds} s)");
            throw;
        }
    }

    private static async Task Guarded(Task task, TimeSpan guard, string what) =>
        await Guarded(task.ContinueWith(t => t.IsCompletedSuccessfully ? 0 : throw t.Exception!.InnerException!, TaskScheduler.Default), guard, what);

    private static async Task WhenAsync(Func<bool> condition)
    {
        using var guard = new CancellationTokenSource(HangGuard);
        while (!condition())
        {
            await Task.Delay(20, guard.Token);
        }
    }
}
