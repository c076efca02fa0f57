using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Kms.Client.Caching;
using Kms.Core.Errors;
using Kms.Core.Names;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Client.Envelope;

/// <summary>
/// Envelope encryption of records, files and streams under KMS keys: one call encrypts, one
/// call decrypts. Format: docs/envelope-format.md (key-committing, framed AES-256-GCM).
/// Thread-safe; create one per set of keys and reuse it (it holds the data-key cache).
/// </summary>
/// <remarks>
/// <para>Decryption fails with <see cref="EnvelopeDecryptionException"/> (a
/// <see cref="CryptographicException"/>) for any altered, cut or foreign message, and names
/// the KMS errors when the KMS refused every data key (decryption failed, key not found or
/// disabled, caller not allowed). A KMS that could not answer (UNAVAILABLE — an endpoint
/// down or its TLS handshake failed — DEADLINE_EXCEEDED, INTERNAL, …) says nothing about the
/// message: decryption then fails with its <see cref="RpcException"/>. Encryption fails with the KMS's
/// <see cref="RpcException"/> (e.g. PERMISSION_DENIED, FAILED_PRECONDITION for a disabled key)
/// or <see cref="ArgumentException"/> for a context over the limits.</para>
/// <para>The encryption context is not secret: it is stored in clear in the header and given
/// to the KMS, which binds it to the data key and records its keys (not values) in the audit log.</para>
/// <para>Every decryption names the context it expects, and a message with any other context is
/// refused before a KMS call: the binding protects a reader only if the reader says what the
/// context must be (a ciphertext copied from column <c>ssn</c> into column <c>nickname</c> has a
/// valid context — its own). An empty map means the message must have no context;
/// <see cref="AnyContext"/> accepts any (discovery readers, which then check
/// <see cref="EnvelopeDecryptingStream.EncryptionContext"/> or <see cref="ReadEncryptionContext"/>).</para>
/// <para>Decryption trusts the keys named in <see cref="EnvelopeOptions.TrustedKeyNames"/> (or
/// <see cref="EnvelopeOptions.KeyNames"/>), by name, for the encryptor's lifetime; never an alias,
/// which whoever may update it could point at a key of theirs.</para>
/// <para>Data keys and per-message keys are zeroed after use; one-shot decryption returns
/// nothing unless the whole message verified.</para>
/// </remarks>
public sealed class EnvelopeEncryptor : IDisposable
{
    private readonly IEnvelopeKeyProvider _provider;
    private readonly string[] _keyNames;
    private readonly HashSet<string> _trusted;
    private readonly string[] _untrustedAliases;
    private readonly bool _trustAnyKey;
    private readonly int _frameLength;
    private readonly DataKeyCache? _cache;
    private readonly bool _ownsCache = true;
    private readonly string _cacheKeyPrefix;
    private readonly ILogger _logger;
    private readonly bool _signed;
    private readonly bool _requireSigned;
    private readonly bool _streamSigned;

    // The least the header's wrapped-key entries take: each key's name as given (the KMS must
    // answer for it; an alias's key is named only in the answer: one byte) and one byte of
    // wrapped key, the rest of each wrapped key being known only from the KMS.
    private readonly int _minWrappedKeysLength;

    /// <summary>Envelopes whose data keys come from the Kms server behind <paramref name="client"/>.</summary>
    /// <remarks>Logs to <see cref="EnvelopeOptions.LoggerFactory"/>, or else to the client's logger factory.</remarks>
    public EnvelopeEncryptor(KmsClient client, EnvelopeOptions options)
        : this(new KmsEnvelopeKeyProvider(client), options, client?.LoggerFactory)
    {
    }

    /// <summary>Envelopes whose data keys come from <paramref name="provider"/>.</summary>
    public EnvelopeEncryptor(IEnvelopeKeyProvider provider, EnvelopeOptions options)
        : this(provider, options, (ILoggerFactory?)null)
    {
    }

    private EnvelopeEncryptor(IEnvelopeKeyProvider provider, EnvelopeOptions options, ILoggerFactory? clientLoggerFactory)
    {
        ArgumentNullException.ThrowIfNull(provider);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _provider = provider;
        _logger = (options.LoggerFactory ?? clientLoggerFactory)?.CreateLogger<EnvelopeEncryptor>() ?? (ILogger)NullLogger.Instance;
        _keyNames = [.. options.KeyNames];
        // Trust is the keys named, fixed here. Writing confers none: the key an alias among
        // KeyNames resolves to is trusted only if it is named (whoever may update the alias could
        // point it at a key of theirs for one write, and be trusted until the process ends).
        _untrustedAliases = options.TrustedKeyNames.Count > 0 ? [] : [.. options.KeyNames.Where(EnvelopeOptions.IsAlias)];
        _trusted = new HashSet<string>(options.TrustedKeyNames.Count > 0 ? options.TrustedKeyNames : options.KeyNames.Where(name => !EnvelopeOptions.IsAlias(name)), StringComparer.Ordinal);
        _trustAnyKey = options.TrustAnyKey;
        _frameLength = options.FrameLength;
        _cache = options.DataKeyCache is { } cacheOptions ? new DataKeyCache(cacheOptions) : null;
        _signed = options.Suite == EnvelopeSuite.CommittingSigned;
        _requireSigned = options.RequireSignedMessages;
        _streamSigned = options.StreamSignedMessages;
        _minWrappedKeysLength = _keyNames.Sum(name => 2 + (EnvelopeOptions.IsAlias(name) ? 1 : Encoding.UTF8.GetByteCount(name)) + 2 + 1);
        // The suite is part of every entry's key: a 0x0001 writer must never get a data key bound
        // to a context holding a public key (its readers refuse it), nor a 0x0002 writer one without.
        _cacheKeyPrefix = $"{(_signed ? EnvelopeFormat.Suite2 : EnvelopeFormat.Suite1):X4}|{string.Join('\n', _keyNames)}|";
    }

    /// <summary>
    /// For tests: an encryptor that uses <paramref name="sharedCache"/> (another encryptor's, not
    /// disposed with this one), to show that entries of one suite never serve the other.
    /// </summary>
    internal EnvelopeEncryptor(IEnvelopeKeyProvider provider, EnvelopeOptions options, DataKeyCache sharedCache)
        : this(provider, options, (ILoggerFactory?)null)
    {
        _cache?.Dispose();
        _cache = sharedCache;
        _ownsCache = false;
    }

    /// <summary>
    /// The expected context that accepts a message whatever its encryption context: for readers
    /// that discover it (then read it from <see cref="EnvelopeDecryptingStream.EncryptionContext"/>,
    /// or from <see cref="ReadEncryptionContext"/> once the message decrypted). A marker, compared
    /// by reference: it is not a context, and encrypting with it is refused.
    /// </summary>
    /// <remarks>
    /// Use it only where every context is acceptable: a reader that means one context and passes
    /// this accepts a ciphertext moved from any other place encrypted under a key it trusts.
    /// </remarks>
    public static IReadOnlyDictionary<string, string> AnyContext { get; } = EnvelopeContext.Any;

    /// <summary>The expected context of a message that must have none (an empty map does the same).</summary>
    public static IReadOnlyDictionary<string, string> NoContext => EnvelopeContext.Empty;

    internal DataKeyCache? Cache => _cache;

    /// <summary>Cache hits and misses so far; null without a cache.</summary>
    public DataKeyCacheStatistics? CacheStatistics => _cache?.Statistics;

    /// <summary>Encrypts a record into one envelope message.</summary>
    /// <param name="plaintext">The record.</param>
    /// <param name="encryptionContext">Stored in the header, sent to the KMS, one cached data key per context (e.g. table and column).</param>
    /// <param name="associatedData">Bound to the message but not stored in it, never sent anywhere (e.g. the row id); the reader supplies the same bytes.</param>
    /// <param name="cancellationToken">Cancels the KMS call.</param>
    public async Task<byte[]> EncryptAsync(ReadOnlyMemory<byte> plaintext, IReadOnlyDictionary<string, string>? encryptionContext = null, ReadOnlyMemory<byte> associatedData = default, CancellationToken cancellationToken = default)
    {
        // The encoding is taken once and the KMS calls, the header and the cache all use it (the
        // KMS calls a snapshot decoded from it): a caller changing its dictionary later changes nothing.
        var callerContext = EncodeCallerContext(encryptionContext);
        using var materials = await GetMaterialsAsync(callerContext, plaintext.Length, cancellationToken).ConfigureAwait(false);
        using var signature = TakeSignature(materials);
        return EnvelopeMessage.Seal(materials.DataKey, KernelRandom.MessageId(), materials.EncodedContext, materials.Wrapped, _frameLength, plaintext.Span, associatedData.Span, signature);
    }

    /// <summary>
    /// Encrypts a record into <paramref name="destination"/> (no allocation for the message);
    /// returns the message's length. Size the destination with <see cref="GetMaxMessageLength"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The destination is too small (nothing is written): before any KMS
    /// call or cache lease when it could not hold the message even with the shortest wrapped keys,
    /// else once the data key is wrapped.</exception>
    public async Task<int> EncryptAsync(ReadOnlyMemory<byte> plaintext, Memory<byte> destination, IReadOnlyDictionary<string, string>? encryptionContext = null, ReadOnlyMemory<byte> associatedData = default, CancellationToken cancellationToken = default)
    {
        // The encoding is taken once and the KMS calls, the header and the cache all use it (the
        // KMS calls a snapshot decoded from it): a caller changing its dictionary later changes nothing.
        // Checked before the KMS call or cache lease: a refused call must not use up one of a
        // cached data key's messages.
        if (plaintext.Span.Overlaps(destination.Span))
        {
            throw new ArgumentException("the destination must not overlap the plaintext", nameof(destination));
        }

        var callerContext = EncodeCallerContext(encryptionContext);

        // The message's exact length is known only once its data key is wrapped; a destination
        // short of everything else it holds is refused now, before the KMS call or cache lease.
        // SealInto checks the exact length.
        var atLeast = MessageLength(callerContext.Length, _minWrappedKeysLength, plaintext.Length);
        if (destination.Length < atLeast)
        {
            throw new ArgumentException($"the destination holds {destination.Length} bytes; this message needs at least {atLeast}", nameof(destination));
        }

        using var materials = await GetMaterialsAsync(callerContext, plaintext.Length, cancellationToken).ConfigureAwait(false);
        using var signature = TakeSignature(materials);
        return EnvelopeMessage.SealInto(materials.DataKey, KernelRandom.MessageId(), materials.EncodedContext, materials.Wrapped, _frameLength, plaintext.Span, associatedData.Span, destination.Span, signature);
    }

    /// <summary>
    /// The most bytes a message of <paramref name="plaintextLength"/> under this encryptor's keys
    /// and <paramref name="encryptionContext"/> can take (wrapped keys and key names counted at
    /// their limits, so a little more than the message will need).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The plaintext length is negative, or longer than one message holds (2³² − 2 frames).</exception>
    public long GetMaxMessageLength(long plaintextLength, IReadOnlyDictionary<string, string>? encryptionContext = null)
    {
        // Past a message's capacity the frame count times the frame's size overflowed: a negative
        // or small "maximum" for a plaintext no message can hold.
        ArgumentOutOfRangeException.ThrowIfNegative(plaintextLength);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(plaintextLength, EnvelopeFormat.MaxPlaintextLength(_frameLength));
        return MessageLength(
            EnvelopeContext.Encode(encryptionContext).Length,
            _keyNames.Length * (2 + EnvelopeFormat.MaxKeyNameBytes + 2 + EnvelopeFormat.MaxWrappedKeyBytes),
            plaintextLength);
    }

    /// <summary>
    /// A message's length from its caller's encoded context, the length of its header's wrapped-key
    /// entries and its plaintext's. A signed message's context has one more entry (the public key,
    /// of fixed length), and a footer follows.
    /// </summary>
    private long MessageLength(int callerContextLength, int wrappedKeysLength, long plaintextLength)
    {
        var publicKey = _signed ? 8 + EnvelopeFormat.PublicKeyContextKey.Length + EnvelopeSignature.EncodedPublicKeyLength : 0;
        var header = EnvelopeFormat.FixedPrefixLength + callerContextLength + publicKey + 1 + wrappedKeysLength
            + 4 + EnvelopeFormat.CommitmentLength + EnvelopeFormat.TagLength;
        return EnvelopeFormat.MessageLength(header, plaintextLength, _frameLength) + (_signed ? EnvelopeFormat.SignatureLength : 0);
    }

    /// <summary>Encrypts a record into one envelope message.</summary>
    public Task<byte[]> EncryptAsync(byte[] plaintext, IReadOnlyDictionary<string, string>? encryptionContext = null, byte[]? associatedData = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(plaintext);
        return EncryptAsync(plaintext.AsMemory(), encryptionContext, associatedData, cancellationToken);
    }

    /// <summary>
    /// Decrypts a whole message whose encryption context is exactly <paramref name="expectedContext"/>.
    /// </summary>
    /// <param name="message">The envelope message.</param>
    /// <param name="expectedContext">The context the message must have: the map it was encrypted with
    /// (<see cref="NoContext"/> or an empty map: none), or <see cref="AnyContext"/> to accept any —
    /// then <see cref="ReadEncryptionContext"/> of the same bytes gives the context, authenticated
    /// once this returned.</param>
    /// <param name="associatedData">The bytes given at encryption.</param>
    /// <param name="cancellationToken">Cancels the KMS call.</param>
    /// <exception cref="EnvelopeDecryptionException">Whatever was wrong with the message (another context included), or the KMS refused its data keys.</exception>
    /// <exception cref="RpcException">The KMS could not answer: the message is not known to be bad; retry later.</exception>
    public async Task<byte[]> DecryptAsync(ReadOnlyMemory<byte> message, IReadOnlyDictionary<string, string> expectedContext, ReadOnlyMemory<byte> associatedData = default, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(expectedContext);
        var headerLength = EnvelopeHeader.Measure(message.Span);
        if (headerLength > message.Length)
        {
            throw EnvelopeDecryptionException.Malformed("the header is cut short");
        }

        var header = EnvelopeHeader.Parse(message.Span[..headerLength]);
        using var signature = CheckSuite(header, streaming: false);
        CheckContext(header, expectedContext);
        var (dataKey, cacheKey) = await UnwrapAsync(header, cancellationToken).ConfigureAwait(false);
        try
        {
            using var cipher = OpenCipher(dataKey, cacheKey, header, message.Span[..header.BodyLength], associatedData.Span);
            var end = message.Length;
            if (signature is not null)
            {
                // The whole message is here: its signature is checked before any frame is decrypted.
                end -= EnvelopeFormat.SignatureLength;
                if (end < headerLength)
                {
                    throw EnvelopeDecryptionException.Failed();
                }

                signature.Append(message.Span[..end]);
                if (!signature.Verify(message.Span[end..]))
                {
                    throw EnvelopeDecryptionException.Failed();
                }
            }

            return EnvelopeMessage.Open(cipher, header.FrameLength, message.Span[headerLength..end]);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(dataKey);
        }
    }

    /// <summary>Decrypts a whole message whose encryption context is exactly <paramref name="expectedContext"/> (<see cref="AnyContext"/>: any).</summary>
    public Task<byte[]> DecryptAsync(byte[] message, IReadOnlyDictionary<string, string> expectedContext, byte[]? associatedData = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        return DecryptAsync(message.AsMemory(), expectedContext, associatedData, cancellationToken);
    }

    /// <summary>
    /// The encryption context a message's header claims — unauthenticated until the message
    /// decrypts (the header tag covers it); before that, for choosing what to expect, never for trusting.
    /// </summary>
    public static IReadOnlyDictionary<string, string> ReadEncryptionContext(ReadOnlySpan<byte> message)
    {
        var headerLength = EnvelopeHeader.Measure(message);
        if (headerLength > message.Length)
        {
            throw EnvelopeDecryptionException.Malformed("the header is cut short");
        }

        return EnvelopeHeader.Parse(message[..headerLength]).CallerContext;
    }

    /// <summary>
    /// Encrypts <paramref name="plaintext"/> from its position to its end into <paramref name="destination"/>,
    /// in constant memory. Neither stream is disposed.
    /// </summary>
    /// <remarks>
    /// A seekable source is held to the length it had when this started: if it gives more, or
    /// ends early (a file cut or replaced while it was read), this throws
    /// <see cref="InvalidOperationException"/> and the message on the destination is left
    /// without its final frame, which every reader refuses — never a whole message of part of the file.
    /// </remarks>
    public async Task EncryptAsync(Stream plaintext, Stream destination, IReadOnlyDictionary<string, string>? encryptionContext = null, ReadOnlyMemory<byte> associatedData = default, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(plaintext);
        var length = plaintext.CanSeek ? plaintext.Length - plaintext.Position : -1;
        await using var encrypting = await OpenEncryptingStreamAsync(destination, encryptionContext, length, associatedData, cancellationToken).ConfigureAwait(false);
        await encrypting.WriteFromAsync(plaintext, cancellationToken).ConfigureAwait(false);
        await encrypting.CompleteAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Decrypts a message from <paramref name="message"/> into <paramref name="destination"/>, in
    /// constant memory. Frames are written as they verify: if this throws, what was written is
    /// not a whole plaintext — discard it. For a signed message (suite 0x0002) it may not even be
    /// the writer's: every frame but the last is written before the signature is checked, and
    /// whoever holds the data key (a principal allowed only to decrypt) can write frames that
    /// verify (<see cref="EnvelopeDecryptingStream"/>); with <see cref="EnvelopeOptions.StreamSignedMessages"/>
    /// off, a signed message is refused before any KMS call and nothing is written. Neither stream is disposed.
    /// </summary>
    /// <param name="message">The envelope message, read from its position.</param>
    /// <param name="destination">Where the plaintext goes.</param>
    /// <param name="expectedContext">The context the message must have (<see cref="NoContext"/> or an empty map: none), or <see cref="AnyContext"/>.</param>
    /// <param name="associatedData">The bytes given at encryption.</param>
    /// <param name="cancellationToken">Cancels the KMS call and the copy.</param>
    /// <exception cref="EnvelopeDecryptionException">Whatever was wrong with the message (another context included), or the KMS refused its data keys.</exception>
    /// <exception cref="RpcException">The KMS could not answer: the message is not known to be bad; retry later.</exception>
    public async Task DecryptAsync(Stream message, Stream destination, IReadOnlyDictionary<string, string> expectedContext, ReadOnlyMemory<byte> associatedData = default, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        await using var decrypting = await OpenDecryptingStreamAsync(message, expectedContext, associatedData, cancellationToken).ConfigureAwait(false);
        await decrypting.DrainToAsync(destination, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// A stream that encrypts what is written to it into <paramref name="destination"/> (the
    /// header is written now). Call <see cref="EnvelopeEncryptingStream.CompleteAsync"/> at the end.
    /// </summary>
    /// <remarks>
    /// Disposing the stream without completing it leaves a message every reader refuses. A
    /// wrapper that disposes the stream it wraps (<see cref="StreamWriter"/>,
    /// <see cref="System.IO.Compression.GZipStream"/>, <see cref="CryptoStream"/>) must be given
    /// <c>leaveOpen: true</c>; dispose the wrapper, then complete this stream (logged as event
    /// 3007, at Warning, when it is disposed after plaintext was written without being completed).
    /// A caller that gives the message up on purpose calls <see cref="EnvelopeEncryptingStream.Abandon"/>
    /// first, and nothing is logged.
    /// </remarks>
    /// <param name="destination">Where the message goes; not disposed.</param>
    /// <param name="encryptionContext">The context bound to the message.</param>
    /// <param name="plaintextLength">The plaintext's exact length if known (lets the data-key cache count bytes): the stream refuses a byte more, and completing with fewer throws, leaving the message incomplete. -1 if not known, and the message gets its own data key. More than a message holds (2³² − 2 frames) is refused, <see cref="ArgumentOutOfRangeException"/>, before any KMS call.</param>
    /// <param name="associatedData">Bound to the message, not stored in it; the reader supplies the same bytes.</param>
    /// <param name="cancellationToken">Cancels the KMS call and the header write.</param>
    public async Task<EnvelopeEncryptingStream> OpenEncryptingStreamAsync(Stream destination, IReadOnlyDictionary<string, string>? encryptionContext = null, long plaintextLength = -1, ReadOnlyMemory<byte> associatedData = default, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (!destination.CanWrite)
        {
            throw new ArgumentException("the destination must be writable", nameof(destination));
        }

        // A declared length is exact: one no message can hold would fail only after 2³² − 2 frames,
        // and take that many bytes from a cached data key's budget first.
        ArgumentOutOfRangeException.ThrowIfGreaterThan(plaintextLength, EnvelopeFormat.MaxPlaintextLength(_frameLength));

        // The encoding is taken once and the KMS calls, the header and the cache all use it (the
        // KMS calls a snapshot decoded from it): a caller changing its dictionary later changes nothing.
        var callerContext = EncodeCallerContext(encryptionContext);
        EnvelopeSignature? signature;
        FrameCipher? cipher = null;
        EnvelopeHeader header;
        EnvelopeEncryptingStream stream;
        using (var materials = await GetMaterialsAsync(callerContext, plaintextLength, cancellationToken).ConfigureAwait(false))
        {
            // The stream holds the signing key pair until it is disposed: a cached pair evicted
            // meanwhile is disposed only then. Until the stream exists, the pair and the cipher are
            // this method's to release.
            signature = TakeSignature(materials);
            try
            {
                var messageId = KernelRandom.MessageId();
                var suite = _signed ? EnvelopeFormat.Suite2 : EnvelopeFormat.Suite1;
                cipher = FrameCipher.ForWriting(suite, materials.DataKey, messageId, out var commitment);
                header = new EnvelopeHeader(messageId, materials.EncodedContext, null, materials.Wrapped, _frameLength, commitment, suite);

                // A declared length reserved bytes in the data-key cache: the stream holds the writer to it.
                FaultForTests?.Invoke("stream");
                stream = new EnvelopeEncryptingStream(destination, cipher, _frameLength, plaintextLength, _logger, signature, materials.Wrapped);
            }
            catch
            {
                cipher?.Dispose();
                signature?.Dispose();
                throw;
            }
        }

        try
        {
            var bytes = new byte[header.Length];
            header.WriteBody(bytes);
            cipher.SealHeader(bytes.AsSpan(0, header.BodyLength), associatedData.Span, bytes.AsSpan(header.BodyLength));
            signature?.Append(bytes);
            await destination.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
            return stream;
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Reads and checks a message's header from <paramref name="message"/> (reading no further),
    /// unwraps its data key, and returns a stream of its plaintext.
    /// </summary>
    /// <param name="message">The envelope message, read from its position; not disposed.</param>
    /// <param name="expectedContext">The context the message must have (<see cref="NoContext"/> or an empty map: none), or <see cref="AnyContext"/> — then read it from <see cref="EnvelopeDecryptingStream.EncryptionContext"/>.</param>
    /// <param name="associatedData">The bytes given at encryption.</param>
    /// <param name="cancellationToken">Cancels the header read and the KMS call.</param>
    /// <exception cref="EnvelopeDecryptionException">The header is not a valid, unaltered envelope header with the expected context for a trusted key; or the message is signed and <see cref="EnvelopeOptions.StreamSignedMessages"/> is off (before any KMS call).</exception>
    public async Task<EnvelopeDecryptingStream> OpenDecryptingStreamAsync(Stream message, IReadOnlyDictionary<string, string> expectedContext, ReadOnlyMemory<byte> associatedData = default, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        ArgumentNullException.ThrowIfNull(expectedContext);
        var headerBytes = await ReadHeaderAsync(message, cancellationToken).ConfigureAwait(false);
        var header = EnvelopeHeader.Parse(headerBytes);
        var signature = CheckSuite(header, streaming: true);
        try
        {
            CheckContext(header, expectedContext);
            var (dataKey, cacheKey) = await UnwrapAsync(header, cancellationToken).ConfigureAwait(false);
            try
            {
                var cipher = OpenCipher(dataKey, cacheKey, header, headerBytes.AsSpan(0, header.BodyLength), associatedData.Span);
                signature?.Append(headerBytes);
                return new EnvelopeDecryptingStream(message, cipher, header.FrameLength, header.CallerContext, signature);
            }
            finally
            {
                CryptographicOperations.ZeroMemory(dataKey);
            }
        }
        catch
        {
            signature?.Dispose();
            throw;
        }
    }

    /// <summary>Zeroes and drops the cached data keys, and releases their signing key pairs (each disposed once no stream still holds it).</summary>
    public void Dispose()
    {
        if (_ownsCache)
        {
            _cache?.Dispose();
        }
    }

    /// <summary>
    /// For tests: called where writing makes a signed message's signer (<c>"signature"</c>) and an
    /// encrypting stream (<c>"stream"</c>); a throw there stands for that constructor failing.
    /// </summary>
    internal Action<string>? FaultForTests { get; set; }

    /// <summary>
    /// A signed message's signer over the materials' key-pair handle, which it then owns (null for
    /// suite 0x0001). If the signer cannot be made the handle is released here, never left counted.
    /// </summary>
    private EnvelopeSignature? TakeSignature(EncryptionMaterials materials)
    {
        if (materials.TakeSigning() is not { } signing)
        {
            return null;
        }

        try
        {
            FaultForTests?.Invoke("signature");
            return EnvelopeSignature.ForWriting(signing);
        }
        catch
        {
            signing.Dispose();
            throw;
        }
    }

    /// <summary>The header, read exactly (never past it), every length checked before it is read.</summary>
    private static async Task<byte[]> ReadHeaderAsync(Stream message, CancellationToken cancellationToken)
    {
        var buffer = new byte[EnvelopeFormat.FixedPrefixLength + 4];
        var have = 0;
        while (true)
        {
            var needed = EnvelopeHeader.Measure(buffer.AsSpan(0, have));
            if (needed <= have)
            {
                return buffer.AsSpan(0, needed).ToArray();
            }

            if (needed > buffer.Length)
            {
                Array.Resize(ref buffer, Math.Min(EnvelopeFormat.MaxHeaderLength, Math.Max(needed, buffer.Length * 2)));
            }

            var read = await message.ReadAtLeastAsync(buffer.AsMemory(have, needed - have), needed - have, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
            have += read;
            if (have < needed)
            {
                throw have == 0
                    ? EnvelopeDecryptionException.Malformed("the stream is empty")
                    : EnvelopeDecryptionException.Malformed("the header is cut short");
            }
        }
    }

    /// <summary>
    /// The header's context (a signed message's without its public key) is exactly
    /// <paramref name="expected"/> (an empty map: none), unless that is <see cref="AnyContext"/>.
    /// </summary>
    private static void CheckContext(EnvelopeHeader header, IReadOnlyDictionary<string, string> expected)
    {
        if (ReferenceEquals(expected, EnvelopeContext.Any))
        {
            return;
        }

        var context = header.CallerContext;
        if (expected.Count != context.Count
            || expected.Any(entry => !context.TryGetValue(entry.Key, out var value) || value != entry.Value))
        {
            throw new EnvelopeDecryptionException("the message's encryption context is not the expected one");
        }
    }

    /// <summary>
    /// The suite is one this reader takes, <paramref name="streaming"/> or not; a signed message's
    /// verifier (the caller disposes it), or null for suite 0x0001. Before any KMS call.
    /// </summary>
    /// <exception cref="EnvelopeDecryptionException">Suite 0x0001 and signed messages are required; suite
    /// 0x0002 streamed and signed messages are not streamed; or the context holds no valid public
    /// key (0x0002) or holds one (0x0001: made from a signed message's data key) — those two with
    /// the opaque message, as any alteration.</exception>
    private EnvelopeSignature? CheckSuite(EnvelopeHeader header, bool streaming)
    {
        if (header.Signed)
        {
            // The reader's choice, not the message's fault: said plainly, with what to do instead.
            if (streaming && !_streamSigned)
            {
                throw new EnvelopeDecryptionException(
                    $"the message is signed (suite 0x{EnvelopeFormat.Suite2:X4}) and this reader does not stream signed messages: a stream would release its frames before the signature at its end is verified. Decrypt it in one shot (DecryptAsync of the whole message verifies the signature first), or set EnvelopeOptions.StreamSignedMessages");
            }

            return EnvelopeSignature.ForReading(header.Context) ?? throw EnvelopeDecryptionException.Failed();
        }

        if (_requireSigned)
        {
            throw new EnvelopeDecryptionException($"the message is not signed (suite 0x{header.Suite:X4}); this reader requires signed messages (suite 0x{EnvelopeFormat.Suite2:X4})");
        }

        // No writer puts a public key in a 0x0001 message's context; one there was made from a
        // signed message's data key by someone who could decrypt it but not sign (a downgrade).
        if (header.Context.Keys.Any(key => key == EnvelopeFormat.PublicKeyContextKey))
        {
            throw EnvelopeDecryptionException.Failed();
        }

        return null;
    }

    /// <summary>
    /// The caller's context, validated and encoded once (a caller changing its dictionary later
    /// changes nothing): what a data key is cached under. A signed writer adds its public key to it
    /// (<see cref="WithPublicKey"/>) before asking the KMS.
    /// </summary>
    /// <exception cref="ArgumentException">The context uses the reserved key, or breaks a limit (a signed message's caller has one entry fewer).</exception>
    private byte[] EncodeCallerContext(IReadOnlyDictionary<string, string>? context)
    {
        if (context is not null && !ReferenceEquals(context, EnvelopeContext.Any) && context.Keys.Any(key => key == EnvelopeFormat.PublicKeyContextKey))
        {
            throw new ArgumentException($"the encryption-context key {EnvelopeFormat.PublicKeyContextKey} is reserved: a signed envelope message (suite 0x0002) carries its public key there", nameof(context));
        }

        var encoded = EnvelopeContext.Encode(context);
        if (_signed && EnvelopeContext.Decode(encoded).Count >= EnvelopeFormat.MaxContextEntries)
        {
            throw new ArgumentException($"a signed envelope message's encryption context has at most {EnvelopeFormat.MaxContextEntries - 1} entries (the public key takes one of {EnvelopeFormat.MaxContextEntries})", nameof(context));
        }

        return encoded;
    }

    /// <summary>The caller's encoded context with <paramref name="publicKey"/> under its reserved key.</summary>
    private static byte[] WithPublicKey(byte[] callerContext, string publicKey)
    {
        var withKey = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in EnvelopeContext.Decode(callerContext))
        {
            withKey[key] = value;
        }

        withKey[EnvelopeFormat.PublicKeyContextKey] = publicKey;
        return EnvelopeContext.Encode(withKey);
    }

    /// <summary>
    /// The materials of one message (the caller disposes them): from the cache when there is one
    /// and the message's length is known and within its bounds, else a data key of its own.
    /// </summary>
    private async Task<EncryptionMaterials> GetMaterialsAsync(
        byte[] callerContext,
        long plaintextLength,
        CancellationToken cancellationToken)
    {
        if (_cache is null || plaintextLength < 0 || !_cache.Accepts(plaintextLength))
        {
            return await GenerateAsync(callerContext, cancellationToken).ConfigureAwait(false);
        }

        // One cache entry per (suite, keys, caller's context); a signed entry holds its key pair
        // and the context with its public key (docs/envelope-format-signed.md, "Caching"). The
        // KMS call it makes is shared by every caller waiting on it, so it does not take any one
        // caller's cancellation.
        var cacheKey = _cacheKeyPrefix + Convert.ToBase64String(callerContext);
        return await _cache.LeaseForEncryptionAsync(cacheKey, plaintextLength, () => GenerateAsync(callerContext, CancellationToken.None), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A new data key under the caller's context; a signed writer's under that context plus a new key pair's public key.</summary>
    private async Task<EncryptionMaterials> GenerateAsync(byte[] callerContext, CancellationToken cancellationToken)
    {
        var signing = _signed ? SigningKey.Create() : null;
        try
        {
            var encodedContext = signing is null ? callerContext : WithPublicKey(callerContext, signing.Key.EncodedPublicKey);
            var (dataKey, wrapped) = await GenerateDataKeyAsync(encodedContext, cancellationToken).ConfigureAwait(false);
            return new EncryptionMaterials(dataKey, wrapped, encodedContext, signing);
        }
        catch
        {
            signing?.Dispose();
            throw;
        }
    }

    /// <summary>GenerateDataKey under the first key, Encrypt under the others, all under <paramref name="encodedContext"/>; the data key is the caller's to zero.</summary>
    private async Task<(byte[] DataKey, IReadOnlyList<WrappedDataKey> Wrapped)> GenerateDataKeyAsync(byte[] encodedContext, CancellationToken cancellationToken)
    {
        var context = EnvelopeContext.Decode(encodedContext);
        using var generated = await _provider.GenerateDataKeyAsync(_keyNames[0], context, cancellationToken).ConfigureAwait(false);
        if (generated.Plaintext.Length != EnvelopeFormat.DataKeyLength)
        {
            throw new InvalidOperationException($"the key provider returned a {generated.Plaintext.Length}-byte data key; envelopes need {EnvelopeFormat.DataKeyLength}");
        }

        // A KMS (or whatever answers in its place) that zeroed its buffer before sending it: the
        // data would be encrypted under a key anyone knows, in a message nobody can decrypt.
        if (!generated.Plaintext.Span.ContainsAnyExcept((byte)0))
        {
            throw new InvalidOperationException("the key provider returned a data key of zeros");
        }

        CheckAnswer(_keyNames[0], generated.Wrapped);
        var others = await Task.WhenAll(_keyNames.Skip(1).Select(name => _provider.WrapDataKeyAsync(name, generated.Plaintext, context, cancellationToken))).ConfigureAwait(false);
        for (var i = 0; i < others.Length; i++)
        {
            CheckAnswer(_keyNames[i + 1], others[i]);
        }

        WrappedDataKey[] wrapped = [generated.Wrapped, .. others];
        EnvelopeHeader.ValidateForWriting(wrapped, _frameLength);

        var dataKey = GC.AllocateUninitializedArray<byte>(EnvelopeFormat.DataKeyLength, pinned: true);
        generated.Plaintext.Span.CopyTo(dataKey);
        return (dataKey, wrapped);
    }

    /// <summary>
    /// The KMS's wrapping of the data key under <paramref name="asked"/> names that key (an alias:
    /// a key of the alias's tenant, the one it points to) and fits in a header. Otherwise the
    /// message would name a key nobody asked for — one this encryptor does not trust, so it could
    /// not read what it wrote — or be refused by every reader.
    /// </summary>
    /// <exception cref="InvalidOperationException">The answer is for another key, or its wrapped key is empty or over the limit.</exception>
    private static void CheckAnswer(string asked, WrappedDataKey answer)
    {
        if (EnvelopeOptions.IsAlias(asked)
            ? !IsKeyOfTenantOf(answer.KeyName, asked)
            : !string.Equals(answer.KeyName, asked, StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"asked to wrap the data key under {KmsErrors.Printable(asked)}, the key provider answered for {KmsErrors.Printable(answer.KeyName)}");
        }

        if (answer.Wrapped.Length is 0 or > EnvelopeFormat.MaxWrappedKeyBytes)
        {
            throw new InvalidOperationException($"the key provider wrapped the data key under {KmsErrors.Printable(asked)} into {answer.Wrapped.Length} bytes; an envelope carries 1 to {EnvelopeFormat.MaxWrappedKeyBytes}");
        }
    }

    /// <summary>Whether <paramref name="keyName"/> is a key's name (<c>tenants/{t}/keys/{k}</c>) in the tenant of the alias <paramref name="alias"/>: the only keys an alias points to.</summary>
    private static bool IsKeyOfTenantOf(string keyName, string alias)
    {
        try
        {
            return KeyName.Parse(keyName, "key").Tenant == AliasName.Parse(alias, "alias").Tenant;
        }
        catch (KmsException)
        {
            return false;
        }
    }

    /// <summary>
    /// The message's cipher under <paramref name="dataKey"/>. A data key that does not commit to
    /// the message is dropped from the decryption cache: the KMS's answer for that wrapped key
    /// was wrong (or the message forged), and kept, it would fail every message under the same
    /// wrapped key until it expired — one wrong answer would poison the cache.
    /// </summary>
    private FrameCipher OpenCipher(byte[] dataKey, string? cacheKey, EnvelopeHeader header, ReadOnlySpan<byte> headerBody, ReadOnlySpan<byte> associatedData)
    {
        try
        {
            return FrameCipher.ForReading(dataKey, header, headerBody, associatedData);
        }
        catch (EnvelopeDecryptionException e) when (e.WrongDataKey && cacheKey is not null)
        {
            _cache?.ForgetDecryption(cacheKey);
            throw;
        }
    }

    /// <summary>The data key from the first trusted wrapped key the KMS unwraps (the caller zeroes it), and its decryption-cache key (null without a cache).</summary>
    /// <exception cref="RpcException">No trusted key's data key was unwrapped and at least one failure was not a verdict about the message or the caller (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN, …): the message is not known to be bad; retry later.</exception>
    private async Task<(byte[] DataKey, string? CacheKey)> UnwrapAsync(EnvelopeHeader header, CancellationToken cancellationToken)
    {
        // Each trusted key once, in header order: a hostile header repeating a trusted key
        // name cannot make one read cost many KMS calls.
        var candidates = header.WrappedKeys
            .Where(k => _trustAnyKey || _trusted.Contains(k.KeyName))
            .DistinctBy(k => k.KeyName, StringComparer.Ordinal)
            .ToList();
        // Key names in messages come from an unauthenticated header: escaped as the server escapes
        // the names it repeats (control characters; U+202E and the others that hide or move text).
        if (candidates.Count == 0)
        {
            var aliases = _untrustedAliases.Length == 0
                ? ""
                : $" (an alias is not trusted: name the keys to decrypt under in TrustedKeyNames, not {string.Join(", ", _untrustedAliases.Select(KmsErrors.Printable))})";
            throw new EnvelopeDecryptionException(
                $"none of the message's keys is trusted by this encryptor: {string.Join(", ", header.WrappedKeys.Take(4).Select(k => KmsErrors.Printable(k.KeyName)))}{aliases}");
        }

        var failures = new List<Exception>();
        foreach (var wrapped in candidates)
        {
            try
            {
                if (_cache is null)
                {
                    return (await UnwrapCheckedAsync(wrapped, header.Context, cancellationToken).ConfigureAwait(false), null);
                }

                var cacheKey = DecryptionCacheKey(wrapped, header.EncodedContext);
                return (await _cache.LeaseForDecryptionAsync(cacheKey, ct => UnwrapCheckedAsync(wrapped, header.Context, ct), cancellationToken).ConfigureAwait(false), cacheKey);
            }
            catch (Exception exception) when (exception is RpcException or EnvelopeDecryptionException && !cancellationToken.IsCancellationRequested)
            {
                failures.Add(exception);
            }
        }

        // A KMS that could not answer says nothing about the message: surface that as the
        // RpcException it is, not as a CryptographicException a caller might take for
        // corruption. Only a verdict is a decryption failure.
        if (failures.OfType<RpcException>().FirstOrDefault(e => !IsVerdict(e)) is { } noVerdict)
        {
            throw noVerdict;
        }

        var reasons = candidates.Zip(failures, (key, failure) => failure is RpcException rpc
            ? $"{KmsErrors.Printable(key.KeyName)}: {rpc.StatusCode} {rpc.Status.Detail}"
            : $"{KmsErrors.Printable(key.KeyName)}: {failure.Message}");
        throw new EnvelopeDecryptionException(
            $"no data key in the message could be decrypted ({string.Join("; ", reasons)})",
            failures.Count == 1 ? failures[0] : new AggregateException(failures));
    }

    /// <summary>Unwraps through the provider; accepts only a 32-byte key from the key the header named.</summary>
    private async Task<byte[]> UnwrapCheckedAsync(WrappedDataKey wrapped, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        using var unwrapped = await _provider.UnwrapDataKeyAsync(wrapped, context, cancellationToken).ConfigureAwait(false);
        if (!string.Equals(unwrapped.KeyName, wrapped.KeyName, StringComparison.Ordinal) || unwrapped.Plaintext.Length != EnvelopeFormat.DataKeyLength)
        {
            // The header named one key, the KMS used another: a forged header.
            throw EnvelopeDecryptionException.Failed();
        }

        var dataKey = GC.AllocateUninitializedArray<byte>(EnvelopeFormat.DataKeyLength, pinned: true);
        unwrapped.Plaintext.Span.CopyTo(dataKey);
        return dataKey;
    }

    // The KMS's definitive answers about this message or this caller: "decryption failed" (the
    // server's INVALID_ARGUMENT for a ciphertext that does not decrypt, whatever the reason), a
    // key or version that does not exist or is disabled, a caller not allowed. Anything else —
    // UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL (a TLS handshake that failed
    // is one), UNKNOWN, CANCELLED — says nothing about the message.
    private static bool IsVerdict(RpcException exception) =>
        exception.StatusCode is StatusCode.InvalidArgument or StatusCode.NotFound or StatusCode.FailedPrecondition
            or StatusCode.PermissionDenied or StatusCode.Unauthenticated;

    /// <summary>Hash of key name, wrapped key and context: an entry serves only the exact unwrap the KMS allowed.</summary>
    private static string DecryptionCacheKey(WrappedDataKey wrapped, byte[] encodedContext)
    {
        var name = Encoding.UTF8.GetBytes(wrapped.KeyName);
        var input = new byte[2 + name.Length + 2 + wrapped.Wrapped.Length + encodedContext.Length];
        BinaryPrimitives.WriteUInt16BigEndian(input, (ushort)name.Length);
        name.CopyTo(input, 2);
        BinaryPrimitives.WriteUInt16BigEndian(input.AsSpan(2 + name.Length), (ushort)wrapped.Wrapped.Length);
        wrapped.Wrapped.CopyTo(input, 4 + name.Length);
        encodedContext.CopyTo(input, 4 + name.Length + wrapped.Wrapped.Length);
        return Convert.ToHexString(SHA256.HashData(input));
    }
}
