using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Microsoft.Extensions.Logging;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// <see cref="IHsm"/> over a PKCS#11 token through Pkcs11Interop.
/// </summary>
/// <remarks>
/// <para>Key versions (AES-256 keys, HMAC secrets, RSA and EC private keys) are generated inside the HSM, wrapped
/// under the domain key with CKM_AES_KEY_WRAP_PAD (RFC 5649) and destroyed in the same
/// operation; in use they are unwrapped into sensitive, non-extractable session objects
/// whose handles are cached and leased (<see cref="KeyHandleCache"/>), per key version and
/// kind of key. GCM IVs are drawn from the HSM's RNG by the caller.</para>
/// <para>When the device, the library or the sessions are lost, the failing call answers
/// UNAVAILABLE; the next call re-opens the sessions (re-initialising the module if needed),
/// logs in again, finds the same domain key (same check value, or it stays down) and starts
/// a new handle generation. A refused PIN is never retried.</para>
/// </remarks>
public sealed partial class Pkcs11Hsm : IHsm, IAsyncDisposable
{
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(10);

    private readonly HsmOptions _options;
    private readonly HsmProfile _profile;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly Pkcs11Module _module;
    private readonly Templates _templates;
    private readonly SemaphoreSlim _recovery = new(1, 1);
    private readonly byte[] _pin;
    private SlotState? _state;

    // Set once the open has ended: a login after it is a recovery's (the PIN refusal is logged then).
    private volatile bool _opened;
    private long _generation;
    private DateTimeOffset _nextRecoveryUtc;
    // Shared with the regions' adapters, which log in to the same token with the same PIN: a
    // refused PIN is presented again by none of them (a real HSM may lock the token after three).
    private StrongBox<bool> _pinRefused = new();

    // Shared by every adapter on the token (each region's), like the flag: one login at a time,
    // and none once the PIN was refused — concurrent recoveries each presented a changed PIN.
    private Lock _login = new();

    // A key this adapter wrapped under the domain key at its first open: proof, at every later
    // open, that the token still holds that key (see ProveSameDomainKey).
    private byte[]? _domainKeyWitness;
    private int _disposed;
    private readonly Dictionary<string, Pkcs11Hsm> _regions = new(StringComparer.Ordinal);

    private Pkcs11Hsm(HsmOptions options, HsmProfile profile, ILogger logger, TimeProvider time, Pkcs11Module module, byte[] pin)
    {
        _options = options;
        _profile = profile;
        _logger = logger;
        _time = time;
        _module = module;
        _pin = pin;
        _templates = new Templates(module.Factories.ObjectAttributeFactory, profile);
    }

    /// <inheritdoc />
    public string DomainKeyCheckValue { get; private set; } = "";

    /// <summary>The profile in force.</summary>
    public HsmProfile Profile => _profile;

    /// <summary>Whether the domain key was created by this start (dev mode, first run).</summary>
    public bool DomainKeyCreated { get; private set; }

    internal long Generation => Volatile.Read(ref _generation);

    internal Pkcs11Module Module => _module;

    /// <summary>
    /// Loads the module, selects the token by label, opens and logs in the session pool,
    /// and locates (dev mode: creates) and verifies the domain key.
    /// </summary>
    /// <param name="options">The token, the module and the bounds.</param>
    /// <param name="logger">Where the adapter logs.</param>
    /// <param name="time">
    /// The clock of every deadline the adapter keeps (<see cref="HsmOptions.CallTimeout"/> and the
    /// waits it bounds, the recovery's backoff and drain, the handle cache's idle timeout); default:
    /// the system's.
    /// </param>
    /// <exception cref="HsmConfigurationException">Anything that an operator must fix.</exception>
    public static Pkcs11Hsm Open(HsmOptions options, ILogger logger, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        return OpenOwningPin(options, ReadPin(options), logger, time ?? TimeProvider.System);
    }

    /// <summary>
    /// As <see cref="Open(HsmOptions, ILogger, TimeProvider?)"/>, logging in with
    /// <paramref name="userPin"/> (UTF-8) instead of <see cref="HsmOptions.Pin"/> or
    /// <see cref="HsmOptions.PinFile"/>, which are not read: for a caller that holds the PIN as
    /// bytes (the ceremony). The adapter keeps its own pinned copy for the logins of its
    /// recoveries and zeroes it when it is disposed; <paramref name="userPin"/> stays the caller's to zero.
    /// </summary>
    /// <exception cref="HsmConfigurationException">Anything that an operator must fix.</exception>
    public static Pkcs11Hsm Open(HsmOptions options, ReadOnlySpan<byte> userPin, ILogger logger, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        if (userPin.IsEmpty)
        {
            throw new HsmConfigurationException("the token's user PIN is empty");
        }

        return OpenOwningPin(options, PinnedCopy(userPin), logger, time ?? TimeProvider.System);
    }

    // Takes pin: zeroed when the adapter is disposed, or here when the open fails.
    private static Pkcs11Hsm OpenOwningPin(HsmOptions options, byte[] pin, ILogger logger, TimeProvider time)
    {
        HsmProfile profile;
        Pkcs11Module module;
        try
        {
            profile = HsmProfile.Load(options.Profile);
            module = Pkcs11Module.Acquire(options.ModulePath, options.ModuleEnvironment);
        }
        catch
        {
            CryptographicOperations.ZeroMemory(pin);
            throw;
        }

        var hsm = new Pkcs11Hsm(options, profile, logger, time, module, pin);
        try
        {
            var state = hsm.OpenSlot();
            hsm._state = state;
            hsm._opened = true;
            hsm.DomainKeyCheckValue = state.CheckValue;
            hsm.DomainKeyCreated = state.DomainKeyCreated;
            if (state.DomainKeyCreated)
            {
                Log.DevDomainKeyCreated(logger, options.TokenLabel, state.CheckValue);
            }

            Log.Ready(logger, options.TokenLabel, profile.Name, state.Pool.Size, state.CheckValue, state.Cache.Generation);
            foreach (var (region, regionOptions) in options.Regions.OrderBy(r => r.Key, StringComparer.Ordinal))
            {
                if (!Residency.IsValid(region))
                {
                    throw new HsmConfigurationException($"Hsm:Regions:{region}: a region name is 1 to 32 lowercase letters, digits and '-', starting with a letter");
                }

                // Each region's adapter logs in to the same token with the same PIN (its own copy).
                var regional = OpenOwningPin(options.ForRegion(region, regionOptions), PinnedCopy(pin), logger, time);
                regional._pinRefused = hsm._pinRefused;
                regional._login = hsm._login;
                hsm._regions[region] = regional;
                if (string.Equals(regional.DomainKeyCheckValue, hsm.DomainKeyCheckValue, StringComparison.OrdinalIgnoreCase))
                {
                    throw new HsmConfigurationException($"region {region}'s domain key is the deployment's domain key (check value {hsm.DomainKeyCheckValue}); a region needs its own");
                }
            }

            return hsm;
        }
        catch (Pkcs11Exception e)
        {
            CryptographicOperations.ZeroMemory(pin);
            module.Release();
            throw new HsmConfigurationException($"cannot open token '{options.TokenLabel}': {e.Method} returned {e.RV}", e);
        }
        catch
        {
            foreach (var regional in hsm._regions.Values)
            {
                regional.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }

            if (hsm._state is not null)
            {
                hsm.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
            else
            {
                CryptographicOperations.ZeroMemory(pin);
                module.Release();
            }

            throw;
        }
    }

    /// <inheritdoc />
    public IReadOnlyCollection<string> Regions => _regions.Keys;

    /// <inheritdoc />
    public IHsm ForRegion(string region) => _regions.TryGetValue(region, out var regional)
        ? regional
        : throw KmsErrors.ResidencyElsewhere(region);

    /// <inheritdoc />
    public ValueTask<byte[]> GenerateRandomAsync(int length, CancellationToken cancellationToken) =>
        RunAsync("generate random", (session, _) => session.GenerateRandom(length), cancellationToken);

    /// <inheritdoc />
    public ValueTask<WrappedKeyMaterial> GenerateAes256KeyAsync(CancellationToken cancellationToken) =>
        RunAsync("generate key", (session, state) =>
        {
            var factories = _module.Factories;
            using var generate = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
            using var wrap = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            using var template = _templates.GeneratedAesKey();
            var key = session.GenerateKey(generate, template.Attributes);
            try
            {
                return new WrappedKeyMaterial(session.WrapKey(wrap, state.DomainKey, key));
            }
            finally
            {
                DestroyExtractableCopy(session, state, key);
            }
        }, cancellationToken);

    /// <inheritdoc />
    /// <remarks>
    /// Both halves are session objects; the private half is extractable only so the domain key
    /// can wrap it (KWP), and both are destroyed before this returns. The public key is read as
    /// CKA_EC_POINT and checked to be a point of the curve.
    /// </remarks>
    public async ValueTask<GeneratedKeyPair> GenerateEcKeyPairAsync(EcCurve curve, CancellationToken cancellationToken)
    {
        var parameters = EcCurveParameters.Of(curve);
        return await RunAsync("generate key pair", (session, state) =>
        {
            var factories = _module.Factories;
            using var generate = factories.MechanismFactory.Create(CKM.CKM_EC_KEY_PAIR_GEN);
            using var wrap = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            using var publicTemplate = _templates.GeneratedEcPublicKey(parameters.EcParams);
            using var privateTemplate = _templates.GeneratedEcPrivateKey();
            session.GenerateKeyPair(generate, publicTemplate.Attributes, privateTemplate.Attributes, out var publicKey, out var privateKey);
            try
            {
                var wrapped = new WrappedKeyMaterial(session.WrapKey(wrap, state.DomainKey, privateKey));
                return new GeneratedKeyPair(wrapped, parameters.SubjectPublicKeyInfo(ReadEcPoint(session, publicKey)));
            }
            finally
            {
                // The public half is no secret, but nothing a generation creates outlives it.
                try
                {
                    DestroyExtractableCopy(session, state, privateKey);
                }
                finally
                {
                    DestroyExtractableCopy(session, state, publicKey);
                }
            }
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <remarks>
    /// The digest must be exactly as long as the curve's hash (32 bytes for P-256, 48 for
    /// P-384), else INVALID_ARGUMENT before the HSM is asked. The private key is unwrapped as
    /// a sensitive, non-extractable, ECDSA-only session object whose curve is checked against
    /// <paramref name="curve"/>, and cached and leased like an AES key version's copy.
    /// </remarks>
    public async ValueTask<byte[]> SignEcdsaAsync(KeyMaterialRef key, EcCurve curve, byte[] digest, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(digest);
        var parameters = EcCurveParameters.Of(curve);
        if (digest.Length != parameters.DigestLength)
        {
            throw KmsErrors.InvalidArgument("digest", $"an ECDSA {parameters.Name} digest is {parameters.DigestLength} bytes, not {digest.Length}");
        }

        return await WithKeyAsync("sign", key, parameters.HandleKind, (session, handle) =>
        {
            using var mechanism = _module.Factories.MechanismFactory.Create(CKM.CKM_ECDSA);
            var signature = session.Sign(mechanism, handle, digest);
            return signature.Length == parameters.SignatureLength
                ? signature
                : throw KmsErrors.Internal($"the HSM returned a {signature.Length}-byte {parameters.Name} signature, not {parameters.SignatureLength} bytes r||s");
        }, cancellationToken).ConfigureAwait(false);
    }

    private static byte[] ReadEcPoint(ISession session, IObjectHandle publicKey)
    {
        var read = session.GetAttributeValue(publicKey, [CKA.CKA_EC_POINT]);
        try
        {
            return read[0].CannotBeRead
                ? throw KmsErrors.Internal("the HSM does not show the new public key's CKA_EC_POINT")
                : read[0].GetValueAsByteArray();
        }
        finally
        {
            read.DisposeAll();
        }
    }

    // The extractable copy must not outlive the operation. If the HSM will not destroy it,
    // fault the whole generation: closing its sessions destroys every session object.
    private void DestroyExtractableCopy(ISession session, SlotState state, IObjectHandle key)
    {
        try
        {
            session.DestroyObject(key);
            CountDestroyed();
        }
        catch (Pkcs11Exception)
        {
            state.Faulted = true;
            throw;
        }
    }

    /// <inheritdoc />
    public ValueTask<byte[]> EncryptAesGcmAsync(KeyMaterialRef key, byte[] iv, byte[] aad, byte[] plaintext, CancellationToken cancellationToken) =>
        WithKeyAsync("encrypt", key, KeyHandleKind.Aes256Gcm, (session, handle) => EncryptGcm(session, handle, iv, aad, plaintext), cancellationToken);

    /// <inheritdoc />
    public ValueTask<SealedWithIv> EncryptAesGcmWithFreshIvAsync(KeyMaterialRef key, byte[] aad, byte[] plaintext, CancellationToken cancellationToken) =>
        WithKeyAsync("encrypt", key, KeyHandleKind.Aes256Gcm, (session, handle) =>
        {
            var iv = session.GenerateRandom(CiphertextBlob.IvLength);
            return new SealedWithIv(iv, EncryptGcm(session, handle, iv, aad, plaintext));
        }, cancellationToken);

    /// <inheritdoc />
    public ValueTask<SealedDataKey> GenerateDataKeyAsync(KeyMaterialRef key, int length, byte[] aad, CancellationToken cancellationToken) =>
        WithKeyAsync("generate data key", key, KeyHandleKind.Aes256Gcm, (session, handle) =>
        {
            var random = session.GenerateRandom(length + CiphertextBlob.IvLength);
            var dataKey = random[..length];
            try
            {
                var iv = random[length..];
                return new SealedDataKey(dataKey, iv, EncryptGcm(session, handle, iv, aad, dataKey));
            }
            catch
            {
                CryptographicOperations.ZeroMemory(dataKey);
                throw;
            }
            finally
            {
                CryptographicOperations.ZeroMemory(random);
            }
        }, cancellationToken);

    /// <inheritdoc />
    public ValueTask<byte[][]> EncryptAesGcmManyAsync(KeyMaterialRef key, IReadOnlyList<AesGcmInput> inputs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        return WithKeyAsync("encrypt", key, KeyHandleKind.Aes256Gcm, (session, handle) =>
        {
            var results = new byte[inputs.Count][];
            for (var i = 0; i < inputs.Count; i++)
            {
                results[i] = EncryptGcm(session, handle, inputs[i].Iv, inputs[i].Aad, inputs[i].Data);
            }

            return results;
        }, cancellationToken);
    }

    // Only a 12-byte IV reaches the HSM. SoftHSM takes an IV of any length and gives some distinct
    // ones a single keystream and tag (measured: the empty IV and 16 zero bytes; 1,024 zero bytes
    // and 12), so a caller passing another length could repeat a (key, IV) pair without repeating
    // its IV. Every caller draws 12 bytes: another length is a fault, and nothing is sealed.
    private byte[] EncryptGcm(ISession session, IObjectHandle handle, byte[] iv, byte[] aad, byte[] plaintext)
    {
        if (iv.Length != CiphertextBlob.IvLength)
        {
            throw KmsErrors.Internal($"an AES-GCM IV is {CiphertextBlob.IvLength} bytes, not {iv.Length}; nothing was encrypted");
        }

        var factories = _module.Factories;
        using var parameters = factories.MechanismParamsFactory.CreateCkGcmParams(iv, (ulong)iv.Length * 8, aad, 128);
        using var mechanism = factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters);
        return session.Encrypt(mechanism, handle, plaintext);
    }

    /// <inheritdoc />
    public ValueTask<byte[]> DecryptAesGcmAsync(KeyMaterialRef key, byte[] iv, byte[] aad, byte[] ciphertextAndTag, CancellationToken cancellationToken) =>
        WithKeyAsync("decrypt", key, KeyHandleKind.Aes256Gcm, (session, handle) => DecryptGcm(session, handle, iv, aad, ciphertextAndTag) ?? throw KmsErrors.DecryptionFailed(), cancellationToken);

    /// <inheritdoc />
    public ValueTask<byte[]?[]> DecryptAesGcmManyAsync(KeyMaterialRef key, IReadOnlyList<AesGcmInput> inputs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        return WithKeyAsync("decrypt", key, KeyHandleKind.Aes256Gcm, (session, handle) =>
        {
            var results = new byte[]?[inputs.Count];
            try
            {
                for (var i = 0; i < inputs.Count; i++)
                {
                    results[i] = DecryptGcm(session, handle, inputs[i].Iv, inputs[i].Aad, inputs[i].Data);
                }

                return results;
            }
            catch
            {
                IHsm.ZeroAll(results);
                throw;
            }
        }, cancellationToken);
    }

    // Null when the tag, AAD or IV is wrong (the operation ends with the error; the session stays usable), or the IV is not 12 bytes.
    private byte[]? DecryptGcm(ISession session, IObjectHandle handle, byte[] iv, byte[] aad, byte[] ciphertextAndTag)
    {
        // Nothing this adapter sealed has another IV length (see EncryptGcm): such an input is a wrong IV.
        if (iv.Length != CiphertextBlob.IvLength)
        {
            return null;
        }

        var factories = _module.Factories;
        using var parameters = factories.MechanismParamsFactory.CreateCkGcmParams(iv, (ulong)iv.Length * 8, aad, 128);
        using var mechanism = factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters);
        try
        {
            return ZeroingSession.Decrypt(session, mechanism, handle, ciphertextAndTag);
        }
        catch (Pkcs11Exception e) when (_profile.DecryptionFailures.Contains(e.RV))
        {
            return null;
        }
    }

    /// <inheritdoc />
    public void EvictKey(KeyVersionId id)
    {
        _state?.Cache.Invalidate(id);
        foreach (var regional in _regions.Values)
        {
            regional.EvictKey(id);
        }
    }

    /// <inheritdoc />
    public void EvictAllKeys()
    {
        _state?.Cache.Clear();
        foreach (var regional in _regions.Values)
        {
            regional.EvictAllKeys();
        }
    }

    /// <summary>
    /// Stops the adapter (<see cref="StopAsync"/>) with no bound but its own 10 s; after a
    /// <see cref="StopAsync"/>, returns at once.
    /// </summary>
    public ValueTask DisposeAsync() => new(StopAsync(CancellationToken.None));

    /// <summary>
    /// Closes the sessions (destroying every unwrapped copy) and releases the module (with its last
    /// user, <c>C_Finalize</c>), waiting for a recovery under way and for the calls in flight together
    /// at most 10 s, and no longer than <paramref name="cancellationToken"/> lets it; the adapter
    /// answers UNAVAILABLE from then on. A second stop, or a <see cref="DisposeAsync"/> after it,
    /// returns at once.
    /// </summary>
    /// <param name="cancellationToken">
    /// The end of the time the stop may take (a host's stop: what is left of its stop time). Never
    /// thrown: once it is cancelled the stop waits for nothing more and leaves what still runs.
    /// </param>
    /// <remarks>
    /// A native call cannot be cancelled: what the stop could not wait for is left alone — the
    /// sessions a call still holds are not closed under it, nor is the library finalized under a
    /// call inside it (the module stays initialised, event 2012, until a later last release finds
    /// nothing inside). The PIN is zeroed whatever the stop waited for, and a recovery that
    /// outlives the stop gives up before it presents it.
    /// </remarks>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        // The regions' adapters stop beside this one, each within the same bounds, so the whole
        // stop waits at most that for a hung HSM, however many regions there are.
        var regions = _regions.Values.Select(regional => regional.StopAsync(cancellationToken)).ToList();
        try
        {
            await CloseOwnAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            await Task.WhenAll(regions).ConfigureAwait(false);
        }
    }

    // A stop waits for a recovery under way and for the calls in flight, together no longer than
    // DrainTimeout, nor than its token lets it (a host's stop time: before, the server stopped the
    // adapter after the host's stop, in the container's disposal, so a stop while the HSM hung took
    // up to DrainTimeout more than the host's stop time). A hung HSM returns neither (before, a
    // recovery stuck in C_OpenSession held the stop for as long as the device hung). What it could
    // not wait for is left to the module: its sessions are not closed under a running call, nor is
    // the library finalized (Release).
    private async Task CloseOwnAsync(CancellationToken cancellationToken)
    {
        var start = _time.GetTimestamp();
        var recoveryEnded = await StopWaitAsync(_recovery, DrainTimeout, cancellationToken).ConfigureAwait(false);
        var leftRunning = !recoveryEnded;
        try
        {
            if (recoveryEnded && _state is { } state)
            {
                state.Faulted = true;
                leftRunning = !await CloseAsync(state, Left(DrainTimeout, start), cancellationToken).ConfigureAwait(false);
                _state = null;
            }
        }
        finally
        {
            if (recoveryEnded)
            {
                _recovery.Release();
            }

            if (leftRunning)
            {
                Log.StopLeftCallsRunning(_logger, _time.GetElapsedTime(start), DrainTimeout, cancellationToken.IsCancellationRequested, recoveryEnded ? 0 : 1);
            }

            // Under the login lock: a recovery left running checks the adapter is open there before
            // it presents the PIN, and never presents it zeroed.
            lock (_login)
            {
                CryptographicOperations.ZeroMemory(_pin);
            }

            var inside = _module.Release();
            if (inside > 0)
            {
                Log.ModuleLeftLoaded(_logger, _options.ModulePath, inside, AbandonedCalls, recoveryEnded ? 0 : 1);
            }
        }
    }

    // A wait of the stop: at most `timeout`, ended early by the stop's token; once there is no time
    // left, a permit free right now is still taken (nothing to wait for is no reason to leave).
    private async Task<bool> StopWaitAsync(SemaphoreSlim semaphore, TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return semaphore.Wait(0, CancellationToken.None);
        }

        try
        {
            return await TimedWait.WaitAsync(semaphore, timeout, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return semaphore.Wait(0, CancellationToken.None);
        }
    }

    /// <summary>Test hook: how many secret-key session objects this process holds on the token.</summary>
    internal int CountSessionKeyObjects() =>
        _module.Call(_ =>
        {
            using var template = _templates.SessionSecretKeys();
            return CurrentState().Pool.First.FindAllObjects(template.Attributes).Count;
        });

    /// <summary>Test hook: how many session objects (secret, private and public keys) this process holds on the token.</summary>
    internal int CountSessionObjects() =>
        _module.Call(_ =>
        {
            using var template = _templates.SessionObjects();
            return CurrentState().Pool.First.FindAllObjects(template.Attributes).Count;
        });

    /// <summary>Test hook: sessions of the current generation leased right now.</summary>
    internal int SessionsInUse => CurrentState().Pool.InUse;

    /// <summary>Test hook: the handle cache of the current generation.</summary>
    internal KeyHandleCache Cache => CurrentState().Cache;

    /// <summary>
    /// Test hook: closes every session of the slot behind the adapter's back, between two
    /// native calls (as a device dropping its sessions would; never under a running call).
    /// </summary>
    internal void CloseAllSessionsForFaultInjection() =>
        _module.Exclusive(library =>
        {
            SlotList.WithTokenPresent(library).First(s => s.SlotId == CurrentState().SlotId).CloseAllSessions();
            return 0;
        });

    private SlotState CurrentState() => _state ?? throw new InvalidOperationException("the HSM is not open");

    private ValueTask<T> WithKeyAsync<T>(string operation, KeyMaterialRef key, KeyHandleKind kind, Func<ISession, IObjectHandle, T> use, CancellationToken cancellationToken) =>
        WithKeyAsync(operation, key, kind, (session, _, handle) => use(session, handle), cancellationToken);

    private async ValueTask<T> WithKeyAsync<T>(string operation, KeyMaterialRef key, KeyHandleKind kind, Func<ISession, SlotState, IObjectHandle, T> use, CancellationToken cancellationToken) =>
        await RunAsync(operation, (session, state) =>
        {
            for (var attempt = 1; ; attempt++)
            {
                using var lease = state.Cache.Lease(key.Id, kind, () => Unwrap(session, state, key.Wrapped, $"key version {key.Id}", kind));
                try
                {
                    return use(session, state, lease.Handle);
                }
                catch (Pkcs11Exception e) when (attempt == 1 && Pkcs11Errors.IsHandleLost(e))
                {
                    Log.HandleLost(_logger, key.Id.ToString());
                    lease.Forget();
                }
            }
        }, cancellationToken).ConfigureAwait(false);

    // The kind decides both the cache entry and the unwrap template, so a handle is only ever
    // leased as what it was unwrapped as. What the template cannot say (an EC key's curve, an
    // HMAC key's length: refused in unwrap templates) is checked on the copy.
    private IObjectHandle Unwrap(ISession session, SlotState state, WrappedKeyMaterial wrapped, string what, KeyHandleKind kind)
    {
        // KWP of an n-byte key (n a multiple of 8) is n + 8 bytes, integrity-checked: the length
        // the HSM may not report (see LengthIs) is the blob's.
        if (HmacKeyLength(kind) is { } secretLength && wrapped.Bytes.Length != secretLength + 8)
        {
            throw KmsErrors.Internal($"the stored material of {what} is {wrapped.Bytes.Length} bytes, not a wrapped {secretLength}-byte HMAC key");
        }

        using var mechanism = _module.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        using var template = UnwrapTemplate(kind);
        IObjectHandle handle;
        try
        {
            handle = session.UnwrapKey(mechanism, state.DomainKey, wrapped.UnsafeArray, template.Attributes);
        }
        catch (Pkcs11Exception e) when (Pkcs11Errors.IsWrappedKeyBad(e))
        {
            throw KmsErrors.Internal($"the stored material of {what} does not unwrap under the domain key ({e.RV})", e);
        }

        return CheckUnwrapped(session, what, handle, kind);
    }

    // A blob carries its own curve or length and the caller names one: a mismatch is stored
    // material that does not belong to its key version. Such a copy is destroyed, never cached.
    private IObjectHandle CheckUnwrapped(ISession session, string what, IObjectHandle handle, KeyHandleKind kind)
    {
        var (attribute, matches, expected) = kind switch
        {
            KeyHandleKind.EcdsaP256 => (CKA.CKA_EC_PARAMS, CurveIs(EcCurveParameters.P256), "a P-256 private key"),
            KeyHandleKind.EcdsaP384 => (CKA.CKA_EC_PARAMS, CurveIs(EcCurveParameters.P384), "a P-384 private key"),
            KeyHandleKind.HmacSha256 => (CKA.CKA_VALUE_LEN, LengthIs(32), "a 32-byte HMAC key"),
            KeyHandleKind.HmacSha384 => (CKA.CKA_VALUE_LEN, LengthIs(48), "a 48-byte HMAC key"),
            KeyHandleKind.HmacSha512 => (CKA.CKA_VALUE_LEN, LengthIs(64), "a 64-byte HMAC key"),
            _ => (default(CKA?), default(Func<IObjectAttribute, bool>?), ""),
        };
        if (attribute is null || matches is null)
        {
            return handle;
        }

        bool matched;
        try
        {
            var read = session.GetAttributeValue(handle, [attribute.Value]);
            try
            {
                matched = !read[0].CannotBeRead && matches(read[0]);
            }
            finally
            {
                read.DisposeAll();
            }
        }
        catch (Pkcs11Exception)
        {
            Destroy(session, handle);
            throw;
        }

        if (!matched)
        {
            Destroy(session, handle);
            throw KmsErrors.Internal($"the stored material of {what} is not {expected}");
        }

        return handle;
    }

    private static Func<IObjectAttribute, bool> CurveIs(EcCurveParameters curve) => read => curve.IsEcParams(read.GetValueAsByteArray());

    // SoftHSM reports CKA_VALUE_LEN = 0 on every unwrapped secret key (the attribute is refused in
    // unwrap templates and never filled in): 0 means "not said", and the blob's length decides.
    private static Func<IObjectAttribute, bool> LengthIs(int length) => read => read.GetValueAsUlong() is var said && (said == 0 || said == (ulong)length);

    private static int? HmacKeyLength(KeyHandleKind kind) => kind switch
    {
        KeyHandleKind.HmacSha256 => 32,
        KeyHandleKind.HmacSha384 => 48,
        KeyHandleKind.HmacSha512 => 64,
        _ => null,
    };

    // A call starts again only when it was still queued for a session of a generation whose drain
    // finished (a call holding a session finishes on a retiring generation). With the shipped
    // threshold (50,000 destroyed objects) that does not happen twice in a row; RecycleTests'
    // threshold of 40, with four callers churning on a loaded CI machine, once made one call meet
    // three in a row (3 attempts then), and later eight, when a session holder also started again.
    private const int StaleGenerationAttempts = 8;

    private ValueTask<T> RunAsync<T>(string operation, Func<ISession, SlotState, T> body, CancellationToken cancellationToken) =>
        RunAsync(operation, body, _options.CallTimeout, longOperation: false, cancellationToken);

    // A long operation (RSA generation: seconds, bounded by Hsm:KeyGenerationTimeout) defers a
    // planned recycle of the generation it runs on, and does not start on one whose recycle is
    // pending (Pkcs11Hsm.Recycle.cs).
    private async ValueTask<T> RunAsync<T>(string operation, Func<ISession, SlotState, T> body, TimeSpan timeout, bool longOperation, CancellationToken cancellationToken)
    {
        ThrowIfDisposed();
        // A generation retired by a recycle, closed by a recovery (or a module re-initialised by
        // another of its users) between taking it and the first native call: the operation has
        // not begun, and starts again on the current generation — within the waits' one
        // Hsm:CallTimeout from this first start, not a new one per start. The time an attempt spent
        // at the module gate behind a re-initialisation before it found its generation closed was a
        // wait too: past that Hsm:CallTimeout the caller is answered rather than started again, as
        // a new attempt's native bound would run past twice it (before, each start again after a
        // long hold at the gate could add one: nearly three Hsm:CallTimeouts after two
        // re-initialisations in a row).
        var start = _time.GetTimestamp();
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return timeout > TimeSpan.Zero
                    ? await RunBoundedAsync(operation, body, timeout, longOperation, start, cancellationToken).ConfigureAwait(false)
                    : await RunUnboundedAsync(operation, body, longOperation, cancellationToken).ConfigureAwait(false);
            }
            catch (StaleGenerationException) when (attempt < StaleGenerationAttempts && (timeout <= TimeSpan.Zero || _time.GetElapsedTime(start) <= _options.CallTimeout))
            {
            }
            catch (StaleGenerationException)
            {
                throw KmsErrors.Unavailable("the HSM is being re-initialised; retry shortly");
            }
        }
    }

    private async ValueTask<T> RunUnboundedAsync<T>(string operation, Func<ISession, SlotState, T> body, bool longOperation, CancellationToken cancellationToken)
    {
        var state = await HealthyStateAsync(cancellationToken).ConfigureAwait(false);
        using var counted = longOperation ? await BeginLongAsync(state, Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false) : default;
        using var lease = await state.Pool.AcquireAsync(cancellationToken).ConfigureAwait(false);
        return Invoke(operation, state, lease.Session, body);
    }

    private T Invoke<T>(string operation, SlotState state, ISession session, Func<ISession, SlotState, T> body)
    {
        try
        {
            return _module.Call(_ =>
            {
                // Checked under the module gate: no re-initialisation can slip in between this
                // check and the call, so no session or handle of a dead generation is used. A
                // generation being retired still serves the caller that holds one of its sessions:
                // the recycle's drain waits for that lease before it closes anything, so the caller
                // finishes here rather than starting again (once per recycle it met, which under
                // churn could be every time). A generation already closed — retired by a recycle
                // or faulted and closed by a recovery: a lease taken after the drain, by a caller
                // that was still queued for a session — or one whose module another user
                // re-initialised, is no fault of the caller's: it starts again on the current one.
                var sameModule = state.ModuleGeneration == _module.Generation;
                var retiring = state.Retired && !state.Pool.Disposed && sameModule;
                if (!retiring && (state.Retired || state.Pool.Disposed || (!state.Faulted && !sameModule)))
                {
                    Interlocked.Increment(ref _staleRestarts);
                    throw new StaleGenerationException();
                }

                if (!retiring && (state.Faulted || !sameModule))
                {
                    throw KmsErrors.Unavailable("the HSM is unavailable; retry shortly");
                }

                Faults.BeforeCall(operation);
                state.Cache.DestroyPending(handle => Destroy(session, handle));
                return body(session, state);
            });
        }
        catch (Pkcs11Exception e) when (Pkcs11Errors.IsDeviceLost(e))
        {
            state.Faulted = true;
            Log.DeviceLost(_logger, operation, e.RV);
            throw Pkcs11Errors.Unavailable(e);
        }
        catch (Pkcs11Exception e)
        {
            throw Pkcs11Errors.Internal(operation, e);
        }
    }

    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) == 1)
        {
            throw KmsErrors.Unavailable("the HSM adapter is shut down");
        }
    }

    private void Destroy(ISession session, IObjectHandle handle)
    {
        try
        {
            session.DestroyObject(handle);
            CountDestroyed();
        }
        catch (Pkcs11Exception e) when (!Pkcs11Errors.IsDeviceLost(e))
        {
            Log.DestroyFailed(_logger, e.RV);
        }
    }

    private ValueTask<SlotState> HealthyStateAsync(CancellationToken cancellationToken) =>
        HealthyStateAsync(Timeout.InfiniteTimeSpan, cancellationToken);

    // Waits at most `wait` for a recovery (infinite: as long as it takes).
    private ValueTask<SlotState> HealthyStateAsync(TimeSpan wait, CancellationToken cancellationToken)
    {
        var state = _state;
        return state is { Faulted: false } && state.ModuleGeneration == _module.Generation
            ? ValueTask.FromResult(state)
            : RecoverWithinAsync(state, wait, cancellationToken);
    }

    private async ValueTask<SlotState> RecoverAsync(SlotState? observed, TimeSpan wait, CancellationToken cancellationToken)
    {
        if (!await TimedWait.WaitAsync(_recovery, wait, _time, cancellationToken).ConfigureAwait(false))
        {
            throw KmsErrors.Unavailable("the HSM is recovering; retry shortly");
        }

        try
        {
            ThrowIfDisposed();
            if (_state is { Faulted: false } current && current.ModuleGeneration == _module.Generation)
            {
                return current;
            }

            if (_pinRefused.Value || _time.GetUtcNow() < _nextRecoveryUtc)
            {
                throw KmsErrors.Unavailable("the HSM is unavailable; retry shortly");
            }

            _nextRecoveryUtc = _time.GetUtcNow() + _options.RecoveryBackoff;

            // Close what is current now (the caller's view may be older and already closed).
            if (_state is { } stale)
            {
                stale.Faulted = true;
                if (!await CloseAsync(stale).ConfigureAwait(false))
                {
                    // A call still runs on it: closed once that returns, or its sessions and
                    // unwrapped key copies would outlive it for the life of the process.
                    _ = CloseWhenDrainedAsync(stale);
                }

                _state = null;
            }

            var fresh = SameDomainKey(OpenSlotReinitializingIfNeeded(observed?.ModuleGeneration ?? _module.Generation), "recovery");
            if (Volatile.Read(ref _disposed) == 1)
            {
                // Stopped while this recovery was stuck in the library: nobody closes what it opened but itself.
                _module.Call(_ =>
                {
                    fresh.Dispose();
                    return 0;
                });
                ThrowIfDisposed();
            }

            _state = fresh;
            Log.Recovered(_logger, fresh.Cache.Generation, fresh.ModuleGeneration);
            return fresh;
        }
        catch (Exception e) when (e is Pkcs11Exception or HsmConfigurationException)
        {
            Log.RecoveryFailed(_logger, _options.RecoveryBackoff, e);
            throw KmsErrors.Unavailable("the HSM is unavailable; retry shortly", e);
        }
        finally
        {
            _recovery.Release();
        }
    }

    // A re-opened slot must hold the domain key it held before (same check value), or it is closed again and the adapter stays unavailable.
    private SlotState SameDomainKey(SlotState fresh, string after)
    {
        if (string.Equals(fresh.CheckValue, DomainKeyCheckValue, StringComparison.Ordinal))
        {
            return fresh;
        }

        _module.Call(_ =>
        {
            fresh.Dispose();
            return 0;
        });
        throw new HsmConfigurationException(
            $"after {after} the token's domain key has check value {fresh.CheckValue}, not {DomainKeyCheckValue}; staying unavailable");
    }

    private SlotState OpenSlotReinitializingIfNeeded(long observedModuleGeneration)
    {
        try
        {
            return OpenSlot();
        }
        catch (Pkcs11Exception e) when (Pkcs11Errors.IsDeviceLost(e))
        {
            _module.Reinitialize(observedModuleGeneration);
            return OpenSlot();
        }
    }

    // True when the sessions were drained and closed.
    private async Task<bool> CloseAsync(SlotState state)
    {
        if (!await CloseAsync(state, DrainTimeout, CancellationToken.None).ConfigureAwait(false))
        {
            Log.DrainTimedOut(_logger, DrainTimeout);
            return false;
        }

        return true;
    }

    // Closing a session under a running call is how PKCS#11 libraries crash: false, nothing closed,
    // when a call still held one at the end of the drain.
    private async Task<bool> CloseAsync(SlotState state, TimeSpan drainTimeout, CancellationToken cancellationToken)
    {
        if (!await state.Pool.DrainAsync(drainTimeout, cancellationToken).ConfigureAwait(false))
        {
            return false;
        }

        try
        {
            _module.Call(_ =>
            {
                state.Dispose();
                return 0;
            });
        }
        catch (Pkcs11Exception)
        {
            // The library is gone; so are the sessions.
        }

        // Callers queued on this pool wake up, find it closed and start again on the next generation.
        state.Pool.ReleaseDrained();
        return true;
    }

    // A generation left behind by a recovery because a call still ran on it. Closed under the
    // recovery lock (not while the adapter is disposed) and only while the module is the one its
    // sessions belong to: after a re-initialisation they died with it, and their handle numbers
    // may be a new generation's.
    private async Task CloseWhenDrainedAsync(SlotState state)
    {
        while (!await state.Pool.DrainAsync(DrainTimeout, CancellationToken.None).ConfigureAwait(false))
        {
            if (Volatile.Read(ref _disposed) == 1)
            {
                return;
            }
        }

        await _recovery.WaitAsync().ConfigureAwait(false);
        try
        {
            if (Volatile.Read(ref _disposed) == 1)
            {
                return;
            }

            _module.Call(_ =>
            {
                if (state.ModuleGeneration == _module.Generation)
                {
                    state.Dispose();
                }

                return 0;
            });
            Log.LateClosed(_logger, state.Cache.Generation);
        }
        catch (Pkcs11Exception)
        {
            // The library is gone; so are the sessions.
        }
        finally
        {
            _recovery.Release();
            state.Pool.ReleaseDrained();
        }
    }

    private SlotState OpenSlot()
    {
        var moduleGeneration = _module.Generation;
        return _module.Call(library =>
        {
            Faults.BeforeCall("C_OpenSession");
            var slot = FindSlot(library);
            var mechanisms = slot.GetMechanismList();
            var missing = _profile.RequiredMechanismIds.Where(m => !mechanisms.Contains(m)).ToList();
            if (missing.Count > 0)
            {
                throw new HsmConfigurationException(
                    $"token '{_options.TokenLabel}' lacks mechanisms the profile '{_profile.Name}' requires: {string.Join(", ", missing)}");
            }

            var sessions = new List<ISession>();
            try
            {
                for (var i = 0; i < Math.Max(1, _options.SessionPoolSize); i++)
                {
                    sessions.Add(slot.OpenSession(SessionType.ReadWrite));
                }

                Login(sessions[0]);
                var domainKey = DomainKeyLocator.Locate(sessions[0], _templates, _options, _profile, _module.Factories);
                ProveSameDomainKey(sessions[0], domainKey.Handle);
                var generation = Interlocked.Increment(ref _generation);
                return new SlotState(
                    slot.SlotId,
                    moduleGeneration,
                    new SessionPool([.. sessions], _time),
                    domainKey.Handle,
                    domainKey.CheckValue,
                    domainKey.Created,
                    new KeyHandleCache(generation, _options.KeyCacheCapacity, _options.KeyCacheIdleTimeout, _time));
            }
            catch
            {
                foreach (var session in sessions)
                {
                    try
                    {
                        session.Dispose();
                    }
                    catch (Pkcs11Exception)
                    {
                        // Already dead.
                    }
                }

                throw;
            }
        });
    }

    // The check value identifies a domain key by 3 bytes: someone with the PIN can make a key of
    // their own with the same one (2^24 AES operations) and put it in the real one's place. A
    // re-opened slot (recovery, recycle) must also unwrap what the first open wrapped — KWP's
    // integrity check makes that about 2^-64 for any other key — or it is refused.
    private void ProveSameDomainKey(ISession session, IObjectHandle domainKey)
    {
        using var kwp = _module.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        if (_domainKeyWitness is null)
        {
            using var generate = _module.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
            using var template = _templates.GeneratedAesKey();
            var key = session.GenerateKey(generate, template.Attributes);
            try
            {
                _domainKeyWitness = session.WrapKey(kwp, domainKey, key);
            }
            finally
            {
                session.DestroyObject(key);
                CountDestroyed();
            }

            return;
        }

        using var unwrapTemplate = UnwrapTemplate(KeyHandleKind.Aes256Gcm);
        IObjectHandle copy;
        try
        {
            copy = session.UnwrapKey(kwp, domainKey, _domainKeyWitness, unwrapTemplate.Attributes);
        }
        catch (Pkcs11Exception e) when (!Pkcs11Errors.IsDeviceLost(e))
        {
            throw new HsmConfigurationException(
                $"the token's domain key (check value {DomainKeyCheckValue}) does not unwrap what the domain key this server opened wrapped ({e.RV}): it was replaced; staying unavailable", e);
        }

        session.DestroyObject(copy);
        CountDestroyed();
    }

    private ISlot FindSlot(IPkcs11Library library) => SlotList.FindToken(library, _options.TokenLabel, _options.ModulePath).Slot;

    private void Login(ISession session)
    {
        lock (_login)
        {
            // A recovery that outlived the adapter's stop (stuck in the library while it stopped):
            // the PIN is zeroed, and presenting that would count as a wrong PIN on the token.
            ThrowIfDisposed();
            if (_pinRefused.Value)
            {
                throw new HsmConfigurationException("the HSM refused the PIN earlier; not presenting it again (restart with the right PIN)");
            }

            try
            {
                session.Login(CKU.CKU_USER, _pin);
            }
            catch (Pkcs11Exception e) when (e.RV == CKR.CKR_USER_ALREADY_LOGGED_IN)
            {
                // Login is per process and token: another user of this module logged in already.
            }
            catch (Pkcs11Exception e) when (Pkcs11Errors.IsPinRefused(e))
            {
                _pinRefused.Value = true;

                // While serving (a recovery's login), nothing else says it: logged (2006). At the
                // open, the exception is the refusal, and whoever opened says it (the server's
                // start refusal line, the CLI's error): logged too, it came before that line.
                if (_opened)
                {
                    Log.PinRefused(_logger, e.RV);
                }

                throw new HsmConfigurationException($"the HSM refused the PIN ({e.RV}); not retrying", e);
            }
        }
    }

    // The PIN as pinned UTF-8 bytes: a PIN file's first line is read as bytes and never becomes
    // a string. Hsm:Pin is a string already (.NET configuration holds every value as one, and
    // keeps it for the process's life); it is encoded once and not copied further.
    private static byte[] ReadPin(HsmOptions options)
    {
        if (!string.IsNullOrEmpty(options.PinFile))
        {
            if (!File.Exists(options.PinFile))
            {
                throw new HsmConfigurationException($"Hsm:PinFile {options.PinFile} does not exist");
            }

            var content = File.ReadAllBytes(options.PinFile);
            try
            {
                // As a text reader takes it: without a UTF-8 byte order mark, up to the first line end.
                var line = content.AsSpan();
                if (line.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]))
                {
                    line = line[3..];
                }

                if (line.IndexOf((byte)'\n') is var newline and >= 0)
                {
                    line = line[..newline];
                }

                line = line.TrimEnd((byte)'\r');
                return !line.IsEmpty
                    ? PinnedCopy(line)
                    : throw new HsmConfigurationException($"Hsm:PinFile {options.PinFile} is empty");
            }
            finally
            {
                CryptographicOperations.ZeroMemory(content);
            }
        }

        if (string.IsNullOrEmpty(options.Pin))
        {
            throw new HsmConfigurationException("set Hsm:PinFile (or Hsm:Pin) to the token's user PIN");
        }

        var pin = GC.AllocateUninitializedArray<byte>(Encoding.UTF8.GetByteCount(options.Pin), pinned: true);
        Encoding.UTF8.GetBytes(options.Pin, pin);
        return pin;
    }

    private static byte[] PinnedCopy(ReadOnlySpan<byte> pin)
    {
        var copy = GC.AllocateUninitializedArray<byte>(pin.Length, pinned: true);
        pin.CopyTo(copy);
        return copy;
    }

    /// <summary>Everything that belongs to one generation of sessions: dies together.</summary>
    private sealed class SlotState(
        ulong slotId,
        long moduleGeneration,
        SessionPool pool,
        IObjectHandle domainKey,
        string checkValue,
        bool domainKeyCreated,
        KeyHandleCache cache) : IDisposable
    {
        private volatile bool _faulted;
        private volatile bool _retired;

        // Long operations (RSA generation) and a planned recycle of this generation: see Pkcs11Hsm.Recycle.cs.
        private readonly Lock _long = new();
        private int _longOperations;
        private TaskCompletionSource? _noLongOperations;
        private TaskCompletionSource? _recyclePending;

        public ulong SlotId { get; } = slotId;

        public long ModuleGeneration { get; } = moduleGeneration;

        public SessionPool Pool { get; } = pool;

        public IObjectHandle DomainKey { get; } = domainKey;

        public string CheckValue { get; } = checkValue;

        public bool DomainKeyCreated { get; } = domainKeyCreated;

        public KeyHandleCache Cache { get; } = cache;

        public bool Faulted
        {
            get => _faulted;
            set
            {
                if (!value)
                {
                    _faulted = false;
                    return;
                }

                // A fault ends a pending recycle's wait for the long operations: the fault path
                // (a recovery) takes over, and is never deferred.
                lock (_long)
                {
                    _faulted = true;
                    _noLongOperations?.TrySetResult();
                }
            }
        }

        /// <summary>Closed on purpose (a recycle), not by a fault: its callers start again on the next generation.</summary>
        public bool Retired
        {
            get => _retired;
            set => _retired = value;
        }

        /// <summary>
        /// Counts a long operation on this generation, or, when a recycle of it is pending (or
        /// done), does not: returns the task to wait for before starting again on the next.
        /// </summary>
        public Task? TryBeginLong()
        {
            lock (_long)
            {
                if (_retired)
                {
                    return Task.CompletedTask;
                }

                if (_recyclePending is { } pending)
                {
                    return pending.Task;
                }

                _longOperations++;
                return null;
            }
        }

        /// <summary>A long operation counted by <see cref="TryBeginLong"/> has ended (or was abandoned).</summary>
        public void EndLong()
        {
            lock (_long)
            {
                if (--_longOperations == 0)
                {
                    _noLongOperations?.TrySetResult();
                }
            }
        }

        /// <summary>
        /// A recycle of this generation is pending: no long operation starts on it from now on.
        /// Returns the long operations in flight and a task that completes once none is (or the
        /// generation faulted).
        /// </summary>
        public (int InFlight, Task Drained) BeginRecycle()
        {
            lock (_long)
            {
                _recyclePending = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _noLongOperations = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                if (_longOperations == 0 || _faulted)
                {
                    _noLongOperations.TrySetResult();
                }

                return (_longOperations, _noLongOperations.Task);
            }
        }

        /// <summary>
        /// The recycle has retired this generation or given up: the long operations waiting for it
        /// start again (on the next generation, or, when it gave up, wherever the adapter is).
        /// </summary>
        public void EndRecycle()
        {
            TaskCompletionSource? pending;
            lock (_long)
            {
                pending = _recyclePending;
                _recyclePending = null;
                _noLongOperations = null;
            }

            pending?.TrySetResult();
        }

        public void Dispose()
        {
            Cache.Dispose();
            Pool.Dispose();
        }
    }
}
