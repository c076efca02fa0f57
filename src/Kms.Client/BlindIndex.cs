using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Kms.Contracts.V1;
using Kms.Core;
using Kms.Core.Errors;

namespace Kms.Client;

/// <summary>
/// A blind index: a keyed, truncated MAC ("beacon") of a value stored encrypted, kept beside
/// its ciphertext so that rows can be found by equality of the value without decrypting them
/// (docs/client.md, "Looking up encrypted values: blind indexes").
/// </summary>
/// <remarks>
/// <para>
/// The beacon of a value is the first <see cref="Bits"/>/8 bytes of the KMS's HMAC-SHA256, under
/// one key <em>version</em>, of
/// <c>"kms blind index v1"</c> (18 ASCII bytes) ‖ bits (2 bytes, big-endian) ‖ the index name's
/// UTF-8 length (2 bytes, big-endian) ‖ the index name (UTF-8) ‖ the value's bytes as they are;
/// the beacon is returned as lowercase hex. Two indexes on one key version (other names, or other lengths) never share beacons.
/// </para>
/// <para>
/// The index is tied to one HMAC_SHA256 key version, named as such: a key's primary version
/// changes when the key rotates (by hand or on its schedule), and every beacon with it, so a key
/// name or an alias is refused. Another version means computing every stored beacon again.
/// </para>
/// <para>
/// Each <see cref="ComputeAsync(ReadOnlyMemory{byte}, CancellationToken)"/> is one GenerateMac
/// call (kms.crypto.sign on the key), audited by the server. The value is not normalised: the
/// caller does that (lowercase an e-mail address, strip a national id's separators), the same way
/// when storing and when looking up. A beacon reveals which rows hold equal values; with many bits,
/// how often each value occurs. With few, unequal values share beacons: a lookup returns
/// candidates, which the caller decrypts and compares.
/// </para>
/// </remarks>
public sealed class BlindIndex
{
    /// <summary>The shortest beacon, in bits.</summary>
    public const int MinBits = 8;

    /// <summary>The longest beacon, in bits: the whole HMAC-SHA256.</summary>
    public const int MaxBits = 256;

    /// <summary>The longest index name, in UTF-8 bytes.</summary>
    public const int MaxIndexNameBytes = 255;

    private const int MacBytes = 32;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly KmsClient _client;
    private readonly byte[] _prefix;

    /// <summary>An index named <paramref name="indexName"/> whose beacons are <paramref name="bits"/> long, under an HMAC_SHA256 key version.</summary>
    /// <param name="client">The client that makes the GenerateMac calls.</param>
    /// <param name="keyVersionName"><c>tenants/{tenant}/keys/{key}/versions/{n}</c>: a version, not a key or an alias.</param>
    /// <param name="indexName">What the index is of, e.g. <c>users.email</c>: 1 to 255 UTF-8 bytes, no control characters.</param>
    /// <param name="bits">The beacon's length: a multiple of 8 from 8 to 256.</param>
    /// <exception cref="ArgumentException">The key version or index name is not one.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="bits"/> is outside 8 to 256 or not a multiple of 8.</exception>
    public BlindIndex(KmsClient client, string keyVersionName, string indexName, int bits)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(keyVersionName);
        ArgumentNullException.ThrowIfNull(indexName);
        if (bits is < MinBits or > MaxBits || bits % 8 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), bits, $"a beacon is a multiple of 8 bits from {MinBits} to {MaxBits}");
        }

        Kms.Core.Names.KeyVersionName version;
        try
        {
            version = Kms.Core.Names.KeyVersionName.Parse(keyVersionName, "keyVersionName");
        }
        catch (KmsException)
        {
            throw new ArgumentException(
                $"{KmsErrors.Printable(keyVersionName)} is not a key version (tenants/{{tenant}}/keys/{{key}}/versions/{{n}}): a blind index is tied to one version, since a key's or alias's primary version changes when the key rotates, and every beacon with it",
                nameof(keyVersionName));
        }

        var nameBytes = ValidIndexName(indexName);
        _client = client;
        KeyVersionName = version.ToString();
        IndexName = indexName;
        Bits = bits;

        _prefix = new byte[Label.Length + 2 + 2 + nameBytes.Length];
        Label.CopyTo(_prefix);
        BinaryPrimitives.WriteUInt16BigEndian(_prefix.AsSpan(Label.Length), (ushort)bits);
        BinaryPrimitives.WriteUInt16BigEndian(_prefix.AsSpan(Label.Length + 2), (ushort)nameBytes.Length);
        nameBytes.CopyTo(_prefix.AsSpan(Label.Length + 4));
    }

    /// <summary>The key version whose MAC the beacons are.</summary>
    public string KeyVersionName { get; }

    /// <summary>The index's name, bound into every beacon.</summary>
    public string IndexName { get; }

    /// <summary>The beacons' length in bits (a beacon is <c>Bits / 4</c> hex digits).</summary>
    public int Bits { get; }

    /// <summary>The longest value, in bytes: the KMS MACs at most 64 KiB, of which the version label and index name take their part.</summary>
    public int MaxValueBytes => Limits.MaxEncryptPlaintextBytes - _prefix.Length;

    /// <summary>"kms blind index v1": the construction's version; another layout would take another label.</summary>
    private static ReadOnlySpan<byte> Label => "kms blind index v1"u8;

    /// <summary>The beacon of <paramref name="value"/>: <see cref="Bits"/>/4 lowercase hex digits. One GenerateMac call.</summary>
    /// <exception cref="ArgumentException">The value is longer than <see cref="MaxValueBytes"/>.</exception>
    /// <exception cref="InvalidOperationException">The KMS answered with a MAC that is not 32 bytes, or for another key version.</exception>
    /// <exception cref="Grpc.Core.RpcException">The KMS refused: a key of another purpose (FAILED_PRECONDITION), a caller without kms.crypto.sign (PERMISSION_DENIED), a disabled or destroyed version, …</exception>
    public async Task<string> ComputeAsync(ReadOnlyMemory<byte> value, CancellationToken cancellationToken = default)
    {
        var input = Input(value.Length, nameof(value));
        value.Span.CopyTo(input.AsSpan(_prefix.Length));
        return await MacAsync(input, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The beacon of <paramref name="value"/>'s UTF-8 encoding, as it is (normalise it first).</summary>
    /// <exception cref="ArgumentException">The value holds a lone surrogate (it has no UTF-8 encoding), or is longer than <see cref="MaxValueBytes"/> encoded.</exception>
    /// <exception cref="InvalidOperationException">The KMS answered with a MAC that is not 32 bytes, or for another key version.</exception>
    /// <exception cref="Grpc.Core.RpcException">The KMS refused (see the other overload).</exception>
    public async Task<string> ComputeAsync(string value, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(value);
        var length = Utf8Length(value, nameof(value));
        var input = Input(length, nameof(value));
        StrictUtf8.GetBytes(value, input.AsSpan(_prefix.Length));
        return await MacAsync(input, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The beacons of <paramref name="values"/>, in order: BatchGenerateMac calls of up to 1,000
    /// values (and 4 MiB of MAC input) each, made one after the other, instead of a GenerateMac
    /// call per value. Each value's beacon is the one <see cref="ComputeAsync(ReadOnlyMemory{byte}, CancellationToken)"/> gives.
    /// </summary>
    /// <remarks>
    /// Every value's length is checked before the first call. Each answer is checked as a single
    /// call's is (each MAC by this index's key version, 32 bytes) and, beyond it, one result per
    /// value, result i answering value i; an item the KMS refused stops the call. Each call's
    /// buffers, which hold the values, are zeroed when it ends, refused or not. A refusal is a
    /// <see cref="BlindIndexBatchException"/>, naming the values of the refused call (or the refused
    /// value) and holding the beacons computed before them: resume from its
    /// <see cref="BlindIndexBatchException.FailedValueIndex"/>.
    /// </remarks>
    /// <exception cref="ArgumentException">A value is longer than <see cref="MaxValueBytes"/>.</exception>
    /// <exception cref="InvalidOperationException">The KMS answered wrongly: not one result per value in order, a MAC that is not 32 bytes, or one by another key version; or a value changed while the beacons were computed.</exception>
    /// <exception cref="BlindIndexBatchException">The KMS refused a call, or a value (its status and trailers, naming the values' positions only); with the beacons before them.</exception>
    public async Task<IReadOnlyList<string>> ComputeManyAsync(IReadOnlyList<ReadOnlyMemory<byte>> values, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        var lengths = new int[values.Count];
        for (var i = 0; i < values.Count; i++)
        {
            lengths[i] = CheckedLength(values[i].Length, nameof(values));
        }

        return await ManyAsync(
            lengths,
            (i, input) =>
            {
                // Read again: a list that answers another value now (shorter, say) must not leave
                // uninitialised bytes in the MAC input.
                var value = values[i].Span;
                if (value.Length != lengths[i])
                {
                    return -1;
                }

                value.CopyTo(input.AsSpan(_prefix.Length));
                return value.Length;
            },
            cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The beacons of <paramref name="values"/>' UTF-8 encodings, as they are (normalise them first), in order: see the other overload.</summary>
    /// <exception cref="ArgumentException">A value holds a lone surrogate, or is longer than <see cref="MaxValueBytes"/> encoded.</exception>
    /// <exception cref="InvalidOperationException">The KMS answered wrongly (see the other overload).</exception>
    /// <exception cref="BlindIndexBatchException">The KMS refused a call, or a value; with the beacons before it.</exception>
    public async Task<IReadOnlyList<string>> ComputeManyAsync(IReadOnlyList<string> values, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        var lengths = new int[values.Count];
        for (var i = 0; i < values.Count; i++)
        {
            var value = values[i];
            ArgumentNullException.ThrowIfNull(value, nameof(values));
            lengths[i] = CheckedLength(Utf8Length(value, nameof(values)), nameof(values));
        }

        return await ManyAsync(
            lengths,
            (i, input) =>
            {
                try
                {
                    // Fewer bytes than checked is seen by the caller; more do not fit.
                    return StrictUtf8.GetBytes(values[i] ?? "", input.AsSpan(_prefix.Length));
                }
                catch (ArgumentException)
                {
                    return -1;
                }
            },
            cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The beacons of values of <paramref name="lengths"/> (checked), which <paramref name="fill"/>
    /// writes after the prefix (returning the bytes written, -1 when value i is no longer the length
    /// checked): one BatchGenerateMac per chunk of the server's limits. A refusal is a
    /// <see cref="BlindIndexBatchException"/> holding the beacons before it.
    /// </summary>
    private async Task<IReadOnlyList<string>> ManyAsync(int[] lengths, Func<int, byte[], int> fill, CancellationToken cancellationToken)
    {
        var beacons = new List<string>(lengths.Length);
        var start = 0;
        while (start < lengths.Length)
        {
            var end = start;
            long bytes = 0;
            while (end < lengths.Length && end - start < Limits.MaxBatchItems && bytes + _prefix.Length + lengths[end] <= Limits.MaxBatchBytes)
            {
                bytes += _prefix.Length + lengths[end];
                end++;
            }

            var request = new BatchGenerateMacRequest();
            var inputs = new List<byte[]>(end - start);
            BatchGenerateMacResponse answer;
            try
            {
                for (var i = start; i < end; i++)
                {
                    var input = Input(lengths[i], "values");
                    inputs.Add(input);
                    if (fill(i, input) != lengths[i])
                    {
                        throw new InvalidOperationException($"value {i} changed while the beacons were computed (its length is not the one checked); nothing of it was sent");
                    }

                    request.Requests.Add(new GenerateMacRequest { Name = KeyVersionName, Data = UnsafeByteOperations.UnsafeWrap(input) });
                }

                // The typed call refuses an answer that is not one result per request, result i answering request i.
                answer = await _client.BatchGenerateMacAsync(request, cancellationToken).ConfigureAwait(false);
            }
            catch (Grpc.Core.RpcException e)
            {
                // Which values the refused call held, and the beacons of those before them, which stay valid.
                throw new BlindIndexBatchException(
                    new Grpc.Core.Status(e.StatusCode, $"values {start} to {end - 1}: {e.Status.Detail}", e.Status.DebugException),
                    e.Trailers,
                    beacons);
            }
            finally
            {
                foreach (var input in inputs)
                {
                    CryptographicOperations.ZeroMemory(input);
                }
            }

            for (var j = 0; j < answer.Results.Count; j++)
            {
                var result = answer.Results[j];
                if (result.Status is { Code: not 0 } status)
                {
                    throw new BlindIndexBatchException(
                        new Grpc.Core.Status((Grpc.Core.StatusCode)status.Code, $"value {start + j}: {KmsErrors.Printable(status.Message)}"),
                        [],
                        beacons);
                }

                try
                {
                    beacons.Add(Beacon(result.Response ?? throw new InvalidOperationException("the KMS answered BatchGenerateMac with neither a MAC nor an error")));
                }
                catch (InvalidOperationException e)
                {
                    throw new InvalidOperationException($"value {start + j}: {e.Message}", e);
                }
            }

            start = end;
        }

        return beacons;
    }

    private static int Utf8Length(string value, string parameterName)
    {
        try
        {
            return StrictUtf8.GetByteCount(value);
        }
        catch (EncoderFallbackException)
        {
            // The fallback's message quotes the surrogate and its place: part of the value.
            throw new ArgumentException("the value holds a lone surrogate and has no UTF-8 encoding", parameterName);
        }
    }

    private static byte[] ValidIndexName(string indexName)
    {
        byte[] bytes;
        try
        {
            bytes = StrictUtf8.GetBytes(indexName);
        }
        catch (EncoderFallbackException)
        {
            throw new ArgumentException("the index name holds a lone surrogate", nameof(indexName));
        }

        if (bytes.Length is 0 or > MaxIndexNameBytes || indexName.Any(char.IsControl))
        {
            throw new ArgumentException($"an index name is 1 to {MaxIndexNameBytes} UTF-8 bytes without control characters, e.g. users.email", nameof(indexName));
        }

        return bytes;
    }

    private int CheckedLength(int valueLength, string parameterName) => valueLength <= MaxValueBytes
        ? valueLength
        : throw new ArgumentException($"the value is {valueLength} bytes; this index takes at most {MaxValueBytes} (the KMS MACs at most {Limits.MaxEncryptPlaintextBytes} bytes, prefix included)", parameterName);

    /// <summary>A pinned buffer holding the prefix, with room for a value of <paramref name="valueLength"/> bytes.</summary>
    private byte[] Input(int valueLength, string parameterName)
    {
        CheckedLength(valueLength, parameterName);
        var input = GC.AllocateUninitializedArray<byte>(_prefix.Length + valueLength, pinned: true);
        _prefix.CopyTo(input, 0);
        return input;
    }

    /// <summary>The beacon from the KMS's MAC of <paramref name="input"/>, which holds the value and is zeroed when the call ends.</summary>
    private async Task<string> MacAsync(byte[] input, CancellationToken cancellationToken)
    {
        GenerateMacResponse answer;
        try
        {
            answer = await _client.Raw.GenerateMacAsync(
                new GenerateMacRequest { Name = KeyVersionName, Data = UnsafeByteOperations.UnsafeWrap(input) },
                cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(input);
        }

        return Beacon(answer);
    }

    /// <summary>The beacon from the KMS's answer, checked: by this index's key version, and 32 bytes.</summary>
    private string Beacon(GenerateMacResponse answer)
    {
        // An answer for another version would put beacons nobody can find again in the index
        // (or find rows by another key's beacons); one of another length is no HMAC-SHA256.
        if (!string.Equals(answer.KeyVersion, KeyVersionName, StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"asked for a MAC by {KeyVersionName}, the KMS answered for {KmsErrors.Printable(answer.KeyVersion)}");
        }

        if (answer.Mac.Length != MacBytes)
        {
            throw new InvalidOperationException($"the KMS answered a {answer.Mac.Length}-byte MAC by {KeyVersionName}; a blind index takes HMAC-SHA256's {MacBytes} (is it an HMAC_SHA256 version?)");
        }

        return Convert.ToHexStringLower(answer.Mac.Span[..(Bits / 8)]);
    }
}
