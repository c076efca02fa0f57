using System.Collections.Concurrent;
using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// A KMS behind a <see cref="KmsClient"/> over one scripted endpoint: honest by default (it
/// remembers each data key by its blob), answering GenerateDataKey, Encrypt and Decrypt as a test
/// says where it sets <see cref="OnGenerate"/>, <see cref="OnEncrypt"/> or <see cref="OnDecrypt"/>
/// (given the request and the honest answer; null for the honest answer). Keeps every secret
/// buffer it sent, to check the client zeroed them.
/// </summary>
internal sealed class ScriptedKms : IDisposable
{
    private readonly ConcurrentDictionary<string, (byte[] Plaintext, string Key)> _blobs = new(StringComparer.Ordinal);
    private readonly FakeClient _fake;

    public ScriptedKms()
    {
        _fake = new FakeClient([new ScriptedEndpoint("kms") { Respond = call => Answer(call.Request) }], maxAttempts: 1);
    }

    public KmsClient Client => _fake.Client;

    public Func<GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateDataKeyResponse>? OnGenerate { get; set; }

    public Func<EncryptRequest, EncryptResponse, EncryptResponse>? OnEncrypt { get; set; }

    public Func<DecryptRequest, DecryptResponse, DecryptResponse>? OnDecrypt { get; set; }

    /// <summary>Where an alias points (the key GenerateDataKey and Encrypt report for it).</summary>
    public string AliasTarget { get; set; } = "tenants/t/keys/target";

    public int GenerateCalls { get; private set; }

    public int DecryptCalls { get; private set; }

    /// <summary>Every plaintext buffer sent (data keys), to check they were zeroed.</summary>
    public ConcurrentBag<byte[]> Sent { get; } = [];

    public bool AllSentZeroed => Sent.All(buffer => !buffer.AsSpan().ContainsAnyExcept((byte)0));

    /// <summary>A plaintext the client will zero: kept to be checked.</summary>
    public ByteString Secret(byte[] bytes)
    {
        Sent.Add(bytes);
        return UnsafeByteOperations.UnsafeWrap(bytes);
    }

    public void Dispose() => _fake.Dispose();

    private object Answer(object request)
    {
        switch (request)
        {
            case GenerateDataKeyRequest generate:
                GenerateCalls++;
                var dataKey = RandomNumberGenerator.GetBytes(32);
                var honest = new GenerateDataKeyResponse { Ciphertext = ByteString.CopyFrom(Remember(dataKey, Resolve(generate.Name))), KeyVersion = Resolve(generate.Name) + "/versions/1" };
                if (OnGenerate is { } onGenerate)
                {
                    return onGenerate(generate, honest);
                }

                honest.Plaintext = Secret(dataKey);
                return honest;

            case EncryptRequest encrypt:
                var wrapped = new EncryptResponse { Ciphertext = ByteString.CopyFrom(Remember(encrypt.Plaintext.ToByteArray(), Resolve(encrypt.Name))), KeyVersion = Resolve(encrypt.Name) + "/versions/1" };
                return OnEncrypt is { } onEncrypt ? onEncrypt(encrypt, wrapped) : wrapped;

            case DecryptRequest decrypt:
                DecryptCalls++;
                if (!_blobs.TryGetValue(Convert.ToHexString(decrypt.Ciphertext.Span), out var known))
                {
                    throw new RpcException(new Status(StatusCode.InvalidArgument, "decryption failed"));
                }

                var unwrapped = new DecryptResponse { KeyVersion = known.Key + "/versions/1" };
                if (OnDecrypt is { } onDecrypt)
                {
                    return onDecrypt(decrypt, unwrapped);
                }

                unwrapped.Plaintext = Secret(known.Plaintext.ToArray());
                return unwrapped;

            default:
                throw new RpcException(new Status(StatusCode.Unimplemented, request.GetType().Name));
        }
    }

    private string Resolve(string name) => name.Contains("/aliases/", StringComparison.Ordinal) ? AliasTarget : name;

    // A 77-byte blob, as the KMS's for a data key (its content is only a name here).
    private byte[] Remember(byte[] plaintext, string key)
    {
        var blob = RandomNumberGenerator.GetBytes(77);
        blob[0] = 1;
        _blobs[Convert.ToHexString(blob)] = (plaintext.ToArray(), key);
        return blob;
    }
}
