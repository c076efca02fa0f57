using System.Runtime.InteropServices;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// A PKCS#11 module loaded once per process (a second <c>C_Initialize</c> in the same
/// process fails), shared by reference count. Every native call runs under a read gate;
/// re-initialisation (<c>C_Finalize</c> + <c>C_Initialize</c>) takes the gate exclusively,
/// so no call is in flight when the library is torn down.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "A module lives in a process-wide registry; Release() tears it down.")]
internal sealed class Pkcs11Module
{
    private static readonly Dictionary<string, Pkcs11Module> Loaded = new(StringComparer.Ordinal);
    private static readonly Lock LoadedLock = new();
    private static int _resolverInstalled;

    private readonly ReaderWriterLockSlim _gate = new(LockRecursionPolicy.NoRecursion);
    private readonly string _path;
    private readonly IReadOnlyDictionary<string, string> _environment;
    private IPkcs11Library? _library;
    private int _references;
    private long _destroyedObjects;

    private Pkcs11Module(string path, IReadOnlyDictionary<string, string> environment)
    {
        _path = path;
        _environment = environment;
        foreach (var (name, value) in environment)
        {
            NativeEnvironment.Set(name, value);
        }

        // Sessions that zero what Pkcs11Interop's Decrypt would leave behind (ZeroingSession).
        Factories = new Pkcs11InteropFactories(null, null, new ZeroingSession.Factory(), null, null, null, null);
        _library = Load();
    }

    public Pkcs11InteropFactories Factories { get; }

    /// <summary>Bumped by every re-initialisation: handles and sessions of an older generation are dead.</summary>
    public long Generation { get; private set; } = 1;

    /// <summary>
    /// Loads the module at <paramref name="path"/> (setting <paramref name="environment"/>
    /// natively first) or shares the instance already loaded with the same environment.
    /// </summary>
    public static Pkcs11Module Acquire(string path, IReadOnlyDictionary<string, string>? environment = null)
    {
        environment ??= new Dictionary<string, string>();
        InstallLibdlResolver();
        lock (LoadedLock)
        {
            if (!Loaded.TryGetValue(path, out var module))
            {
                module = new Pkcs11Module(path, environment);
                Loaded[path] = module;
            }
            else if (environment.Any(kv => !module._environment.TryGetValue(kv.Key, out var loaded) || loaded != kv.Value))
            {
                throw new HsmConfigurationException(
                    $"the PKCS#11 module {path} is already loaded in this process with another Hsm:ModuleEnvironment; a module is configured once per process");
            }

            module._references++;
            return module;
        }
    }

    /// <summary>
    /// Session objects destroyed since the library was last initialised, by every user of this
    /// module. SoftHSM keeps what is left of each (about 250 bytes) until <c>C_Finalize</c>.
    /// </summary>
    internal long DestroyedObjects => Interlocked.Read(ref _destroyedObjects);

    /// <summary>Counts one destroyed session object; returns the count since the library was initialised.</summary>
    internal long CountDestroyed() => Interlocked.Increment(ref _destroyedObjects);

    /// <summary>
    /// Drops one reference; the last one finalizes and unloads the module — unless a call is still
    /// inside the gate (a native call abandoned past <c>Hsm:CallTimeout</c>, a recovery stuck in the
    /// library), which it neither finalizes under nor waits for.
    /// </summary>
    /// <returns>
    /// 0, or, when the last reference went with calls still inside the gate, how many: the library
    /// is then left initialised and registered, and the next <see cref="Acquire"/> of the path uses it.
    /// </returns>
    /// <remarks>
    /// A hung device never returns the call, and a stop (the server's, the last region adapter's)
    /// must not wait for it: before, this waited for the exclusive gate under the registry lock,
    /// so the stop hung for as long as the device did, and so did every <see cref="Acquire"/> in
    /// the process. Finalizing under the running call is no way out either (it crashes SoftHSM).
    /// Such a library stays loaded for the life of the process unless it is acquired again, and
    /// a later last release finds the gate free.
    /// </remarks>
    public int Release()
    {
        // Under the registry lock, which nothing here waits in: a concurrent Acquire must not load
        // a second instance while this one is still initialised (C_Initialize would fail).
        lock (LoadedLock)
        {
            if (--_references > 0)
            {
                return 0;
            }

            if (!_gate.TryEnterWriteLock(0))
            {
                // A read in flight (or a re-initialisation holding the gate): left as it is, still in
                // the registry, to be reused rather than loaded a second time.
                return Math.Max(1, _gate.CurrentReadCount);
            }

            try
            {
                Loaded.Remove(_path);
                _library?.Dispose();
                _library = null;
            }
            finally
            {
                _gate.ExitWriteLock();
            }

            return 0;
        }
    }

    /// <summary>Test hook: the references held (0: released by all, and loaded only if left so by <see cref="Release"/>).</summary>
    internal int References
    {
        get
        {
            lock (LoadedLock)
            {
                return _references;
            }
        }
    }

    /// <summary>Test hook: whether the library is initialised.</summary>
    internal bool IsLoaded => Volatile.Read(ref _library) is not null;

    /// <summary>Test hook: threads waiting for the exclusive gate (while one waits, new shared callers queue behind it).</summary>
    internal int WaitingExclusive => _gate.WaitingWriteCount;

    /// <summary>Runs native calls under the shared gate.</summary>
    public T Call<T>(Func<IPkcs11Library, T> call)
    {
        _gate.EnterReadLock();
        try
        {
            return call(_library ?? throw new Pkcs11Exception("C_Initialize", CKR.CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        finally
        {
            _gate.ExitReadLock();
        }
    }

    /// <summary>
    /// Runs native calls with no other call in flight (test fault injection: a native call
    /// racing C_CloseAllSessions on the same session crashes SoftHSM).
    /// </summary>
    internal T Exclusive<T>(Func<IPkcs11Library, T> call)
    {
        _gate.EnterWriteLock();
        try
        {
            return call(_library ?? throw new Pkcs11Exception("C_Initialize", CKR.CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        finally
        {
            _gate.ExitWriteLock();
        }
    }

    /// <summary>
    /// <c>C_Finalize</c> and <c>C_Initialize</c> again, once per observed generation (callers
    /// racing to recover from the same fault re-initialise only once).
    /// </summary>
    public void Reinitialize(long observedGeneration)
    {
        _gate.EnterWriteLock();
        try
        {
            if (Generation != observedGeneration)
            {
                return;
            }

            try
            {
                _library?.Dispose();
            }
            catch (Pkcs11Exception)
            {
                // A library that lost its device may refuse C_Finalize; it is reloaded anyway.
            }

            _library = null;
            _library = Load();
            Interlocked.Exchange(ref _destroyedObjects, 0);
            Generation++;
        }
        finally
        {
            _gate.ExitWriteLock();
        }
    }

    /// <summary>Test hook: finalizes the library behind every user's back, as a crashed HSM client would.</summary>
    internal void FinalizeForFaultInjection()
    {
        _gate.EnterWriteLock();
        try
        {
            _library?.Dispose();
            _library = null;
        }
        finally
        {
            _gate.ExitWriteLock();
        }
    }

    private IPkcs11Library Load()
    {
        try
        {
            return Factories.Pkcs11LibraryFactory.LoadPkcs11Library(Factories, _path, AppType.MultiThreaded, InitType.WithFunctionList);
        }
        catch (Exception e) when (e is UnmanagedException or DllNotFoundException or Pkcs11Exception)
        {
            throw new HsmConfigurationException($"cannot load the PKCS#11 module {_path}: {e.Message}", e) { Failure = HsmFailure.ModuleNotLoaded };
        }
    }

    // Pkcs11Interop 5.3 asks for "libdl", which glibc 2.34+ ships only as libdl.so.2.
    private static void InstallLibdlResolver()
    {
        if (Interlocked.Exchange(ref _resolverInstalled, 1) == 1)
        {
            return;
        }

        NativeLibrary.SetDllImportResolver(typeof(Pkcs11InteropFactories).Assembly, static (name, assembly, searchPath) =>
            name == "libdl" && NativeLibrary.TryLoad("libdl.so.2", out var handle) ? handle : IntPtr.Zero);
    }
}
