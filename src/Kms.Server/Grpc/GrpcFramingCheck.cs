using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Net.Compression;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Options;

namespace Kms.Server.Grpc;

/// <summary>
/// What was wrong with a request's gRPC framing (the 5-byte header before each message: a
/// compressed flag and a length), for <see cref="MalformedRequestException"/> to answer once the
/// caller is authenticated. Held in the request's features.
/// </summary>
/// <param name="Status">INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for a message over the size limit.</param>
internal sealed record GrpcFramingProblem(global::Grpc.Core.Status Status);

/// <summary>
/// Checks the framing of the one message of a unary or server-streaming request before
/// grpc-dotnet reads it, and decompresses a compressed one within the size limit.
/// </summary>
/// <remarks>
/// <para>grpc-dotnet reads that message before any interceptor runs and answers a framing error
/// itself: INTERNAL "Incomplete message." (a frame or header cut short, no message),
/// "Additional data after the message received." (two messages), "Request did not include
/// grpc-encoding value with compressed message."; UNKNOWN with an Error and its stack trace for
/// a compressed flag other than 0 or 1, a length over 2^31 and compressed bytes that do not
/// decompress — unauthenticated, unaudited, uncounted. And it inflates a gzip message cut short
/// (in its deflate data or its trailer) to the part that arrived, and serves it.</para>
/// <para>This reader sits under grpc-dotnet's: it reads the whole body (as grpc-dotnet does,
/// examining without consuming, which Kestrel's flow control counts as read), then hands on
/// the body as it came, a compressed message decompressed (at most the limit) as an
/// uncompressed one, or — for a framing error — a message that is not valid protobuf, which
/// <see cref="ParseCheckedMethodProvider{TService}"/> turns into <see cref="MalformedRequest{TRequest}"/>:
/// the call then passes the interceptors as any malformed request (counted, audited as a
/// refusal, authenticated first) and the authorization interceptor answers the
/// <see cref="GrpcFramingProblem"/> recorded here; no handler runs. A message over the size limit is refused as
/// soon as its header arrives: RESOURCE_EXHAUSTED, gRPC's convention. A gzip message must be
/// one whole gzip member and nothing more (<see cref="GzipBody"/>): one cut short before its
/// trailer, or with bytes after it, is a framing error like the others
/// (the gzip provider is the only one this server configures). A compression grpc-dotnet
/// does not support is left to it: UNIMPLEMENTED naming the supported ones (gRPC's
/// compression spec). The messages of client-streaming and bidirectional calls (only
/// reflection's) are framed by grpc-dotnet alone.</para>
/// </remarks>
internal static class GrpcFramingCheck
{
    private const int HeaderSize = 5;

    // A message that is not valid protobuf (field 0 is no field): the deserializer's sentinel.
    private static readonly ReadOnlySequence<byte> Malformed = new([0, 0, 0, 0, 1, 0xFF]);

    /// <summary>
    /// The largest request message read from a caller without a valid credential, and for a method
    /// anyone may call (<see cref="Security.CallScope.Public"/>, the health service's, whose request
    /// names a service): enough for the request a probe sends (its names reach the audit's refusal
    /// summary), too little for the server to hold megabytes for nobody authenticated.
    /// </summary>
    public const int MaxUnauthenticatedRequestBytes = 4096;

    /// <summary>
    /// The largest request message of a method whose valid requests are small: names, ids, page
    /// tokens, a policy, a quorum approval — everything but the calls that carry data.
    /// </summary>
    public const int MaxSmallRequestBytes = 64 * 1024;

    /// <summary>
    /// The largest request message of a call that carries one item of data: 64 KiB of it
    /// (<see cref="Kms.Core.Limits.MaxEncryptPlaintextBytes"/>, a ciphertext of that, a message to
    /// sign or MAC) with up to two encryption contexts of 64 entries (80 KiB each) and its names.
    /// </summary>
    public const int MaxSingleItemRequestBytes = 256 * 1024;

    private const string KeyManagement = "/kms.v1.KeyManagementService/";

    // The methods of one item of data, by path (looked up per call without cutting the path); the
    // batches take Kms:MaxRequestBytes; every other method, MaxSmallRequestBytes.
    private static readonly HashSet<string> SingleItemMethods = new(
        new[] { "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "Sign", "Verify", "GenerateMac", "VerifyMac", "AsymmetricDecrypt", "ImportKeyVersion" }
            .Select(method => KeyManagement + method),
        StringComparer.Ordinal);

    /// <summary>
    /// The largest request message of a method (its path), before and after decompression: the
    /// batches <paramref name="maxMessageBytes"/> (<c>Kms:MaxRequestBytes</c>), a call of one item
    /// of data <see cref="MaxSingleItemRequestBytes"/>, any other <see cref="MaxSmallRequestBytes"/>
    /// (each at most <paramref name="maxMessageBytes"/>); with the option that names it.
    /// grpc-dotnet has a receive limit per service, not per method: it is checked here.
    /// </summary>
    public static (int Limit, string Name) LimitOf(string path, int maxMessageBytes)
    {
        return path.StartsWith(KeyManagement + "Batch", StringComparison.Ordinal) ? (maxMessageBytes, "Kms:MaxRequestBytes")
            : SingleItemMethods.Contains(path) ? (Math.Min(maxMessageBytes, MaxSingleItemRequestBytes), "a request of one item of data")
            : (Math.Min(maxMessageBytes, MaxSmallRequestBytes), "a request of a method that carries no data");
    }

    /// <summary>Adds the middleware; it must run after routing (WebApplication routes first).</summary>
    public static void Use(WebApplication app, int maxMessageBytes)
    {
        var providers = app.Services.GetRequiredService<IOptions<GrpcServiceOptions>>().Value.CompressionProviders
            .ToDictionary(p => p.EncodingName, StringComparer.Ordinal);
        var authentication = app.Services.GetRequiredService<Security.CallerAuthentication>();
        var inFlight = app.Services.GetRequiredService<Overload.RequestBytesInFlight>();
        app.Use((context, next) =>
        {
            if (context.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>() is { Method.Type: MethodType.Unary or MethodType.ServerStreaming }
                && context.Features.Get<IRequestBodyPipeFeature>() is { } body)
            {
                // A method without a rule is refused by the interceptor whatever its body: checked as a public one.
                var path = context.Request.Path.Value ?? "";
                var isPublic = !Security.AccessRules.ByMethod.TryGetValue(path, out var rule) || rule.Scope == Security.CallScope.Public;
                var (limit, limitName) = LimitOf(path, maxMessageBytes);
                context.Features.Set<IRequestBodyPipeFeature>(isPublic
                    ? new SingleMessageReader(context, body.Reader, Math.Min(maxMessageBytes, MaxUnauthenticatedRequestBytes), "a public method's request", providers, null, null)
                    : new SingleMessageReader(context, body.Reader, limit, limitName, providers, authentication, inFlight));
            }

            return next(context);
        });
    }

    // The reader is its own body feature: one object per call, not two. With an authentication, a
    // caller whose message has not all arrived is authenticated from the headers before the reader
    // waits for the rest, and the message of a call without a valid credential is read only up to
    // MaxUnauthenticatedRequestBytes: one announcing more is handed on without its body, so the server
    // holds no more than that of a message nobody authenticated is sending (slowly, or never
    // finishing); the interceptor refuses the call.
    // With an in-flight count, a message of an authenticated caller that has not all arrived is
    // counted against its tenant's bound by the length it declares, until the call ends; one that
    // would pass the bound is refused RESOURCE_EXHAUSTED instead of being waited for; a compressed
    // one's inflated bytes count against the same bound as they are produced (Decompress).
    private sealed class SingleMessageReader(HttpContext context, PipeReader inner, int limit, string limitName, Dictionary<string, ICompressionProvider> providers, Security.CallerAuthentication? authentication, Overload.RequestBytesInFlight? inFlight) : PipeReader, IRequestBodyPipeFeature
    {
        private int _limit = limit;
        private string _limitName = limitName;
        private string? _owner;
        private bool _counted;

        public PipeReader Reader => this;

        // What is served instead of the body once it was read (null: the body itself).
        private ReadOnlySequence<byte>? _replacement;
        private bool _checked;
        private bool _authenticated;
        private bool _unverified;

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            if (_replacement is { } replacement)
            {
                return new ReadResult(replacement, isCanceled: false, isCompleted: true);
            }

            if (_checked)
            {
                return await inner.ReadAsync(cancellationToken);
            }

            while (true)
            {
                var result = await inner.ReadAsync(cancellationToken);
                if (result.IsCanceled)
                {
                    return result;
                }

                // A compressed message is inflated only for a caller with a valid credential: who
                // sends it is checked first, whether or not it has all arrived, so a caller without
                // one makes the server inflate no more than MaxUnauthenticatedRequestBytes of it
                // (before, a few kilobytes arriving whole with their headers were inflated up to
                // Kms:MaxRequestBytes, and only then was the call refused UNAUTHENTICATED).
                if (authentication is not null && !_authenticated && result.Buffer.Length > 0 && result.Buffer.FirstSpan[0] == 1)
                {
                    _authenticated = true;
                    await LimitByCallerAsync(authentication);
                }

                var (problem, done, decompressed) = Check(result.Buffer, result.IsCompleted);

                // The message has not all arrived: before waiting for the rest, who is sending it
                // (once). A message that arrived whole with its headers — almost every call — is
                // authenticated once, by the interceptor, as before.
                if (problem is null && !done && authentication is not null && !_authenticated)
                {
                    _authenticated = true;
                    await LimitByCallerAsync(authentication);
                    (problem, done, decompressed) = Check(result.Buffer, result.IsCompleted);
                }

                if (problem is null && !done && _owner is not null && !_counted && result.Buffer.Length >= HeaderSize)
                {
                    problem = Count(result.Buffer);
                    done = problem is not null;
                }

                if (problem is null && !done)
                {
                    inner.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                    continue;
                }

                _checked = true;
                if (problem is null && decompressed is null)
                {
                    return result;
                }

                if (problem is not null)
                {
                    context.Features.Set(new GrpcFramingProblem(problem.Value));
                }

                inner.AdvanceTo(result.Buffer.End);
                _replacement = decompressed ?? Malformed;
                return new ReadResult(_replacement.Value, isCanceled: false, isCompleted: true);
            }
        }

        // Lowers the limit to MaxUnauthenticatedRequestBytes unless the caller has a valid credential.
        // An attempt that fails (the database unreachable) lowers it too: a message nobody can be held
        // to is read no further than an unauthenticated one, and one announcing more is answered
        // UNAVAILABLE (retryable), not RESOURCE_EXHAUSTED — the same call succeeds once callers can be
        // checked again. The failure itself is the interceptor's to answer (UNAVAILABLE), when it
        // authenticates again; thrown here it would reach the caller as UNKNOWN.
        private async Task LimitByCallerAsync(Security.CallerAuthentication authentication)
        {
            try
            {
                if (await authentication.AuthenticateBeforeBodyAsync(context) is not { } caller)
                {
                    (_limit, _limitName) = (Math.Min(_limit, MaxUnauthenticatedRequestBytes), "a request without a valid credential");
                }
                else if (inFlight is not null)
                {
                    _owner = Overload.RequestBytesInFlight.OwnerOf(caller);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                (_limit, _limitName, _unverified) = (Math.Min(_limit, MaxUnauthenticatedRequestBytes), "a request whose credential cannot be checked now", true);
            }
        }

        // Counts the message, by the length its header declares, against its caller's tenant until
        // the call ends; the refusal when that would pass the tenant's bound.
        private global::Grpc.Core.Status? Count(ReadOnlySequence<byte> body)
        {
            _counted = true;
            Span<byte> header = stackalloc byte[HeaderSize];
            body.Slice(0, HeaderSize).CopyTo(header);
            var length = BinaryPrimitives.ReadUInt32BigEndian(header[1..]);
            if (inFlight!.TryReserve(_owner!, length) is not { } reservation)
            {
                return new(StatusCode.ResourceExhausted, $"the request's message is {length} bytes and has not all arrived; the messages of your tenant still arriving or inflated at this server already hold nearly {inFlight.PerTenant} bytes (Kms:MaxRequestBytesInFlightPerTenant): send it again once those calls have ended");
            }

            context.Response.RegisterForDispose(reservation);
            return null;
        }

        public override bool TryRead(out ReadResult result)
        {
            if (_replacement is { } replacement)
            {
                result = new ReadResult(replacement, isCanceled: false, isCompleted: true);
                return true;
            }

            // Until the body has been checked, only ReadAsync reads it.
            result = default;
            return _checked && inner.TryRead(out result);
        }

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            if (_replacement is { } replacement)
            {
                _replacement = replacement.Slice(consumed);
            }
            else
            {
                inner.AdvanceTo(consumed, examined);
            }
        }

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => inner.Complete(exception);

        // The problem with the body so far (null: none yet), whether it is settled, and the
        // compressed message decompressed as an uncompressed frame.
        private (global::Grpc.Core.Status? Problem, bool Done, ReadOnlySequence<byte>? Decompressed) Check(ReadOnlySequence<byte> body, bool completed)
        {
            if (body.Length < HeaderSize)
            {
                return !completed ? (null, false, null)
                    : body.Length == 0 ? (Invalid("the request has no message; the method takes one"), true, null)
                    : (Invalid($"the request's message header is cut short: {body.Length} of its {HeaderSize} bytes arrived"), true, null);
            }

            Span<byte> header = stackalloc byte[HeaderSize];
            body.Slice(0, HeaderSize).CopyTo(header);
            var length = BinaryPrimitives.ReadUInt32BigEndian(header[1..]);
            if (header[0] > 1)
            {
                return (Invalid($"the request's message header has compressed flag {header[0]}; it must be 0 or 1"), true, null);
            }

            if (length > (uint)_limit)
            {
                return (OverLimit($"the request's message is {length} bytes; this server takes at most {_limit} ({_limitName})"), true, null);
            }

            var encoding = context.Request.Headers["grpc-encoding"].ToString();
            if (header[0] == 1 && encoding is "" or "identity")
            {
                return (Invalid(encoding.Length == 0
                    ? "the request's message is compressed (flag 1), but the request names no grpc-encoding"
                    : "the request's message is compressed (flag 1), but its grpc-encoding is identity"), true, null);
            }

            if (body.Length > HeaderSize + length)
            {
                return (Invalid("the request holds more than one message; the method takes one"), true, null);
            }

            if (body.Length < HeaderSize + length || !completed)
            {
                return completed
                    ? (Invalid($"the request's message is cut short: its header declares {length} bytes, {body.Length - HeaderSize} arrived"), true, null)
                    : (null, false, null);
            }

            // A compression grpc-dotnet does not support is its to answer (UNIMPLEMENTED).
            return header[0] == 1 && providers.TryGetValue(encoding, out var provider)
                ? Decompress(provider, body.Slice(HeaderSize))
                : (null, true, null);
        }

        // An authenticated caller's inflated bytes count against its tenant's
        // Kms:MaxRequestBytesInFlightPerTenant as they are produced, until the call ends; a message
        // whose inflation would pass the bound is refused RESOURCE_EXHAUSTED, what it inflated given
        // back at once. Before, a few kilobytes of gzip arriving whole were not counted, and one
        // token's calls had the server hold up to 5 MiB each, past its tenant's bound.
        private (global::Grpc.Core.Status? Problem, bool Done, ReadOnlySequence<byte>? Decompressed) Decompress(ICompressionProvider provider, ReadOnlySequence<byte> compressed)
        {
            if (_owner is null)
            {
                return Inflate(provider, compressed, null);
            }

            var reservation = inFlight!.Start(_owner);
            (global::Grpc.Core.Status? Problem, bool Done, ReadOnlySequence<byte>? Decompressed) inflated;
            try
            {
                inflated = Inflate(provider, compressed, reservation);
            }
            catch
            {
                // A decompression that fails otherwise than on bad data (zlib's ZLibException, a
                // provider's own error): what it counted is given back, not held for good.
                reservation.Dispose();
                throw;
            }

            if (inflated.Decompressed is null)
            {
                reservation.Dispose();
            }
            else
            {
                context.Response.RegisterForDispose(reservation);
            }

            return inflated;
        }

        // At most the limit, checked while inflating (a gzip bomb of the 5 MiB allowed is gigabytes),
        // each read counted against the reservation before it is kept; held in fixed-size segments,
        // so the server holds what it counts and at most one segment more (MessageInflater).
        private (global::Grpc.Core.Status? Problem, bool Done, ReadOnlySequence<byte>? Decompressed) Inflate(ICompressionProvider provider, ReadOnlySequence<byte> compressed, Overload.RequestBytesInFlight.Reservation? reservation)
        {
            var inflated = MessageInflater.Inflate(provider, compressed, _limit, reservation);
            return inflated.Outcome switch
            {
                MessageInflater.Outcome.Inflated => (null, true, inflated.Frame),
                MessageInflater.Outcome.OverLimit => (OverLimit($"the request's message decompresses ({provider.EncodingName}) to more than {_limit} bytes, the most this server takes ({_limitName})"), true, null),
                MessageInflater.Outcome.OverBound => (new(StatusCode.ResourceExhausted, $"the request's message decompresses ({provider.EncodingName}) to more than {inflated.InflatedBytes} bytes; with the messages of your tenant this server holds (still arriving, or inflated) that would pass {inFlight!.PerTenant} bytes (Kms:MaxRequestBytesInFlightPerTenant): send it again once those calls have ended"), true, null),
                MessageInflater.Outcome.NotDecompressible => (Invalid($"the request's message does not decompress as {provider.EncodingName}"), true, null),
                MessageInflater.Outcome.NotWholeGzip => (Invalid($"the request's message (gzip, {compressed.Length} bytes) is not one whole gzip member: it is cut short before its trailer, or has bytes after it (its last 8 bytes are not the CRC-32 and length of what it inflates to)"), true, null),
                _ => throw new System.Diagnostics.UnreachableException(),
            };
        }

        private static global::Grpc.Core.Status Invalid(string detail) => new(StatusCode.InvalidArgument, detail);

        // Over the limit: RESOURCE_EXHAUSTED, gRPC's convention — or UNAVAILABLE when the limit is
        // the lower one because the caller's credential could not be checked (try again later).
        private global::Grpc.Core.Status OverLimit(string detail) => _unverified
            ? new(StatusCode.Unavailable, detail + "; the server cannot check credentials now: try again")
            : new(StatusCode.ResourceExhausted, detail);
    }
}
