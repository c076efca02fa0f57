using System.Security.Cryptography;
using System.Text;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// One logged-in session on a token for the key ceremony (the <c>kms ceremony</c> commands on
/// the officers' host): draws the HSM's randomness, imports a domain key whose value the
/// ceremony knows (so it can be split into custodian shares), and reads back its check value.
/// </summary>
/// <remarks>
/// <para>The key is created with <c>C_CreateObject</c> (<c>CKA_VALUE</c> plus the check value the
/// ceremony computed, which SoftHSM verifies against the value, answering
/// CKR_ATTRIBUTE_VALUE_INVALID on a mismatch). Unwrapping it from a transport key instead was
/// tried: SoftHSM computes no check value for an unwrapped key and refuses one in the unwrap
/// template, and the server needs the check value. Pkcs11Interop copies attribute values into
/// native memory that it frees without zeroing, so that copy is zeroed here
/// (<see cref="NativeAttribute.Zero"/>); the managed copies are the caller's to zero.</para>
/// <para>The imported key carries the same attributes as every domain key (DESIGN.md): checked by
/// <see cref="DomainKeyLocator.Verify"/>, and its HSM-reported check value is compared with
/// one computed from the value the ceremony holds — a mismatch destroys the object.</para>
/// </remarks>
public sealed class HsmCeremonySession : IDisposable
{
    private readonly Pkcs11Module _module;
    private readonly HsmProfile _profile;
    private readonly Templates _templates;
    private readonly ISlot _slot;
    private readonly ISession _session;
    private readonly string _tokenLabel;
    private int _disposed;

    private HsmCeremonySession(Pkcs11Module module, HsmProfile profile, ISlot slot, ISession session, string tokenLabel)
    {
        _module = module;
        _profile = profile;
        _slot = slot;
        _session = session;
        _tokenLabel = tokenLabel;
        _templates = new Templates(module.Factories.ObjectAttributeFactory, profile);
    }

    /// <summary>
    /// Opens the token labelled <see cref="HsmOptions.TokenLabel"/> and logs in as its user with
    /// <paramref name="userPin"/> (UTF-8; the caller zeroes it).
    /// </summary>
    /// <exception cref="HsmConfigurationException">No such token, a refused PIN, or the HSM refused.</exception>
    public static HsmCeremonySession Open(HsmOptions options, ReadOnlySpan<byte> userPin)
    {
        ArgumentNullException.ThrowIfNull(options);
        var profile = HsmProfile.Load(options.Profile);
        var module = Pkcs11Module.Acquire(options.ModulePath, options.ModuleEnvironment);
        var pin = userPin.ToArray();
        try
        {
            var (slot, session) = module.Call(library =>
            {
                var slot = FindSlot(library, options);
                var opened = slot.OpenSession(SessionType.ReadWrite);
                try
                {
                    opened.Login(CKU.CKU_USER, pin);
                }
                catch (Pkcs11Exception e) when (e.RV == CKR.CKR_USER_ALREADY_LOGGED_IN)
                {
                    // Login is per process and token.
                }
                catch (Pkcs11Exception e) when (Pkcs11Errors.IsPinRefused(e))
                {
                    opened.Dispose();
                    throw new HsmConfigurationException($"the HSM refused the user PIN of token '{options.TokenLabel}' ({e.RV})", e);
                }
                catch
                {
                    opened.Dispose();
                    throw;
                }

                return (slot, opened);
            });
            return new HsmCeremonySession(module, profile, slot, session, options.TokenLabel);
        }
        catch (Pkcs11Exception e)
        {
            module.Release();
            throw new HsmConfigurationException($"cannot open token '{options.TokenLabel}': {e.Method} returned {e.RV}", e);
        }
        catch
        {
            module.Release();
            throw;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pin);
        }
    }

    /// <summary><paramref name="length"/> bytes from the HSM's random number generator.</summary>
    public byte[] GenerateRandom(int length)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(length, 1);
        return Call("generate random", () => _session.GenerateRandom(length));
    }

    /// <summary>
    /// Checks that this token can take a domain key (label and CKA_ID given), before a ceremony
    /// asks anyone for a passphrase or a share: it is not write-protected, does not report that it
    /// has no free private memory (where it reports its memory at all), and holds no secret key
    /// with that label or CKA_ID. The login was checked when the session opened.
    /// </summary>
    /// <param name="label">The domain key's CKA_LABEL.</param>
    /// <param name="id">The domain key's CKA_ID.</param>
    /// <param name="checkValue">The check value of the key to import, when it is known before it is
    /// rebuilt (a restore's share files carry it): a key already there with it is named as this one.</param>
    /// <exception cref="HsmConfigurationException">
    /// <see cref="HsmFailure.TokenNotWritable"/> or <see cref="HsmFailure.DomainKeyPresent"/>, naming the token;
    /// or the HSM refused a query.
    /// </exception>
    public void RequireRoomForDomainKey(string label, string id, string? checkValue)
    {
        ArgumentException.ThrowIfNullOrEmpty(label);
        ArgumentException.ThrowIfNullOrEmpty(id);
        Call("check the token", () =>
        {
            RequireWritable();
            var present = FindCandidates(label, id);
            if (present.Count > 0)
            {
                var held = CheckValueOrNull(present[0]);
                throw new HsmConfigurationException(held is not null && string.Equals(held, checkValue, StringComparison.OrdinalIgnoreCase)
                    ? $"token '{_tokenLabel}' already holds this domain key (label '{label}' or CKA_ID '{id}', check value {held}): nothing to import"
                    : $"token '{_tokenLabel}' already holds a domain key (label '{label}' or CKA_ID '{id}'{(held is null ? "" : $", check value {held}")}){(checkValue is null ? "" : $", not the one with check value {checkValue}")}")
                {
                    Failure = HsmFailure.DomainKeyPresent,
                };
            }

            return 0;
        });
    }

    /// <summary>
    /// Checks, before a rotation asks anyone for a passphrase or a share, that this token can be
    /// the rotation token: writable, with room, and holding no object at all
    /// (<see cref="LoadRotationKeys"/> refuses a token that holds any).
    /// </summary>
    /// <exception cref="HsmConfigurationException">The token is write-protected, full, or not empty; or the HSM refused a query.</exception>
    public void RequireEmptyForRotation() => Call("check the token", () =>
    {
        RequireWritable();
        RequireNoObjects();
        return 0;
    });

    private void RequireWritable()
    {
        var info = _slot.GetTokenInfo();
        if (info.TokenFlags.WriteProtected)
        {
            throw new HsmConfigurationException($"token '{_tokenLabel}' is write-protected: it cannot take a key") { Failure = HsmFailure.TokenNotWritable };
        }

        // CK_UNAVAILABLE_INFORMATION (all bits set) where the token does not say; 0 is "none left".
        if (info.FreePrivateMemory == 0)
        {
            throw new HsmConfigurationException($"token '{_tokenLabel}' reports no free private memory: it has no room for a key") { Failure = HsmFailure.TokenNotWritable };
        }
    }

    private void RequireNoObjects()
    {
        var present = _session.FindAllObjects([]);
        if (present.Count > 0)
        {
            throw new HsmConfigurationException(
                $"token '{_tokenLabel}' holds {present.Count} object(s); a rotation runs on a dedicated, freshly initialised token, never on a production one");
        }
    }

    /// <summary>Whether the token holds a secret key with the domain key's label or CKA_ID.</summary>
    public bool HasDomainKey(string label, string id) =>
        Call("find domain key", () => FindCandidates(label, id).Count > 0);

    /// <summary>
    /// Imports the 32-byte <paramref name="domainKey"/> as the token's domain key (label and
    /// CKA_ID given) and returns the check value the HSM reports for it (hex).
    /// </summary>
    /// <exception cref="HsmConfigurationException">
    /// A key with that label or id exists already; the HSM lacks the transport mechanisms; the
    /// HSM refused the template; or the imported key's attributes or check value are not what
    /// was asked for (the object is destroyed then).
    /// </exception>
    public string ImportDomainKey(ReadOnlySpan<byte> domainKey, string label, string id)
    {
        ArgumentException.ThrowIfNullOrEmpty(label);
        ArgumentException.ThrowIfNullOrEmpty(id);
        if (domainKey.Length != 32)
        {
            throw new ArgumentException("a domain key is 32 bytes (AES-256)", nameof(domainKey));
        }

        var expectedCheckValue = AesCheckValue(domainKey);
        var value = GC.AllocateArray<byte>(32, pinned: true);
        domainKey.CopyTo(value);
        try
        {
            return Call("import domain key", () => Import(value, expectedCheckValue, label, id));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(value);
        }
    }

    private string Import(byte[] domainKey, string expectedCheckValue, string label, string id)
    {
        if (FindCandidates(label, id).Count > 0)
        {
            throw new HsmConfigurationException(
                $"token '{_tokenLabel}' already holds a secret key labelled '{label}' or with CKA_ID '{id}'; a token holds one domain key")
            {
                Failure = HsmFailure.DomainKeyPresent,
            };
        }

        var imported = Create(domainKey, expectedCheckValue, label, id);
        var violations = DomainKeyLocator.Verify(_session, imported, label, Encoding.UTF8.GetBytes(id), _profile);
        var reported = ReadCheckValue(imported);
        if (violations.Count > 0 || !string.Equals(reported, expectedCheckValue, StringComparison.Ordinal))
        {
            _session.DestroyObject(imported);
            throw new HsmConfigurationException(violations.Count > 0
                ? $"the imported domain key is not safe to use ({string.Join("; ", violations)}); it was destroyed"
                : $"the HSM reports check value {reported} for the imported domain key, the ceremony computed {expectedCheckValue}; it was destroyed");
        }

        return reported;
    }

    private IObjectHandle Create(byte[] domainKey, string expectedCheckValue, string label, string id)
    {
        using var template = _templates.DomainKey(label, id, Convert.FromHexString(expectedCheckValue));
        using var value = _module.Factories.ObjectAttributeFactory.Create(CKA.CKA_VALUE, domainKey);
        template.Attributes.Insert(2, value);
        try
        {
            return _session.CreateObject(template.Attributes);
        }
        catch (Pkcs11Exception)
        {
            DestroyCandidates(label, id);
            throw;
        }
        finally
        {
            template.Attributes.Remove(value);
            NativeAttribute.Zero(value);
        }
    }

    /// <summary>
    /// The check value the HSM reports for the token's domain key (label and CKA_ID given), after
    /// checking its attributes as the server does; null when the token holds none.
    /// </summary>
    /// <exception cref="HsmConfigurationException">Ambiguous or unsafe domain key.</exception>
    public string? ReadDomainKeyCheckValue(string label, string id) => Call("read domain key", () =>
    {
        var candidates = FindCandidates(label, id);
        if (candidates.Count == 0)
        {
            return null;
        }

        if (candidates.Count > 1)
        {
            throw new HsmConfigurationException($"{candidates.Count} secret keys on token '{_tokenLabel}' carry the domain key's label '{label}' or CKA_ID '{id}'");
        }

        var violations = DomainKeyLocator.Verify(_session, candidates[0], label, Encoding.UTF8.GetBytes(id), _profile);
        return violations.Count > 0
            ? throw new HsmConfigurationException($"the domain key on token '{_tokenLabel}' is not safe to use: {string.Join("; ", violations)}")
            : ReadCheckValue(candidates[0]);
    });

    /// <summary>
    /// Destroys the token's domain key (label or CKA_ID): a ceremony that failed after the import
    /// must not leave a key behind whose shares were never written. Returns how many objects went.
    /// </summary>
    public int DestroyDomainKey(string label, string id) => Call("destroy domain key", () =>
    {
        var candidates = FindCandidates(label, id);
        foreach (var candidate in candidates)
        {
            _session.DestroyObject(candidate);
        }

        return candidates.Count;
    });

    /// <summary>
    /// Loads the old (32 bytes, rebuilt from the old shares) and the new domain key (32 bytes,
    /// whose shares the rotation writes) into this token with the rotation-only templates, as
    /// session objects, and returns the rewrapper that uses them. Each key's check value is given
    /// with it and verified by the HSM.
    /// </summary>
    /// <remarks>
    /// The token must be a dedicated, freshly initialised rotation token: one that holds any
    /// object (a production token holds its domain key) is refused, so the old key's
    /// extractable-unwrap template never lands next to production material. Both keys die with
    /// this session; the caller wipes the token at the end (<see cref="HsmTokenSetup.WipeToken(string, string, ReadOnlySpan{byte}, IReadOnlyDictionary{string, string}?)"/>).
    /// </remarks>
    /// <exception cref="HsmConfigurationException">The token is not empty, the keys are equal, or the HSM refused.</exception>
    public DomainKeyRewrapper LoadRotationKeys(ReadOnlySpan<byte> oldDomainKey, ReadOnlySpan<byte> newDomainKey)
    {
        if (oldDomainKey.Length != 32 || newDomainKey.Length != 32)
        {
            throw new ArgumentException("a domain key is 32 bytes (AES-256)");
        }

        if (CryptographicOperations.FixedTimeEquals(oldDomainKey, newDomainKey))
        {
            throw new HsmConfigurationException("the new domain key equals the old one");
        }

        var oldCheckValue = AesCheckValue(oldDomainKey);
        var newCheckValue = AesCheckValue(newDomainKey);
        var oldValue = GC.AllocateArray<byte>(32, pinned: true);
        var newValue = GC.AllocateArray<byte>(32, pinned: true);
        oldDomainKey.CopyTo(oldValue);
        newDomainKey.CopyTo(newValue);
        try
        {
            return Call("load rotation keys", () =>
            {
                RequireNoObjects();
                var oldKey = CreateRotationKey(_templates.RotationOldDomainKey(Convert.FromHexString(oldCheckValue)), oldValue);
                IObjectHandle newKey;
                try
                {
                    newKey = CreateRotationKey(_templates.RotationNewDomainKey(Convert.FromHexString(newCheckValue)), newValue);
                }
                catch
                {
                    _session.DestroyObject(oldKey);
                    throw;
                }

                return new DomainKeyRewrapper(this, oldKey, ReadCheckValue(oldKey), newKey, ReadCheckValue(newKey));
            });
        }
        finally
        {
            CryptographicOperations.ZeroMemory(oldValue);
            CryptographicOperations.ZeroMemory(newValue);
        }
    }

    private IObjectHandle CreateRotationKey(Template template, byte[] keyValue)
    {
        using (template)
        {
            using var value = _module.Factories.ObjectAttributeFactory.Create(CKA.CKA_VALUE, keyValue);
            template.Attributes.Insert(2, value);
            try
            {
                return _session.CreateObject(template.Attributes);
            }
            finally
            {
                template.Attributes.Remove(value);
                NativeAttribute.Zero(value);
            }
        }
    }

    /// <summary>
    /// The AES key check value as PKCS#11 defines it for <c>CKA_CHECK_VALUE</c>: the first three
    /// bytes of the ECB encryption of one zero block under the key (hex, upper case).
    /// </summary>
    public static string AesCheckValue(ReadOnlySpan<byte> key)
    {
        using var aes = Aes.Create();
        var copy = key.ToArray();
        try
        {
            aes.Key = copy;
            Span<byte> block = stackalloc byte[16];
            aes.EncryptEcb(new byte[16], block, PaddingMode.None);
            return Convert.ToHexString(block[..3]);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(copy);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            _module.Call(_ =>
            {
                _session.Dispose();
                return 0;
            });
        }
        catch (Pkcs11Exception)
        {
            // The session is gone already.
        }
        finally
        {
            _module.Release();
        }
    }

    internal Pkcs11Module Module => _module;

    internal Templates Templates => _templates;

    internal T Call<T>(string operation, Func<ISession, T> call) => Call(operation, () => call(_session));

    private T Call<T>(string operation, Func<T> call)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        try
        {
            return _module.Call(_ => call());
        }
        catch (Pkcs11Exception e)
        {
            throw new HsmConfigurationException($"{operation} on token '{_tokenLabel}' failed: {e.Method} returned {e.RV}", e);
        }
    }

    // A key that is there but whose check value cannot be read is still there.
    private string? CheckValueOrNull(IObjectHandle handle)
    {
        var read = _session.GetAttributeValue(handle, [CKA.CKA_CHECK_VALUE]);
        try
        {
            return !read[0].CannotBeRead && read[0].GetValueAsByteArray() is { Length: > 0 } kcv ? Convert.ToHexString(kcv) : null;
        }
        finally
        {
            read.DisposeAll();
        }
    }

    private string ReadCheckValue(IObjectHandle handle)
    {
        var read = _session.GetAttributeValue(handle, [CKA.CKA_CHECK_VALUE]);
        try
        {
            return !read[0].CannotBeRead && read[0].GetValueAsByteArray() is { Length: > 0 } kcv
                ? Convert.ToHexString(kcv)
                : throw new HsmConfigurationException("the domain key's CKA_CHECK_VALUE cannot be read");
        }
        finally
        {
            read.DisposeAll();
        }
    }

    private List<IObjectHandle> FindCandidates(string label, string id)
    {
        using var labelTemplate = _templates.FindSecretKey(CKA.CKA_LABEL, label);
        using var idTemplate = _templates.FindSecretKey(CKA.CKA_ID, Encoding.UTF8.GetBytes(id));
        return _session.FindAllObjects(labelTemplate.Attributes)
            .Concat(_session.FindAllObjects(idTemplate.Attributes))
            .DistinctBy(h => h.ObjectId)
            .ToList();
    }

    private void DestroyCandidates(string label, string id)
    {
        // A refused template can leave a half-built token object behind (HSM-NOTES.md).
        foreach (var leftover in FindCandidates(label, id))
        {
            _session.DestroyObject(leftover);
        }
    }

    private static ISlot FindSlot(IPkcs11Library library, HsmOptions options) => SlotList.FindToken(library, options.TokenLabel, options.ModulePath).Slot;
}
