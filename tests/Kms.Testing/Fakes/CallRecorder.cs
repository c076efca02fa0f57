using System.Collections.Concurrent;
using System.Reflection;

namespace Kms.Testing.Fakes;

/// <summary>
/// A port that forwards every call to another implementation and records the name of each method
/// called, in order: for tests of how many store reads a path makes.
/// </summary>
/// <remarks>Not sealed: <see cref="DispatchProxy"/> derives the proxy type from it.</remarks>
public class CallRecorder : DispatchProxy
{
    private object _inner = null!;

    /// <summary>The names of the methods called so far, in order.</summary>
    public ConcurrentQueue<string> Calls { get; } = new();

    /// <summary><paramref name="inner"/> behind a recorder; <paramref name="calls"/> fills as it is used.</summary>
    public static T Wrap<T>(T inner, out ConcurrentQueue<string> calls)
        where T : class
    {
        ArgumentNullException.ThrowIfNull(inner);
        var proxy = Create<T, CallRecorder>();
        var recorder = (CallRecorder)(object)proxy;
        recorder._inner = inner;
        calls = recorder.Calls;
        return proxy;
    }

    /// <inheritdoc />
    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(targetMethod);
        Calls.Enqueue(targetMethod.Name);
        try
        {
            return targetMethod.Invoke(_inner, args);
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerException).Throw();
            throw;
        }
    }
}
