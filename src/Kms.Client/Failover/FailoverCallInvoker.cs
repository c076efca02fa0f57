using System.Runtime.ExceptionServices;
using Grpc.Core;
using Kms.Core;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Failover;

/// <summary>
/// The call invoker under every stub of <see cref="KmsClient"/>: gives unary calls the
/// default deadline, sends each attempt to an endpoint of the <see cref="EndpointPool"/>,
/// and sends a call that failed UNAVAILABLE again — elsewhere at once, or after a jittered
/// backoff when there is nowhere fresh to go — while <see cref="RetrySafety"/> says a repeat
/// is harmless, attempts remain, and the wait ends before the call's deadline.
/// </summary>
/// <remarks>
/// Unary calls are retried as above. A server-streaming call is retried only until its first
/// message arrives: after that the caller has seen part of the answer, and a new stream
/// would show it again. Client- and duplex-streaming calls (kms.v1 has none) go to one
/// endpoint and are not retried. Streaming calls get no default deadline: how long they run
/// depends on how much there is to send; pass one, or cancel.
/// </remarks>
internal sealed class FailoverCallInvoker : CallInvoker, IDisposable
{
    private readonly EndpointPool _pool;
    private readonly Backoff _backoff;
    private readonly int _maxAttempts;
    private readonly TimeSpan _callTimeout;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly LogThrottle _serverShedLog = new();

    /// <param name="pool">The endpoints; disposed with this invoker.</param>
    /// <param name="maxAttempts">Attempts per call, the first included.</param>
    /// <param name="backoff">Waits before attempts that do not go to a fresh endpoint.</param>
    /// <param name="callTimeout">Deadline of a unary call that has none.</param>
    /// <param name="time">Clock of deadlines and waits.</param>
    /// <param name="logger">Where retries are logged.</param>
    public FailoverCallInvoker(EndpointPool pool, int maxAttempts, Backoff backoff, TimeSpan callTimeout, TimeProvider time, ILogger logger)
    {
        _pool = pool;
        _maxAttempts = maxAttempts;
        _backoff = backoff;
        _callTimeout = callTimeout;
        _time = time;
        _logger = logger;
    }

    /// <summary>The endpoints and what the client believes about them.</summary>
    public EndpointPool Pool => _pool;

    /// <summary>The bound on unary attempts on the wire to each endpoint; none when null.</summary>
    public ConcurrencyLimit? Limit { get; init; }

    /// <summary>
    /// The longest RetryInfo delay of a RESOURCE_EXHAUSTED waited out before the call is sent again
    /// (to the same endpoint); zero: RESOURCE_EXHAUSTED is never retried.
    /// </summary>
    public TimeSpan MaxRetryInfoDelay { get; init; }

    /// <inheritdoc/>
    public override TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request) =>
        AsyncUnaryCall(method, host, options, request).ResponseAsync.GetAwaiter().GetResult();

    /// <inheritdoc/>
    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request)
    {
        options = options.Deadline is null ? options.WithDeadline(_time.GetUtcNow().UtcDateTime + _callTimeout) : options;
        request = RetrySafety.WithRequestId(request);
        var call = new LogicalCall<AsyncUnaryCall<TResponse>>(options.CancellationToken);
        var attemptOptions = options.WithCancellationToken(call.Token);
        var response = RunUnaryAsync(call, WithFailoverAsync(
            method,
            request,
            options.Deadline,
            Limit,
            endpoint =>
            {
                var attempt = endpoint.Calls.AsyncUnaryCall(method, host, attemptOptions, request);
                call.Begin(endpoint, attempt);
                return attempt.ResponseAsync;
            },
            call.Token));
        return new AsyncUnaryCall<TResponse>(
            response,
            HeadersAfterAsync(response, () => call.Current?.ResponseHeadersAsync),
            () => (call.Current ?? throw NotStarted()).GetStatus(),
            () => (call.Current ?? throw NotStarted()).GetTrailers(),
            call.Dispose);
    }

    /// <inheritdoc/>
    public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request)
    {
        request = RetrySafety.WithRequestId(request);
        var call = new LogicalCall<AsyncServerStreamingCall<TResponse>>(options.CancellationToken);
        var attemptOptions = options.WithCancellationToken(call.Token);
        var first = WithFailoverAsync(
            method,
            request,
            options.Deadline,
            null,
            async endpoint =>
            {
                var attempt = endpoint.Calls.AsyncServerStreamingCall(method, host, attemptOptions, request);
                call.Begin(endpoint, attempt);
                return await attempt.ResponseStream.MoveNext(call.Token).ConfigureAwait(false);
            },
            call.Token);
        return new AsyncServerStreamingCall<TResponse>(
            new FailoverStreamReader<TResponse>(this, method.FullName, call, first),
            HeadersAfterAsync(first, () => call.Current?.ResponseHeadersAsync),
            () => (call.Current ?? throw NotStarted()).GetStatus(),
            () => (call.Current ?? throw NotStarted()).GetTrailers(),
            call.Dispose);
    }

    /// <inheritdoc/>
    public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options) =>
        _pool.Pick(null).Endpoint.Calls.AsyncClientStreamingCall(method, host, options);

    /// <inheritdoc/>
    public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options) =>
        _pool.Pick(null).Endpoint.Calls.AsyncDuplexStreamingCall(method, host, options);

    /// <summary>Stops probes and closes the connections.</summary>
    public void Dispose() => _pool.Dispose();

    // An attempt that finds no place on its endpoint under `limit` is not sent, and one a server
    // sheds (UNAVAILABLE with kms-shed: full, none of it run) was not run: either goes at once to
    // another endpoint believed up and not full, else after a backoff of which half is certain (and
    // at least the server's pushback); its endpoint is not taken out — a shedding one is passed over
    // for its pushback — and any method may be sent again.
    private async Task<TResult> WithFailoverAsync<TResult>(IMethod method, object request, DateTime? deadline, ConcurrencyLimit? limit, Func<KmsEndpoint, Task<TResult>> attempt, CancellationToken cancellationToken)
    {
        List<KmsEndpoint>? tried = null;
        RpcException? last = null;
        var backoffs = 0;
        var full = false; // the last attempt found its endpoint full: not sent, or shed by the server
        var pushback = TimeSpan.Zero;
        KmsEndpoint? exhausted = null; // the endpoint whose RESOURCE_EXHAUSTED asked for retryInfoWait
        var retryInfoWait = TimeSpan.Zero;
        for (var number = 1; ; number++)
        {
            var (endpoint, fresh) = exhausted is { } same ? (same, false) : _pool.Pick(tried);
            var quota = exhausted is not null; // this attempt follows a RetryInfo delay waited out
            if (last is not null)
            {
                // Another endpoint believed up is tried at once: its health is not in doubt.
                // Going back to one that failed, or to one believed down, waits first. A call
                // refused for a quota waits what the server asked, and goes back to that server.
                var delay = quota ? retryInfoWait
                    : fresh ? TimeSpan.Zero : full ? Max(_backoff.DelayAtLeastHalf(++backoffs), pushback) : _backoff.Delay(++backoffs);
                exhausted = null;
                if (deadline is { } end && _time.GetUtcNow().UtcDateTime + delay >= end)
                {
                    ExceptionDispatchInfo.Throw(last);
                }

                ClientLog.Retrying(_logger, method.FullName, number, endpoint.Address, delay);
                await WaitAsync(delay, cancellationToken).ConfigureAwait(false);
            }

            if (limit is not null && !limit.TryEnter(endpoint))
            {
                last = limit.Refuse(method.FullName, endpoint);
                (full, pushback) = (true, TimeSpan.Zero);
                (tried ??= []).Add(endpoint);
                if (number >= _maxAttempts)
                {
                    throw last;
                }

                continue;
            }

            full = false;
            if (quota)
            {
                ClientMetrics.QuotaRetries.Add(1);
            }

            try
            {
                var result = await attempt(endpoint).ConfigureAwait(false);
                _pool.MarkUp(endpoint, "a call succeeded");
                return result;
            }
            catch (RpcException e) when (RetrySafety.AsUnavailable(e, cancellationToken) is { } failure)
            {
                if (RetrySafety.ShedByServer(failure))
                {
                    ServerShed(method.FullName, endpoint, failure);
                    (full, pushback) = (true, RetrySafety.Pushback(failure, _backoff.MaxDelay));
                    _pool.MarkFull(endpoint, pushback);
                }
                else
                {
                    _pool.MarkDown(endpoint, method.FullName, failure);
                }

                if (number >= _maxAttempts || !RetrySafety.MayRetry(method, request, failure))
                {
                    ExceptionDispatchInfo.Throw(failure);
                }

                last = failure;
                (tried ??= []).Add(endpoint);
            }
            catch (RpcException e) when (number < _maxAttempts && RetryInfoWait(method, request, e) is { } wait)
            {
                // A used-up quota or call rate (or a client address past its failed authentications):
                // the node is up and ran none of the call (of a unary call: a stream's may have begun,
                // RetrySafety.MayWaitOutRetryInfo). Not another node: its quotas are its own,
                // but the client's calls are spread over every node alike, so they are as used up
                // there, and the wait asked is this node's (docs/client.md).
                (full, pushback) = (false, TimeSpan.Zero);
                (exhausted, retryInfoWait, last) = (endpoint, wait, e);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.FailedPrecondition && e.Trailers.GetValue(KmsTrailers.Residency) is { } region
                && number < _maxAttempts && (tried?.Count ?? 0) + 1 < _pool.Endpoints.Count)
            {
                // This node is outside the key's residency region and did nothing: another node may be in it.
                ClientLog.ResidencyElsewhere(_logger, method.FullName, endpoint.Address, region);
                last = e;
                (tried ??= []).Add(endpoint);
            }
            finally
            {
                if (limit is not null)
                {
                    ConcurrencyLimit.Exit(endpoint);
                }
            }
        }
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    // How long to wait before sending again a call refused RESOURCE_EXHAUSTED with a RetryInfo delay
    // of at most MaxRetryInfoDelay — a unary call whatever it is (none of it ran), a stream if a repeat
    // is harmless (RetrySafety.MayWaitOutRetryInfo); null: the failure is returned.
    private TimeSpan? RetryInfoWait(IMethod method, object request, RpcException failure) =>
        MaxRetryInfoDelay > TimeSpan.Zero
        && RetrySafety.RetryInfoDelay(failure, MaxRetryInfoDelay) is { } asked && asked <= MaxRetryInfoDelay
        && RetrySafety.MayWaitOutRetryInfo(method, request)
            ? _backoff.AtLeast(asked, MaxRetryInfoDelay)
            : null;

    // A shed answer is what a full node gives thousands of times a second: counted every time,
    // logged at most once a second with the count.
    private void ServerShed(string method, KmsEndpoint endpoint, RpcException failure)
    {
        ClientMetrics.CallsShed.Add(1, ClientMetrics.ShedByServer);
        if (_serverShedLog.Count() is > 0 and var count)
        {
            // The reason is the server's; only the values it is known to send are logged.
            var reason = failure.Trailers.GetValue(KmsTrailers.Shed) switch
            {
                "capacity" => "capacity",
                "tenant" => "tenant",
                "queue_delay" => "queue_delay",
                _ => "other",
            };
            ClientLog.ShedByServer(_logger, method, count, endpoint.Address, reason);
        }
    }

    private async Task WaitAsync(TimeSpan delay, CancellationToken cancellationToken)
    {
        if (delay <= TimeSpan.Zero)
        {
            return;
        }

        try
        {
            await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            throw new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled while waiting to retry"));
        }
    }

    private static async Task<TResponse> RunUnaryAsync<TResponse>(LogicalCall<AsyncUnaryCall<TResponse>> call, Task<TResponse> attempts)
    {
        try
        {
            return await attempts.ConfigureAwait(false);
        }
        finally
        {
            call.Finish();
        }
    }

    // The headers of the attempt that gave the answer; known once that answer is.
    private static async Task<Metadata> HeadersAfterAsync(Task answer, Func<Task<Metadata>?> headers)
    {
        try
        {
            await answer.ConfigureAwait(false);
        }
        catch (RpcException)
        {
            // The headers of the failed attempt are what there is.
        }

        return await (headers() ?? throw NotStarted()).ConfigureAwait(false);
    }

    private static InvalidOperationException NotStarted() => new("no attempt of this call has started");

    /// <summary>One logical call: its attempts (the latest is current), and a cancellation that reaches all of them and the waits between.</summary>
    private sealed class LogicalCall<TAttempt>
        where TAttempt : class, IDisposable
    {
        private readonly CancellationTokenSource _cancel;
        private readonly Lock _lock = new();
        private TAttempt? _current;
        private KmsEndpoint? _endpoint;
        private bool _finished;

        public LogicalCall(CancellationToken callerToken)
        {
            _cancel = CancellationTokenSource.CreateLinkedTokenSource(callerToken);
            Token = _cancel.Token;
        }

        public CancellationToken Token { get; }

        public TAttempt? Current
        {
            get
            {
                lock (_lock)
                {
                    return _current;
                }
            }
        }

        public KmsEndpoint? Endpoint
        {
            get
            {
                lock (_lock)
                {
                    return _endpoint;
                }
            }
        }

        public void Begin(KmsEndpoint endpoint, TAttempt attempt)
        {
            TAttempt? previous;
            lock (_lock)
            {
                previous = _current;
                _current = attempt;
                _endpoint = endpoint;
            }

            previous?.Dispose();
        }

        /// <summary>Cancels the current attempt or wait, unless the call is over.</summary>
        public void Cancel()
        {
            lock (_lock)
            {
                if (_finished)
                {
                    return;
                }
            }

            try
            {
                _cancel.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // Finished meanwhile.
            }
        }

        /// <summary>The call is over: stop listening to the caller's token.</summary>
        public void Finish()
        {
            lock (_lock)
            {
                _finished = true;
            }

            _cancel.Dispose();
        }

        public void Dispose()
        {
            Cancel();
            Current?.Dispose();
        }
    }

    /// <summary>
    /// The response stream of a server-streaming call: the first message comes from the
    /// retried start of the call, the rest from the attempt that delivered it.
    /// </summary>
    private sealed class FailoverStreamReader<TResponse>(
        FailoverCallInvoker owner,
        string method,
        LogicalCall<AsyncServerStreamingCall<TResponse>> call,
        Task<bool> first) : IAsyncStreamReader<TResponse>
    {
        private bool _started;

        public TResponse Current => (call.Current ?? throw NotStarted()).ResponseStream.Current;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            bool more;
            try
            {
                if (!_started)
                {
                    _started = true;
                    using (cancellationToken.Register(call.Cancel))
                    {
                        more = await first.ConfigureAwait(false);
                    }
                }
                else
                {
                    more = await NextAsync(cancellationToken).ConfigureAwait(false);
                }
            }
            catch (RpcException)
            {
                call.Finish();
                throw;
            }

            if (!more)
            {
                call.Finish();
            }

            return more;
        }

        // Past the first message the stream is not retried, but a broken endpoint is still taken out.
        private async Task<bool> NextAsync(CancellationToken cancellationToken)
        {
            var attempt = call.Current ?? throw NotStarted();
            try
            {
                return await attempt.ResponseStream.MoveNext(cancellationToken).ConfigureAwait(false);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable)
            {
                if (call.Endpoint is { } endpoint)
                {
                    owner._pool.MarkDown(endpoint, method, e);
                }

                throw;
            }
        }
    }
}
