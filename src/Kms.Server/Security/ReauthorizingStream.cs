using Grpc.Core;

namespace Kms.Server.Security;

/// <summary>
/// A stream's responses, each sent only after <c>check</c> (the caller authorized again) passes:
/// a refused check throws, and the stream ends with its status instead of the message.
/// </summary>
internal sealed class ReauthorizingStreamWriter<T>(IServerStreamWriter<T> inner, Func<Task> check) : IServerStreamWriter<T>
{
    public WriteOptions? WriteOptions
    {
        get => inner.WriteOptions;
        set => inner.WriteOptions = value;
    }

    public async Task WriteAsync(T message)
    {
        await check();
        await inner.WriteAsync(message);
    }

    public async Task WriteAsync(T message, CancellationToken cancellationToken)
    {
        await check();
        await inner.WriteAsync(message, cancellationToken);
    }
}

/// <summary>
/// A stream's requests, each handed to the handler only after <c>check</c> (the caller authorized
/// again) passes — checked once the message has arrived, not while the client takes its time.
/// </summary>
internal sealed class ReauthorizingStreamReader<T>(IAsyncStreamReader<T> inner, Func<Task> check) : IAsyncStreamReader<T>
{
    public T Current => inner.Current;

    public async Task<bool> MoveNext(CancellationToken cancellationToken)
    {
        if (!await inner.MoveNext(cancellationToken))
        {
            return false;
        }

        await check();
        return true;
    }
}
