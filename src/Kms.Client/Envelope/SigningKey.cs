using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// A suite 0x0002 writer's ECDSA P-384 key pair, held through <see cref="Handle"/>s and disposed
/// when the last one is: by one message (no cache), or by a cache entry and every message that
/// started under it (docs/envelope-format-signed.md, "Caching").
/// </summary>
/// <remarks>
/// Disposing the <see cref="ECDsa"/> frees OpenSSL's key, which clears the private scalar; .NET
/// cannot zero memory it does not own, so no copy of the scalar is ever exported to managed memory.
/// Signing takes a lock: .NET does not promise that one <see cref="ECDsa"/> signs on several
/// threads at once, and the lock also orders the last release after every signature.
/// </remarks>
internal sealed class SigningKey
{
    private readonly Lock _lock = new();
    private readonly ECDsa _key;
    private int _references = 1;

    private SigningKey(ECDsa key)
    {
        _key = key;
        var q = key.ExportParameters(includePrivateParameters: false).Q;
        EncodedPublicKey = Convert.ToBase64String([0x04, .. q.X!, .. q.Y!]);
    }

    /// <summary>The public key as the context carries it.</summary>
    public string EncodedPublicKey { get; }

    /// <summary>For tests: whether the key pair has been disposed (every handle released).</summary>
    internal bool IsDisposed
    {
        get
        {
            lock (_lock)
            {
                return _references == 0;
            }
        }
    }

    /// <summary>A fresh P-384 key pair and its first handle.</summary>
    public static Handle Create() => Create(ECDsa.Create(ECCurve.NamedCurves.nistP384));

    /// <summary>A handle over a given P-384 key, taken over (for the golden vectors, whose key pairs are fixed).</summary>
    public static Handle Create(ECDsa key)
    {
        try
        {
            return new Handle(new SigningKey(key));
        }
        catch
        {
            key.Dispose();
            throw;
        }
    }

    private void AddReference()
    {
        lock (_lock)
        {
            // A handle is alive (the caller's), so the count is at least one.
            _references++;
        }
    }

    private void Release()
    {
        lock (_lock)
        {
            if (--_references == 0)
            {
                _key.Dispose();
            }
        }
    }

    private void Sign(ReadOnlySpan<byte> digest, Span<byte> signature)
    {
        lock (_lock)
        {
            if (!_key.TrySignHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation, out var written) || written != EnvelopeFormat.SignatureLength)
            {
                throw new CryptographicException("the P-384 signature did not fit its footer");
            }
        }
    }

    /// <summary>One holder's reference to the key pair; disposing it more than once releases it once.</summary>
    internal sealed class Handle : IDisposable
    {
        private SigningKey? _key;

        public Handle(SigningKey key) => _key = key;

        /// <summary>The key pair (for tests and for the public key).</summary>
        public SigningKey Key => Volatile.Read(ref _key) ?? throw new ObjectDisposedException(nameof(Handle));

        /// <summary>Another handle to the same key pair, which now lives until that one is disposed too.</summary>
        public Handle Share()
        {
            var key = Key;
            key.AddReference();
            return new Handle(key);
        }

        /// <summary>Signs a SHA-384 digest into <paramref name="signature"/> (<see cref="EnvelopeFormat.SignatureLength"/> bytes, r ‖ s).</summary>
        public void Sign(ReadOnlySpan<byte> digest, Span<byte> signature) => Key.Sign(digest, signature);

        public void Dispose() => Interlocked.Exchange(ref _key, null)?.Release();
    }
}
