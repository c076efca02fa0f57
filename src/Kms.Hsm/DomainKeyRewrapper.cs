using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>What a wrapped blob holds, which decides the template it is unwrapped with.</summary>
public enum WrappedKeyKind
{
    /// <summary>An AES-256 secret key (symmetric key versions, the audit context key).</summary>
    Aes256,

    /// <summary>A P-256 private key as PKCS#8 (ECDSA key versions, the audit signing key).</summary>
    EcP256PrivateKey,

    /// <summary>A P-384 private key as PKCS#8.</summary>
    EcP384PrivateKey,

    /// <summary>An RSA private key as PKCS#8, of any size and usage (RSA key versions, BYOK import job keys).</summary>
    RsaPrivateKey,

    /// <summary>
    /// A generic secret of any length (HMAC key versions). Any blob unwraps as one (a secret is
    /// just bytes), so the caller must take the kind from the stored version's algorithm.
    /// </summary>
    GenericSecret,
}

/// <summary>
/// The old and the new domain key of a rotation, loaded as session objects into the temporary
/// rotation token by <see cref="HsmCeremonySession.LoadRotationKeys"/>: re-wraps stored blobs
/// from the old to the new inside the HSM. Disposing destroys both keys.
/// </summary>
/// <remarks>
/// <para>The production domain key cannot do this: its unwrap template forces everything it
/// unwraps to be non-extractable, so nothing it unwraps can be wrapped again. The old key is
/// therefore imported here with a rotation-only template (<c>Templates.RotationOldDomainKey</c>):
/// unwrap only, KWP only, unmodifiable, and an unwrap template that lets an unwrapped copy be
/// extractable but keeps it sensitive and a session object. A holder of the rotation token's PIN
/// could, while that key exists, unwrap a blob as extractable and wrap it with a key of their
/// own: that is why both keys are session objects of this process only (no other process, and
/// no file of the token, ever holds them), why the token must be a dedicated one on the offline
/// ceremony host, and why it is re-initialised when the rotation ends
/// (<see cref="HsmTokenSetup.WipeToken(string, string, ReadOnlySpan{byte}, IReadOnlyDictionary{string, string}?)"/>).</para>
/// <para>Each unwrapped copy is destroyed in the same call that wraps it, whatever happens.</para>
/// </remarks>
public sealed class DomainKeyRewrapper : IDisposable
{
    private readonly HsmCeremonySession _owner;
    private readonly IObjectHandle _oldKey;
    private readonly IObjectHandle _newKey;
    private int _disposed;

    internal DomainKeyRewrapper(HsmCeremonySession owner, IObjectHandle oldKey, string oldCheckValue, IObjectHandle newKey, string newCheckValue)
    {
        _owner = owner;
        _oldKey = oldKey;
        _newKey = newKey;
        OldCheckValue = oldCheckValue;
        NewCheckValue = newCheckValue;
    }

    /// <summary>The HSM-reported check value of the old domain key (hex).</summary>
    public string OldCheckValue { get; }

    /// <summary>The HSM-reported check value of the new domain key (hex).</summary>
    public string NewCheckValue { get; }

    /// <summary>
    /// Unwraps <paramref name="blob"/> (KWP under the old domain key) as a <paramref name="kind"/>
    /// and returns it wrapped (KWP) under the new domain key. The key never leaves the HSM.
    /// </summary>
    /// <exception cref="HsmConfigurationException">
    /// The blob does not unwrap under the old key as that kind (e.g. it is already under the new
    /// key), an EC key is on another curve, or the HSM refused.
    /// </exception>
    public byte[] Rewrap(ReadOnlySpan<byte> blob, WrappedKeyKind kind)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (blob.IsEmpty)
        {
            throw new ArgumentException("the wrapped blob is empty", nameof(blob));
        }

        var curve = kind switch
        {
            WrappedKeyKind.Aes256 or WrappedKeyKind.RsaPrivateKey or WrappedKeyKind.GenericSecret => null,
            WrappedKeyKind.EcP256PrivateKey => EcCurveParameters.P256,
            WrappedKeyKind.EcP384PrivateKey => EcCurveParameters.P384,
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
        };
        var wrapped = blob.ToArray();
        return _owner.Call("rewrap", session => RewrapIn(session, wrapped, kind, curve));
    }

    private byte[] RewrapIn(ISession session, byte[] wrapped, WrappedKeyKind kind, EcCurveParameters? curve)
    {
        var factories = _owner.Module.Factories;
        using var mechanism = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        using var template = kind switch
        {
            WrappedKeyKind.RsaPrivateKey => _owner.Templates.RewrappedRsaPrivateKey(),
            WrappedKeyKind.GenericSecret => _owner.Templates.RewrappedGenericSecret(),
            _ => curve is null ? _owner.Templates.RewrappedAesKey() : _owner.Templates.RewrappedEcPrivateKey(),
        };
        IObjectHandle copy;
        try
        {
            copy = session.UnwrapKey(mechanism, _oldKey, wrapped, template.Attributes);
        }
        catch (Pkcs11Exception e)
        {
            // Whatever the code, the blob is the problem: SoftHSM answers a blob that fails the
            // KWP integrity check (e.g. one already under the new key) with CKR_GENERAL_ERROR.
            throw new HsmConfigurationException($"the blob does not unwrap under the old domain key {OldCheckValue} as {kind} ({e.RV})", e);
        }

        try
        {
            if (curve is not null)
            {
                var read = session.GetAttributeValue(copy, [CKA.CKA_EC_PARAMS]);
                try
                {
                    if (read[0].CannotBeRead || !curve.IsEcParams(read[0].GetValueAsByteArray()))
                    {
                        throw new HsmConfigurationException($"the blob is not a {curve.Name} private key");
                    }
                }
                finally
                {
                    read.DisposeAll();
                }
            }

            return session.WrapKey(mechanism, _newKey, copy);
        }
        finally
        {
            session.DestroyObject(copy);
        }
    }

    /// <summary>Destroys both domain keys in the token (they are session objects: a crash destroys them too).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            _owner.Call("destroy rotation keys", session =>
            {
                session.DestroyObject(_oldKey);
                session.DestroyObject(_newKey);
                return 0;
            });
        }
        catch (HsmConfigurationException)
        {
            // The session is gone, and its session objects with it.
        }
    }
}
