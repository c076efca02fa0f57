using System.Security.Cryptography;
using Kms.Core.Access;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>Encrypt, Decrypt, ReEncrypt, data keys, their batch forms, and random bytes: all crypto in the HSM.</summary>
/// <remarks>
/// A blob that cannot be decrypted — malformed, of an unknown or another tenant's key
/// version, naming a version of a key of another purpose (only ENCRYPT_DECRYPT keys make blobs),
/// tampered, or under another context — is one opaque
/// <see cref="KmsErrorCode.DecryptionFailed"/>, so blobs cannot probe other tenants. A blob
/// of the caller's own key that is disabled, destroyed or below the minimum decryption
/// version is FAILED_PRECONDITION naming the state: the caller may know its own keys.
/// </remarks>
public sealed class CryptoService(IHsm hsm, IKeyStore store, UsageCounter usage, KeyAccessService keyAccess)
{
    private readonly KeyResolver _resolver = new(store);

    /// <summary>Encrypts up to <see cref="Limits.MaxEncryptPlaintextBytes"/> with the key's primary version.</summary>
    public async Task<EncryptResult> EncryptAsync(Caller caller, KeyReference key, byte[] plaintext, EncryptionContext context, CancellationToken cancellationToken)
    {
        ValidatePlaintext(plaintext, "plaintext");
        var primary = await GetPrimaryForEncryptionAsync(caller, key, context, cancellationToken);
        await usage.TakeEncryptionsAsync(primary.Version, 1, cancellationToken);
        var blob = await SealAsync(caller, primary, plaintext, context, cancellationToken);
        return new EncryptResult(blob, primary.Version.Name);
    }

    /// <summary>Decrypts a blob made by Encrypt or GenerateDataKey in the caller's tenant.</summary>
    /// <returns>The plaintext; the caller disposes it (zeroing it) when done.</returns>
    public async Task<DecryptResult> DecryptAsync(Caller caller, byte[] ciphertext, EncryptionContext context, CancellationToken cancellationToken)
    {
        // The blob names its version (within the caller's tenant): the audit event records which,
        // refused by the key's policy or state too (OpenBlobAsync names it before those checks).
        var (blob, found) = await OpenBlobAsync(caller, ciphertext, "ciphertext", context, cancellationToken, auditAsResource: true);
        var plaintext = await UnsealAsync(caller, blob, found, context, cancellationToken);
        return new DecryptResult(new SecretBytes(plaintext), found.Version.Name);
    }

    /// <summary>
    /// A fresh 256-bit data key from the HSM's RNG, encrypted under the key's primary version:
    /// the draw (key and IV together) and the encryption in one trip to the HSM.
    /// </summary>
    /// <returns>The data key; the caller disposes it (zeroing the plaintext) when done.</returns>
    public async Task<DataKeyResult> GenerateDataKeyAsync(Caller caller, KeyReference key, EncryptionContext context, CancellationToken cancellationToken)
    {
        var primary = await GetPrimaryForEncryptionAsync(caller, key, context, cancellationToken);
        await usage.TakeEncryptionsAsync(primary.Version, 1, cancellationToken);
        var aad = CiphertextBlob.BuildAad(primary.Version.Id, caller.Tenant, context);
        var sealedKey = await hsm.For(primary.Key.Residency).GenerateDataKeyAsync(new KeyMaterialRef(primary.Version.Id, MaterialOf(primary)), Limits.DataKeyBytes, aad, cancellationToken);
        try
        {
            return new DataKeyResult(new SecretBytes(sealedKey.DataKey), CiphertextBlob.Format(primary.Version.Id, sealedKey.Iv, sealedKey.CiphertextAndTag), primary.Version.Name);
        }
        catch
        {
            // An HSM answer that does not make a blob (a short IV or no tag): the key is nobody's.
            CryptographicOperations.ZeroMemory(sealedKey.DataKey);
            throw;
        }
    }

    /// <summary>
    /// Decrypts a blob and encrypts its plaintext under the destination key's primary version,
    /// with a new context. The plaintext never leaves the server and is zeroed after use.
    /// </summary>
    public async Task<ReEncryptResult> ReEncryptAsync(
        Caller caller,
        byte[] ciphertext,
        EncryptionContext sourceContext,
        KeyReference destination,
        EncryptionContext destinationContext,
        CancellationToken cancellationToken)
    {
        // Both sides are looked up before either is judged, so that the audit event names the
        // version of each that resolved — the destination's as its resource, the source's in its
        // key versions — whichever side is refused (docs/audit-format.md). What the caller is
        // told is as before: the source's failure first, then the destination's.
        var destinationLookup = await ItemResult.RunAsync(() => LookUpPrimaryAsync(caller, destination, cancellationToken));
        if (destinationLookup.Value is { } resolved)
        {
            Audit.AuditScope.SetResource(resolved.Version.Name.ToString());
        }

        var (blob, found) = await OpenBlobAsync(caller, ciphertext, "ciphertext", sourceContext, cancellationToken);
        var primary = destinationLookup.Value ?? throw destinationLookup.Error!;
        await EnsureEncryptAllowedAsync(caller, primary, destination, destinationContext, cancellationToken);
        var plaintext = await UnsealAsync(caller, blob, found, sourceContext, cancellationToken);
        try
        {
            await usage.TakeEncryptionsAsync(primary.Version, 1, cancellationToken);
            var sealedBlob = await SealAsync(caller, primary, plaintext, destinationContext, cancellationToken);
            return new ReEncryptResult(sealedBlob, found.Version.Name, primary.Version.Name);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(plaintext);
        }
    }

    /// <summary>Random bytes from the HSM: 1 to <see cref="Limits.MaxRandomBytes"/>.</summary>
    public async Task<byte[]> GenerateRandomAsync(int length, CancellationToken cancellationToken)
    {
        if (length is < 1 or > Limits.MaxRandomBytes)
        {
            throw KmsErrors.InvalidArgument("length_bytes", $"must be 1 to {Limits.MaxRandomBytes}");
        }

        return await hsm.GenerateRandomAsync(length, cancellationToken);
    }

    /// <summary>
    /// Encrypt for each item; an item's failure is its own. Each item's checks come first; then one
    /// random draw per residency region, from that region's HSM, gives the IVs of those that
    /// passed, and the items sealed under one key version go to the HSM together.
    /// </summary>
    public async Task<IReadOnlyList<ItemResult<EncryptResult>>> BatchEncryptAsync(Caller caller, IReadOnlyList<BatchItem> items, CancellationToken cancellationToken)
    {
        ValidateBatch(items, items.Sum(i => (long)(i.Data?.Length ?? 0)), "plaintext");
        var keys = new BatchKeys(this, caller);
        var results = new ItemResult<EncryptResult>[items.Count];
        var admitted = new List<AdmittedItem>(items.Count);
        await AdmitEachAsync(items, results, admitted, async (item, index) =>
        {
            var plaintext = item.Data ?? [];
            ValidatePlaintext(plaintext, Field(index, "plaintext"));
            var context = EncryptionContext.Create(item.Context, Field(index, "encryption_context"));
            var primary = await keys.PrimaryAsync(KeyReference.Parse(item.Name, Field(index, "name")), context, cancellationToken);
            await usage.TakeEncryptionsAsync(primary.Version, 1, cancellationToken);
            return new AdmittedItem(index, primary, context, [], plaintext);
        });

        var withIvs = await WithIvsAsync(admitted, (item, error) => results[item.Index] = new ItemResult<EncryptResult>(null, error), cancellationToken);
        await SealByVersionAsync(caller, withIvs, (item, blob, error) => results[item.Index] = error is null
            ? new ItemResult<EncryptResult>(new EncryptResult(blob!, item.Primary.Version.Name), null)
            : new ItemResult<EncryptResult>(null, error), cancellationToken);
        return results;
    }

    /// <summary>
    /// Decrypt for each item; an item's failure is its own. Each item is parsed, looked up and
    /// checked in order, then the items under one key version go to the HSM together (a wrong
    /// tag is still that item's "decryption failed"). Dispose the results to zero the plaintexts.
    /// </summary>
    public async Task<IReadOnlyList<ItemResult<DecryptResult>>> BatchDecryptAsync(Caller caller, IReadOnlyList<BatchItem> items, CancellationToken cancellationToken)
    {
        ValidateBatch(items, items.Sum(i => (long)(i.Data?.Length ?? 0)), "ciphertext");
        var versions = new Dictionary<KeyVersionId, KeyVersionMaterial?>();
        var results = new ItemResult<DecryptResult>[items.Count];
        var admitted = new List<OpenedItem>(items.Count);
        try
        {
            await AdmitEachAsync(items, results, admitted, async (item, index) =>
            {
                var context = EncryptionContext.Create(item.Context, Field(index, "encryption_context"));
                var (blob, found) = await OpenBlobAsync(caller, item.Data ?? [], Field(index, "ciphertext"), context, cancellationToken, versions);
                return new OpenedItem(index, blob, found, context);
            });

            await OpenByVersionAsync(caller, admitted, (item, plaintext, error) => results[item.Index] = plaintext is null
                ? new ItemResult<DecryptResult>(null, error)
                : new ItemResult<DecryptResult>(new DecryptResult(new SecretBytes(plaintext), item.Found.Version.Name), null), cancellationToken);
            return results;
        }
        catch
        {
            DisposeAll(results);
            throw;
        }
    }

    // Each item's checks, in order: an item that fails them gets its error as its result, the
    // others are added to `admitted` (as they pass, so a caller's cleanup sees every one of them).
    internal static async Task AdmitEachAsync<TItem, TAdmitted, TResult>(IReadOnlyList<TItem> items, ItemResult<TResult>[] results, List<TAdmitted> admitted, Func<TItem, int, Task<TAdmitted>> check)
        where TResult : class
    {
        for (var i = 0; i < items.Count; i++)
        {
            var (item, index) = (items[i], i);
            var checkedItem = await ItemResult.RunAsync(() => check(item, index));
            if (checkedItem.Error is not null)
            {
                results[i] = new ItemResult<TResult>(null, checkedItem.Error);
            }
            else
            {
                admitted.Add(checkedItem.Value!);
            }
        }
    }

    // A batch item whose ciphertext parsed, was found and passed its checks, waiting for the HSM.
    private sealed record OpenedItem(int Index, CiphertextBlob Blob, KeyVersionMaterial Found, EncryptionContext Context);

    // The items that passed their checks, opened with one HSM call per key version and per
    // HsmChunk items. `done` gets each item's plaintext (it owns it from then on, and each one
    // is counted as a decryption) or its error: "decryption failed" for a ciphertext that does
    // not open, the call's own failure for every item of a call that failed.
    private async Task OpenByVersionAsync(Caller caller, List<OpenedItem> opened, Action<OpenedItem, byte[]?, KmsException?> done, CancellationToken cancellationToken)
    {
        foreach (var group in opened.GroupBy(item => item.Found.Version.Id).SelectMany(group => group.Chunk(HsmChunk)))
        {
            var found = group[0].Found;
            var inputs = group.Select(item => new AesGcmInput(item.Blob.Iv.ToArray(), CiphertextBlob.BuildAad(found.Version.Id, caller.Tenant, item.Context), item.Blob.CiphertextAndTag.ToArray())).ToList();
            var plaintexts = await ItemResult.RunAsync(async () => await hsm.For(found.Key.Residency).DecryptAesGcmManyAsync(
                new KeyMaterialRef(found.Version.Id, MaterialOf(found)), inputs, cancellationToken));
            // An answer of the wrong length is the whole call's failure, as the HSM's own would be.
            var answered = plaintexts.Value;
            var error = plaintexts.Error;
            if (answered is not null && answered.Length != group.Length)
            {
                IHsm.ZeroAll(answered);
                error = KmsErrors.Internal($"the HSM answered {answered.Length} decryptions for {group.Length}");
                answered = null;
            }

            var j = 0;
            try
            {
                for (; j < group.Length; j++)
                {
                    if (answered?[j] is { } plaintext)
                    {
                        usage.CountDecryption(found.Version.Id);
                        done(group[j], plaintext, null);
                    }
                    else
                    {
                        done(group[j], null, error ?? KmsErrors.DecryptionFailed());
                    }
                }
            }
            catch
            {
                // The plaintexts not yet handed over.
                IHsm.ZeroAll(answered?[j..] ?? []);
                throw;
            }
        }
    }

    /// <summary>
    /// ReEncrypt for each item; an item's failure is its own. Each item's checks come first, in
    /// order (both contexts, the destination key, the source blob); then the items are opened per
    /// source key version, take their usage of the destination, get their IVs from one random
    /// draw per destination region, and are sealed per destination key version — one HSM call each, as the other batches.
    /// </summary>
    public async Task<IReadOnlyList<ItemResult<ReEncryptResult>>> BatchReEncryptAsync(Caller caller, IReadOnlyList<BatchReEncryptItem> items, CancellationToken cancellationToken)
    {
        ValidateBatch(items, items.Sum(i => (long)(i.Ciphertext?.Length ?? 0)), "ciphertext");
        var keys = new BatchKeys(this, caller);
        var versions = new Dictionary<KeyVersionId, KeyVersionMaterial?>();
        var results = new ItemResult<ReEncryptResult>[items.Count];
        var destinations = new (KeyVersionMaterial Primary, EncryptionContext Context)[items.Count];
        var opened = new List<OpenedItem>(items.Count);
        var plaintexts = new List<(OpenedItem Source, byte[] Plaintext)>(items.Count);
        try
        {
            await AdmitEachAsync(items, results, opened, async (item, index) =>
            {
                var sourceContext = EncryptionContext.Create(item.SourceContext, Field(index, "source_encryption_context"));
                var destinationContext = EncryptionContext.Create(item.DestinationContext, Field(index, "destination_encryption_context"));
                // Both sides looked up before either is judged (the event names each version that
                // resolved, as ReEncrypt's does); the item's answer is as before: the destination's
                // failure first, then the source's.
                var destination = KeyReference.Parse(item.DestinationName, Field(index, "destination_name"));
                var destinationLookup = await ItemResult.RunAsync(() => keys.LookUpAsync(destination, cancellationToken));
                var source = await ItemResult.RunAsync(() => OpenBlobAsync(caller, item.Ciphertext ?? [], Field(index, "ciphertext"), sourceContext, cancellationToken, versions));
                var primary = destinationLookup.Value ?? throw destinationLookup.Error!;
                await keys.EnsureAllowedAsync(primary, destination, destinationContext, cancellationToken);
                var (blob, found) = source.Error is null ? source.Value : throw source.Error;
                destinations[index] = (primary, destinationContext);
                return new OpenedItem(index, blob, found, sourceContext);
            });

            await OpenByVersionAsync(caller, opened, (item, plaintext, error) =>
            {
                if (plaintext is null)
                {
                    results[item.Index] = new ItemResult<ReEncryptResult>(null, error);
                }
                else
                {
                    plaintexts.Add((item, plaintext));
                }
            }, cancellationToken);

            // Usage of the destination is taken only for what opened.
            var admitted = new List<(OpenedItem Source, byte[] Plaintext)>(plaintexts.Count);
            foreach (var (source, plaintext) in plaintexts)
            {
                var taken = await ItemResult.RunAsync(async () =>
                {
                    await usage.TakeEncryptionsAsync(destinations[source.Index].Primary.Version, 1, cancellationToken);
                    return true;
                });
                if (taken.Error is not null)
                {
                    results[source.Index] = new ItemResult<ReEncryptResult>(null, taken.Error);
                }
                else
                {
                    admitted.Add((source, plaintext));
                }
            }

            if (admitted.Count > 0)
            {
                var toSeal = await WithIvsAsync(admitted.ConvertAll(item => new AdmittedItem(
                    item.Source.Index,
                    destinations[item.Source.Index].Primary,
                    destinations[item.Source.Index].Context,
                    [],
                    item.Plaintext)), (item, error) => results[item.Index] = new ItemResult<ReEncryptResult>(null, error), cancellationToken);
                var sources = admitted.ToDictionary(item => item.Source.Index, item => item.Source.Found.Version.Name);
                await SealByVersionAsync(caller, toSeal, (item, blob, error) => results[item.Index] = error is null
                    ? new ItemResult<ReEncryptResult>(new ReEncryptResult(blob!, sources[item.Index], item.Primary.Version.Name), null)
                    : new ItemResult<ReEncryptResult>(null, error), cancellationToken);
            }

            return results;
        }
        finally
        {
            // The plaintexts never leave the server.
            foreach (var (_, plaintext) in plaintexts)
            {
                CryptographicOperations.ZeroMemory(plaintext);
            }
        }
    }

    /// <summary>
    /// GenerateDataKey for each item; an item's failure is its own. Each item's checks come first
    /// (each distinct key looked up once); then one random draw per residency region, from that
    /// region's HSM, gives the data keys and IVs of those that passed, and the data keys sealed
    /// under one key version go to the HSM together.
    /// Dispose the results to zero the keys.
    /// </summary>
    public async Task<IReadOnlyList<ItemResult<DataKeyResult>>> BatchGenerateDataKeyAsync(Caller caller, IReadOnlyList<BatchItem> items, CancellationToken cancellationToken)
    {
        ValidateBatch(items, 0, "requests");
        var keys = new BatchKeys(this, caller);
        const int Stride = Limits.DataKeyBytes + CiphertextBlob.IvLength;
        var draws = new List<byte[]>();
        var results = new ItemResult<DataKeyResult>[items.Count];
        var admitted = new List<AdmittedItem>(items.Count);
        try
        {
            await AdmitEachAsync(items, results, admitted, async (item, index) =>
            {
                var context = EncryptionContext.Create(item.Context, Field(index, "encryption_context"));
                var primary = await keys.PrimaryAsync(KeyReference.Parse(item.Name, Field(index, "name")), context, cancellationToken);
                await usage.TakeEncryptionsAsync(primary.Version, 1, cancellationToken);
                return new AdmittedItem(index, primary, context, [], []);
            });

            // One random draw per residency region for the data keys and IVs of the items that passed (none: no HSM call).
            var drawn = await DrawByRegionAsync(admitted, Stride, draws, (k, random, offset) =>
                admitted[k] = admitted[k] with { Iv = random[(offset + Limits.DataKeyBytes)..(offset + Stride)], Plaintext = random[offset..(offset + Limits.DataKeyBytes)] },
                (item, error) => results[item.Index] = new ItemResult<DataKeyResult>(null, error), cancellationToken);

            await SealByVersionAsync(caller, [.. drawn.Select(k => admitted[k])], (item, blob, error) => results[item.Index] = error is null
                ? new ItemResult<DataKeyResult>(new DataKeyResult(new SecretBytes(item.Plaintext), blob!, item.Primary.Version.Name), null)
                : new ItemResult<DataKeyResult>(null, error), cancellationToken);
            return results;
        }
        catch
        {
            DisposeAll(results);
            throw;
        }
        finally
        {
            foreach (var random in draws)
            {
                CryptographicOperations.ZeroMemory(random);
            }

            // The data keys of the items that did not get a result (a result's own is zeroed when it is disposed).
            foreach (var item in admitted)
            {
                if (results[item.Index]?.Value is null)
                {
                    CryptographicOperations.ZeroMemory(item.Plaintext);
                }
            }
        }
    }

    // The items that passed their checks, each with its IV from one random draw per residency
    // region (none passed: no HSM call); an item whose region's draw failed goes to `failed` instead.
    private async Task<List<AdmittedItem>> WithIvsAsync(List<AdmittedItem> admitted, Action<AdmittedItem, KmsException> failed, CancellationToken cancellationToken)
    {
        var withIvs = new List<AdmittedItem>(admitted);
        var drawn = await DrawByRegionAsync(withIvs, CiphertextBlob.IvLength, [], (k, random, offset) =>
            withIvs[k] = withIvs[k] with { Iv = random[offset..(offset + CiphertextBlob.IvLength)] }, failed, cancellationToken);
        return [.. drawn.Select(k => withIvs[k])];
    }

    // Randomness for a batch's items from the HSM of the region each item's key version lives in
    // (the home HSM for a key without residency), as a single call draws it: one draw per region,
    // in the order the regions first appear, `stride` bytes an item. `take` gets each item's index,
    // its region's draw and the offset of its bytes; every draw is added to `draws` before it is
    // handed out, for the caller to zero. A region whose draw fails (its HSM down, a short answer)
    // fails its own items only, each handed to `failed`, as a failed sealing call does; the others
    // go on. Returns the indexes of the items that got their bytes, in order.
    private async Task<List<int>> DrawByRegionAsync(
        List<AdmittedItem> admitted, int stride, List<byte[]> draws, Action<int, byte[], int> take, Action<AdmittedItem, KmsException> failed, CancellationToken cancellationToken)
    {
        var drawn = new List<int>(admitted.Count);
        foreach (var region in Enumerable.Range(0, admitted.Count).GroupBy(k => admitted[k].Primary.Key.Residency, StringComparer.Ordinal))
        {
            var items = region.ToList();
            var draw = await ItemResult.RunAsync(async () =>
            {
                var random = await hsm.For(region.Key).GenerateRandomAsync(stride * items.Count, cancellationToken);
                draws.Add(random);
                return random.Length == stride * items.Count
                    ? random
                    : throw KmsErrors.Internal($"the HSM answered {random.Length} random bytes for {stride * items.Count}");
            });
            for (var j = 0; j < items.Count; j++)
            {
                if (draw.Error is { } error)
                {
                    failed(admitted[items[j]], error);
                }
                else
                {
                    take(items[j], draw.Value!, j * stride);
                    drawn.Add(items[j]);
                }
            }
        }

        drawn.Sort();
        return drawn;
    }

    // The items that passed their checks, sealed with one HSM call per key version (one session,
    // one key handle) and per HsmChunk items, so that one call stays far inside Hsm:CallTimeout
    // on a slow HSM; a call's failure is each of its items' failure. `done` gets each item's blob or error.
    private async Task SealByVersionAsync(Caller caller, List<AdmittedItem> admitted, Action<AdmittedItem, byte[]?, KmsException?> done, CancellationToken cancellationToken)
    {
        foreach (var items in admitted.GroupBy(item => item.Primary.Version.Id).SelectMany(group => group.Chunk(HsmChunk)))
        {
            var primary = items[0].Primary;
            var inputs = items.Select(item => new AesGcmInput(item.Iv, CiphertextBlob.BuildAad(primary.Version.Id, caller.Tenant, item.Context), item.Plaintext)).ToList();
            var sealedAll = await ItemResult.RunAsync(async () => await hsm.For(primary.Key.Residency).EncryptAesGcmManyAsync(
                new KeyMaterialRef(primary.Version.Id, MaterialOf(primary)), inputs, cancellationToken));
            var error = sealedAll.Error ?? (sealedAll.Value!.Length != items.Length || sealedAll.Value.Any(sealedBytes => sealedBytes is null)
                ? KmsErrors.Internal($"the HSM answered {sealedAll.Value.Count(sealedBytes => sealedBytes is not null)} encryptions for {items.Length}")
                : null);
            for (var j = 0; j < items.Length; j++)
            {
                done(items[j], error is null ? CiphertextBlob.Format(primary.Version.Id, items[j].Iv, sealedAll.Value![j]) : null, error);
            }
        }
    }

    // At ~10 µs per encryption on SoftHSM a chunk is ~1 ms; at 5–10 ms on a network HSM, under a second.
    internal const int HsmChunk = 100;

    // A batch item that passed its checks and took its usage, waiting to be sealed.
    private sealed record AdmittedItem(int Index, KeyVersionMaterial Primary, EncryptionContext Context, byte[] Iv, byte[] Plaintext);

    private async Task<KeyVersionMaterial> GetPrimaryForEncryptionAsync(Caller caller, KeyReference reference, EncryptionContext context, CancellationToken cancellationToken)
    {
        var primary = await LookUpPrimaryAsync(caller, reference, cancellationToken);

        // The audit event names the version the key or alias resolved to, before the key's policy
        // and state are judged, so a refused call is found under its key as an allowed one is
        // (as Sign, the MAC calls and GetPublicKey do; docs/audit-format.md). Only the auditor reads it.
        Audit.AuditScope.SetResource(primary.Version.Name.ToString());
        await EnsureEncryptAllowedAsync(caller, primary, reference, context, cancellationToken);
        return primary;
    }

    // The key's policy first: a caller it excludes learns nothing about the key's state (nor,
    // when it names the caller for nothing, that the key exists: KeyAccessService.EnsureAllowedAsync).
    private async Task EnsureEncryptAllowedAsync(Caller caller, KeyVersionMaterial primary, KeyReference reference, EncryptionContext context, CancellationToken cancellationToken)
    {
        await keyAccess.EnsureAllowedAsync(caller, primary.Key, KeyOperations.Encrypt, context, reference, cancellationToken);
        EnsureUsable(primary, forEncryption: true);

        // Outside the key's residency region: refused before any usage is counted or the HSM is asked.
        _ = hsm.For(primary.Key.Residency);
    }

    private async Task<KeyVersionMaterial> LookUpPrimaryAsync(Caller caller, KeyReference reference, CancellationToken cancellationToken)
    {
        var name = await _resolver.ResolveAsync(caller, reference, cancellationToken);
        return await store.GetPrimaryMaterialAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(reference.ToString()!);
    }

    private async Task<(CiphertextBlob Blob, KeyVersionMaterial Found)> OpenBlobAsync(
        Caller caller,
        byte[] ciphertext,
        string field,
        EncryptionContext context,
        CancellationToken cancellationToken,
        Dictionary<KeyVersionId, KeyVersionMaterial?>? cache = null,
        bool auditAsResource = false)
    {
        if (ciphertext.Length == 0)
        {
            throw KmsErrors.InvalidArgument(field, "is required");
        }

        if (ciphertext.Length > Limits.MaxCiphertextBytes)
        {
            throw KmsErrors.InvalidArgument(field, $"must be at most {Limits.MaxCiphertextBytes} bytes");
        }

        if (!CiphertextBlob.TryParse(ciphertext, out var blob))
        {
            throw KmsErrors.DecryptionFailed();
        }

        // Tenant-scoped lookup: another tenant's version is not found, and "not found" is
        // answered exactly like a bad tag.
        if (cache is null || !cache.TryGetValue(blob!.KeyVersionId, out var found))
        {
            found = await store.FindVersionMaterialAsync(caller.Tenant, blob!.KeyVersionId, cancellationToken);
            cache?.Add(blob.KeyVersionId, found);
        }

        // Only an ENCRYPT_DECRYPT key's AES-256-GCM versions make blobs: one that names a version of
        // a signing, MAC or RSA key was forged, and gets what a blob of an unknown version gets —
        // before the key's policy and state are looked at, so the answer tells nothing of the key.
        if (found is null || found.Key.Purpose != KeyPurpose.EncryptDecrypt || found.Version.Algorithm != KeyAlgorithm.Aes256Gcm)
        {
            throw KmsErrors.DecryptionFailed();
        }

        // The audit event names the version, refused by the key's policy or state too: Decrypt's
        // as its resource, ReEncrypt's source and a batch item's among its key versions.
        if (auditAsResource)
        {
            Audit.AuditScope.SetResource(found.Version.Name.ToString());
        }
        else
        {
            Audit.AuditScope.AddKeyVersion(found.Version.Name.ToString());
        }

        // A caller the key's policy names for nothing gets what a blob of an unknown version gets.
        await keyAccess.EnsureAllowedAsync(caller, found.Key, KeyOperations.Decrypt, context, null, cancellationToken);
        EnsureUsable(found, forEncryption: false);
        _ = hsm.For(found.Key.Residency);
        return (blob, found);
    }

    private async Task<byte[]> UnsealAsync(Caller caller, CiphertextBlob blob, KeyVersionMaterial found, EncryptionContext context, CancellationToken cancellationToken)
    {
        var aad = CiphertextBlob.BuildAad(blob.KeyVersionId, caller.Tenant, context);
        var plaintext = await hsm.For(found.Key.Residency).DecryptAesGcmAsync(
            new KeyMaterialRef(found.Version.Id, MaterialOf(found)), blob.Iv.ToArray(), aad, blob.CiphertextAndTag.ToArray(), cancellationToken);
        usage.CountDecryption(found.Version.Id);
        return plaintext;
    }

    // The IV is drawn in the same trip to the HSM as the encryption.
    private async Task<byte[]> SealAsync(Caller caller, KeyVersionMaterial primary, byte[] plaintext, EncryptionContext context, CancellationToken cancellationToken)
    {
        var aad = CiphertextBlob.BuildAad(primary.Version.Id, caller.Tenant, context);
        var sealedBytes = await hsm.For(primary.Key.Residency).EncryptAesGcmWithFreshIvAsync(new KeyMaterialRef(primary.Version.Id, MaterialOf(primary)), aad, plaintext, cancellationToken);
        return CiphertextBlob.Format(primary.Version.Id, sealedBytes.Iv, sealedBytes.CiphertextAndTag);
    }

    private static WrappedKeyMaterial MaterialOf(KeyVersionMaterial found) =>
        found.Material ?? throw KmsErrors.Internal($"key version {found.Version.Name} is {KeyTransitions.StateName(found.Version.State)} but has no material");

    private static void EnsureUsable(KeyVersionMaterial found, bool forEncryption)
    {
        var key = found.Key;
        var version = found.Version;
        if (key.Purpose != KeyPurpose.EncryptDecrypt)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} has purpose {KeyAlgorithms.PurposeName(key.Purpose)}, not ENCRYPT_DECRYPT");
        }

        if (key.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} is {KeyTransitions.StateName(key.State)}");
        }

        if (version.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition(forEncryption
                ? $"the primary version of key {key.Name} ({version.Name.Version}) is {KeyTransitions.StateName(version.State)}"
                : $"key version {version.Name} is {KeyTransitions.StateName(version.State)}");
        }

        if (!forEncryption && version.Name.Version < key.MinDecryptionVersion)
        {
            throw KmsErrors.FailedPrecondition($"key version {version.Name} is below the minimum decryption version {key.MinDecryptionVersion} of key {key.Name}");
        }
    }

    private static void ValidatePlaintext(byte[] plaintext, string field)
    {
        if (plaintext.Length == 0)
        {
            throw KmsErrors.InvalidArgument(field, "is required (1 byte or more)");
        }

        if (plaintext.Length > Limits.MaxEncryptPlaintextBytes)
        {
            throw KmsErrors.InvalidArgument(field, $"must be at most {Limits.MaxEncryptPlaintextBytes} bytes; encrypt larger data with a data key (GenerateDataKey)");
        }
    }

    internal static void ValidateBatch<T>(IReadOnlyList<T> items, long totalBytes, string what)
    {
        if (items.Count is 0 or > Limits.MaxBatchItems)
        {
            throw KmsErrors.InvalidArgument("requests", $"must hold 1 to {Limits.MaxBatchItems} items (got {items.Count})");
        }

        if (totalBytes > Limits.MaxBatchBytes)
        {
            throw KmsErrors.InvalidArgument("requests", $"the items' {what} must total at most {Limits.MaxBatchBytes} bytes (got {totalBytes})");
        }
    }

    internal static string Field(int index, string field) => $"requests[{index}].{field}";

    // A batch cut short by an unexpected failure zeroes the secrets it had already produced.
    private static void DisposeAll<T>(ItemResult<T>?[] results)
        where T : IDisposable
    {
        foreach (var result in results)
        {
            result?.Value?.Dispose();
        }
    }

    /// <summary>
    /// Each distinct key of a batch resolved and looked up once; the key's policy is checked per
    /// item (its context may differ). Every version an item resolves to is added to the batch's
    /// audit event (its key versions), allowed or refused.
    /// </summary>
    private sealed class BatchKeys(CryptoService service, Caller caller)
    {
        private readonly Dictionary<KeyReference, KeyVersionMaterial> _primaries = [];

        public async Task<KeyVersionMaterial> PrimaryAsync(KeyReference reference, EncryptionContext context, CancellationToken cancellationToken)
        {
            var primary = await LookUpAsync(reference, cancellationToken);
            await EnsureAllowedAsync(primary, reference, context, cancellationToken);
            return primary;
        }

        public async Task<KeyVersionMaterial> LookUpAsync(KeyReference reference, CancellationToken cancellationToken)
        {
            if (!_primaries.TryGetValue(reference, out var primary))
            {
                primary = await service.LookUpPrimaryAsync(caller, reference, cancellationToken);
                _primaries[reference] = primary;
            }

            Audit.AuditScope.AddKeyVersion(primary.Version.Name.ToString());
            return primary;
        }

        public Task EnsureAllowedAsync(KeyVersionMaterial primary, KeyReference reference, EncryptionContext context, CancellationToken cancellationToken) =>
            service.EnsureEncryptAllowedAsync(caller, primary, reference, context, cancellationToken);
    }
}

/// <summary>A ciphertext blob and the key version that made it.</summary>
public sealed record EncryptResult(byte[] Ciphertext, KeyVersionName KeyVersion);

/// <summary>A plaintext (zeroed on dispose) and the key version that decrypted it.</summary>
public sealed record DecryptResult(SecretBytes Plaintext, KeyVersionName KeyVersion) : IDisposable
{
    /// <summary>Zeroes the plaintext.</summary>
    public void Dispose() => Plaintext.Dispose();
}

/// <summary>A data key (plaintext zeroed on dispose), its blob and the key version that encrypted it.</summary>
public sealed record DataKeyResult(SecretBytes Plaintext, byte[] Ciphertext, KeyVersionName KeyVersion) : IDisposable
{
    /// <summary>Zeroes the plaintext data key.</summary>
    public void Dispose() => Plaintext.Dispose();
}

/// <summary>A new blob, the version that decrypted the old one and the version that made the new one.</summary>
public sealed record ReEncryptResult(byte[] Ciphertext, KeyVersionName SourceKeyVersion, KeyVersionName KeyVersion);

/// <summary>One item of BatchEncrypt, BatchDecrypt or BatchGenerateDataKey, as the caller sent it (validated per item).</summary>
/// <param name="Name">The key or alias (encrypt, data key); unused for decrypt.</param>
/// <param name="Data">The plaintext (encrypt) or the ciphertext (decrypt); unused for data keys.</param>
/// <param name="Context">The encryption context.</param>
public sealed record BatchItem(string? Name, byte[]? Data, IReadOnlyDictionary<string, string>? Context);

/// <summary>One item of BatchReEncrypt, as the caller sent it.</summary>
public sealed record BatchReEncryptItem(
    byte[]? Ciphertext,
    IReadOnlyDictionary<string, string>? SourceContext,
    string? DestinationName,
    IReadOnlyDictionary<string, string>? DestinationContext);

/// <summary>An item's outcome: a value, or the error it would have had as a single call.</summary>
public sealed record ItemResult<T>(T? Value, KmsException? Error);

/// <summary>Runs one batch item, keeping a domain error as that item's result.</summary>
public static class ItemResult
{
    /// <summary>The item's value, or its <see cref="KmsException"/>.</summary>
    public static async Task<ItemResult<T>> RunAsync<T>(Func<Task<T>> item)
    {
        ArgumentNullException.ThrowIfNull(item);
        try
        {
            return new ItemResult<T>(await item(), null);
        }
        catch (KmsException e)
        {
            return new ItemResult<T>(default, e);
        }
    }
}
