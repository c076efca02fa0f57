using System.Security.Cryptography;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using Kms.Client.Caching;
using Kms.Client.Envelope;

namespace Kms.Bench;

/// <summary>
/// The envelope SDK against raw .NET <see cref="AesGcm"/> on the same buffers, KMS calls
/// excluded (a warm data-key cache over an in-process key provider). Each category's baseline
/// is the raw GCM call; the ratio column is the SDK's cost relative to it.
/// </summary>
[MemoryDiagnoser]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class EnvelopeBenchmarks
{
    private static readonly Dictionary<string, string> Context = new() { ["table"] = "orders", ["column"] = "card" };
    private static readonly byte[] RowId = "orders/42"u8.ToArray();

    private readonly byte[] _iv = new byte[12];
    private readonly byte[] _tag = new byte[16];
    private byte[] _mebibyte = null!;
    private byte[] _mebibyteOut = null!;
    private byte[] _kibibyte = null!;
    private byte[] _kibibyteOut = null!;
    private byte[] _kibibyteMessage = null!;
    private byte[] _mebibyteMessage = null!;
    private AesGcm _aes = null!;
    private EnvelopeEncryptor _encryptor = null!;
    private EnvelopeEncryptor _quarterMebibyteFrames = null!;

    [GlobalSetup]
    public async Task Setup()
    {
        _mebibyte = RandomNumberGenerator.GetBytes(1 << 20);
        _mebibyteOut = new byte[1 << 20];
        _kibibyte = RandomNumberGenerator.GetBytes(1024);
        _kibibyteOut = new byte[1024];
        _aes = new AesGcm(RandomNumberGenerator.GetBytes(32), 16);
        _encryptor = Encryptor(64 * 1024);
        _mebibyteMessage = new byte[_encryptor.GetMaxMessageLength(1 << 20, Context)];
        _quarterMebibyteFrames = Encryptor(256 * 1024);
        await _quarterMebibyteFrames.EncryptAsync(_mebibyte, _mebibyteMessage.AsMemory(), Context);
        _kibibyteMessage = await _encryptor.EncryptAsync(_kibibyte, Context, RowId);
        await _encryptor.DecryptAsync(_kibibyteMessage, Context, RowId);
    }

    private static EnvelopeEncryptor Encryptor(int frameLength) => new(new LocalKeyProvider(), new EnvelopeOptions
    {
        KeyNames = ["tenants/bench/keys/envelope"],
        FrameLength = frameLength,
        DataKeyCache = new DataKeyCacheOptions { MaxAge = TimeSpan.FromHours(1), MaxMessagesPerKey = DataKeyCacheOptions.MessageLimit, MaxBytesPerKey = long.MaxValue, DecryptionMaxAge = TimeSpan.FromHours(1) },
    });

    [GlobalCleanup]
    public void Cleanup()
    {
        _aes.Dispose();
        _encryptor.Dispose();
        _quarterMebibyteFrames.Dispose();
    }

    [Benchmark(Baseline = true, Description = "raw AesGcm encrypt 1 MiB (one call)")]
    [BenchmarkCategory("1 MiB")]
    public byte[] RawAesGcm1MiB()
    {
        _aes.Encrypt(_iv, _mebibyte, _mebibyteOut, _tag);
        return _tag;
    }

    [Benchmark(Description = "envelope EncryptAsync 1 MiB into a buffer, 64 KiB frames, warm cache")]
    [BenchmarkCategory("1 MiB")]
    public Task<int> Envelope1MiBIntoBuffer() => _encryptor.EncryptAsync(_mebibyte, _mebibyteMessage.AsMemory(), Context);

    [Benchmark(Description = "raw AesGcm encrypt 1 MiB as 16 calls of 64 KiB (the frames' split alone)")]
    [BenchmarkCategory("1 MiB")]
    public byte[] RawAesGcm1MiBIn64KiBCalls()
    {
        for (var offset = 0; offset < _mebibyte.Length; offset += 64 * 1024)
        {
            _aes.Encrypt(_iv, _mebibyte.AsSpan(offset, 64 * 1024), _mebibyteOut.AsSpan(offset, 64 * 1024), _tag);
        }

        return _tag;
    }

    [Benchmark(Description = "envelope EncryptAsync 1 MiB into a buffer, 256 KiB frames, warm cache")]
    [BenchmarkCategory("1 MiB")]
    public Task<int> Envelope1MiBIntoBuffer256KiBFrames() => _quarterMebibyteFrames.EncryptAsync(_mebibyte, _mebibyteMessage.AsMemory(), Context);

    [Benchmark(Description = "envelope EncryptAsync 1 MiB returning a new array, warm cache")]
    [BenchmarkCategory("1 MiB")]
    public Task<byte[]> Envelope1MiB() => _encryptor.EncryptAsync(_mebibyte, Context);

    [Benchmark(Baseline = true, Description = "raw AesGcm encrypt 1 KiB")]
    [BenchmarkCategory("1 KiB")]
    public byte[] RawAesGcm1KiB()
    {
        _aes.Encrypt(_iv, _kibibyte, _kibibyteOut, _tag);
        return _tag;
    }

    [Benchmark(Description = "envelope EncryptAsync 1 KiB, warm cache (HKDF + commitment + header)")]
    [BenchmarkCategory("1 KiB")]
    public Task<byte[]> Envelope1KiB() => _encryptor.EncryptAsync(_kibibyte, Context, RowId);

    [Benchmark(Description = "envelope DecryptAsync 1 KiB, warm cache")]
    [BenchmarkCategory("1 KiB")]
    public Task<byte[]> EnvelopeDecrypt1KiB() => _encryptor.DecryptAsync(_kibibyteMessage, Context, RowId);
}

/// <summary>An in-process key provider (AES-GCM under a random key): lets the benchmarks leave the KMS out.</summary>
internal sealed class LocalKeyProvider : IEnvelopeKeyProvider
{
    private readonly byte[] _key = RandomNumberGenerator.GetBytes(32);

    public Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        var dataKey = RandomNumberGenerator.GetBytes(32);
        return Task.FromResult(new GeneratedDataKey(dataKey, Wrap(keyName, dataKey)));
    }

    public Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
        Task.FromResult(Wrap(keyName, dataKey.Span));

    public Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        var dataKey = new byte[32];
        using var gcm = new AesGcm(_key, 16);
        gcm.Decrypt(wrappedKey.Wrapped.AsSpan(0, 12), wrappedKey.Wrapped.AsSpan(12, 32), wrappedKey.Wrapped.AsSpan(44), dataKey);
        return Task.FromResult(new UnwrappedDataKey(dataKey, wrappedKey.KeyName));
    }

    private WrappedDataKey Wrap(string keyName, ReadOnlySpan<byte> dataKey)
    {
        var blob = new byte[60];
        RandomNumberGenerator.Fill(blob.AsSpan(0, 12));
        using var gcm = new AesGcm(_key, 16);
        gcm.Encrypt(blob.AsSpan(0, 12), dataKey, blob.AsSpan(12, 32), blob.AsSpan(44));
        return new WrappedDataKey(keyName, blob);
    }
}
