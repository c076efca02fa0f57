using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// A KMS stand-in for unit tests of the envelope format: wraps data keys with AES-GCM under a
/// local key per name, binding key name and context like the real KMS. Counts calls; can be
/// made to wait (for coalescing tests) or to fail for a key (for failover between keys).
/// </summary>
internal sealed class FakeKeyProvider : IEnvelopeKeyProvider
{
    private readonly ConcurrentDictionary<string, byte[]> _keys = new(StringComparer.Ordinal);
    private int _generateCalls;
    private int _wrapCalls;
    private int _unwrapCalls;

    public int GenerateCalls => _generateCalls;

    public int WrapCalls => _wrapCalls;

    public int UnwrapCalls => _unwrapCalls;

    /// <summary>When set, GenerateDataKey waits for it (coalescing tests).</summary>
    public TaskCompletionSource? Gate { get; set; }

    /// <summary>Keys the "KMS" refuses to unwrap with (as if disabled).</summary>
    public HashSet<string> Refused { get; } = new(StringComparer.Ordinal);

    /// <summary>Keys whose "KMS" cannot be reached (UNAVAILABLE).</summary>
    public HashSet<string> Unreachable { get; } = new(StringComparer.Ordinal);

    /// <summary>Keys the "KMS" answers with the given status when asked to unwrap.</summary>
    public Dictionary<string, StatusCode> Failing { get; } = new(StringComparer.Ordinal);

    /// <summary>Every plaintext data key handed out (to check they were zeroed).</summary>
    public ConcurrentBag<byte[]> HandedOut { get; } = [];

    public async Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _generateCalls);
        if (Gate is { } gate)
        {
            await gate.Task.WaitAsync(cancellationToken);
        }

        var dataKey = RandomNumberGenerator.GetBytes(32);
        var wrapped = Wrap(keyName, dataKey, context);
        var handed = dataKey.ToArray();
        HandedOut.Add(handed);
        CryptographicOperations.ZeroMemory(dataKey);
        return new GeneratedDataKey(handed, wrapped);
    }

    public Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _wrapCalls);
        return Task.FromResult(Wrap(keyName, dataKey.Span, context));
    }

    public Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _unwrapCalls);
        if (Failing.TryGetValue(wrappedKey.KeyName, out var code))
        {
            throw new RpcException(new Status(code, $"{code} for {wrappedKey.KeyName}"));
        }

        if (Unreachable.Contains(wrappedKey.KeyName))
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "no healthy endpoint"));
        }

        if (Refused.Contains(wrappedKey.KeyName))
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"key {wrappedKey.KeyName} is DISABLED"));
        }

        var blob = wrappedKey.Wrapped;
        if (blob.Length != 12 + 32 + 16)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "decryption failed"));
        }

        var dataKey = new byte[32];
        try
        {
            using var gcm = new AesGcm(KeyFor(wrappedKey.KeyName), 16);
            gcm.Decrypt(blob.AsSpan(0, 12), blob.AsSpan(12, 32), blob.AsSpan(44), dataKey, Aad(wrappedKey.KeyName, context));
        }
        catch (AuthenticationTagMismatchException)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "decryption failed"));
        }

        var handed = dataKey.ToArray();
        HandedOut.Add(handed);
        CryptographicOperations.ZeroMemory(dataKey);
        return Task.FromResult(new UnwrappedDataKey(handed, wrappedKey.KeyName));
    }

    private WrappedDataKey Wrap(string keyName, ReadOnlySpan<byte> dataKey, IReadOnlyDictionary<string, string> context)
    {
        var blob = new byte[12 + 32 + 16];
        RandomNumberGenerator.Fill(blob.AsSpan(0, 12));
        using var gcm = new AesGcm(KeyFor(keyName), 16);
        gcm.Encrypt(blob.AsSpan(0, 12), dataKey, blob.AsSpan(12, 32), blob.AsSpan(44), Aad(keyName, context));
        return new WrappedDataKey(keyName, blob);
    }

    private byte[] KeyFor(string keyName) => _keys.GetOrAdd(keyName, _ => RandomNumberGenerator.GetBytes(32));

    private static byte[] Aad(string keyName, IReadOnlyDictionary<string, string> context) =>
        Encoding.UTF8.GetBytes(keyName + "\0" + string.Join("\0", context.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => e.Key + "=" + e.Value)));
}

/// <summary>Maps fixed wrapped bytes to a fixed data key: for golden vectors (no KMS, deterministic).</summary>
/// <param name="reportedKey">The key name the "KMS" reports using; null: the key the message named.</param>
internal sealed class StaticKeyProvider(byte[] dataKey, IReadOnlyList<WrappedDataKey> known, string? reportedKey = null) : IEnvelopeKeyProvider
{
    public Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
        Task.FromResult(new GeneratedDataKey(dataKey.ToArray(), known.First(k => k.KeyName == keyName)));

    public Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> key, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
        Task.FromResult(known.First(k => k.KeyName == keyName));

    public Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
        known.Any(k => k.KeyName == wrappedKey.KeyName && k.Wrapped.AsSpan().SequenceEqual(wrappedKey.Wrapped))
            ? Task.FromResult(new UnwrappedDataKey(dataKey.ToArray(), reportedKey ?? wrappedKey.KeyName))
            : throw new RpcException(new Status(StatusCode.InvalidArgument, "decryption failed"));
}
