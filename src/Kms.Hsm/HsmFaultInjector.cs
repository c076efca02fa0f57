using Net.Pkcs11Interop.Common;

namespace Kms.Hsm;

/// <summary>
/// Test-only fault injection at the PKCS#11 boundary of one adapter: consulted under the
/// module gate before every operation's native calls and before the sessions are re-opened
/// in a recovery, it makes them fail as a lost device does (a chosen <see cref="CKR"/>) or
/// hang until the fault is cleared.
/// </summary>
/// <remarks>
/// Internal, and reachable only from the test assemblies (InternalsVisibleTo): no
/// configuration can switch it on. When no fault is set it costs one volatile read per call.
/// A hung call holds the module gate, as a native call stuck in a real library would.
/// </remarks>
internal sealed class HsmFaultInjector
{
    private Fault? _fault;
    private Fault? _also;
    private int _hung;

    /// <summary>Calls blocked in an injected hang right now.</summary>
    public int HungCalls => Volatile.Read(ref _hung);

    /// <summary>From now on every call fails with <paramref name="returnValue"/>.</summary>
    public void Fail(CKR returnValue) => Replace(new Fault(returnValue));

    /// <summary>From now on every call blocks until <see cref="Clear"/>.</summary>
    public void Hang() => Replace(new Fault(null));

    /// <summary>
    /// From now on only calls of <paramref name="operation"/> (e.g. <c>generate random</c>, <c>C_OpenSession</c>)
    /// block, until the next fault or <see cref="Clear"/>; calls hung by the previous fault continue.
    /// </summary>
    public void HangOnly(string operation) => Replace(new Fault(null, operation));

    /// <summary>
    /// Besides the current fault (which stays, its hung calls too), calls of <paramref name="operation"/>
    /// fail with <paramref name="returnValue"/>, until <see cref="Clear"/>.
    /// </summary>
    public void FailAlso(string operation, CKR returnValue) => Volatile.Write(ref _also, new Fault(returnValue, operation));

    /// <summary>The device is back: calls pass, and hung calls continue (and complete) normally.</summary>
    public void Clear()
    {
        Volatile.Write(ref _also, null);
        Replace(null);
    }

    /// <summary>Applies the current fault, if any, to a call about to go native.</summary>
    public void BeforeCall(string method)
    {
        if (Volatile.Read(ref _also) is { ReturnValue: { } also, Operation: var alsoOnly } && string.Equals(alsoOnly, method, StringComparison.Ordinal))
        {
            throw new Pkcs11Exception(method, also);
        }

        var fault = Volatile.Read(ref _fault);
        if (fault is null)
        {
            return;
        }

        if (fault.Operation is { } only && !string.Equals(only, method, StringComparison.Ordinal))
        {
            return;
        }

        if (fault.ReturnValue is { } returnValue)
        {
            throw new Pkcs11Exception(method, returnValue);
        }

        Interlocked.Increment(ref _hung);
        try
        {
            fault.Released.Wait();
        }
        finally
        {
            Interlocked.Decrement(ref _hung);
        }
    }

    private void Replace(Fault? fault)
    {
        var previous = Interlocked.Exchange(ref _fault, fault);
        previous?.Released.Set();
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "The event is set, never disposed: a hung call may still be waiting on it.")]
    private sealed class Fault(CKR? returnValue, string? operation = null)
    {
        public CKR? ReturnValue { get; } = returnValue;

        // Null: every call.
        public string? Operation { get; } = operation;

        public ManualResetEventSlim Released { get; } = new(false);
    }
}
