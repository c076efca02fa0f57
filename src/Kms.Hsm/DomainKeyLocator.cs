using System.Text;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// Finds the domain key by label <em>and</em> CKA_ID, refuses ambiguity, checks that its
/// attributes are exactly what DESIGN.md requires, and reads its check value.
/// </summary>
internal static class DomainKeyLocator
{
    public sealed record Located(IObjectHandle Handle, string CheckValue, bool Created);

    public static Located Locate(ISession session, Templates templates, HsmOptions options, HsmProfile profile, Pkcs11InteropFactories factories)
    {
        var label = options.DomainKeyLabel;
        var id = options.EffectiveDomainKeyId;
        if (!options.DevMode && id == HsmOptions.DevDomainKeyId)
        {
            throw new HsmConfigurationException("the dev-mode domain key is refused outside dev mode");
        }

        var idBytes = Encoding.UTF8.GetBytes(id);
        var candidates = FindCandidates(session, templates, label, idBytes);
        var created = false;
        if (candidates.Count == 0)
        {
            if (!options.DevMode)
            {
                throw new HsmConfigurationException(
                    $"no domain key (label '{label}', CKA_ID '{id}') on token '{options.TokenLabel}'; create it in the key ceremony, or start in dev mode");
            }

            candidates = [Create(session, templates, factories, label, id, idBytes)];
            created = true;
        }

        if (candidates.Count > 1)
        {
            throw new HsmConfigurationException(
                $"{candidates.Count} secret keys on token '{options.TokenLabel}' carry the domain key's label '{label}' or CKA_ID '{id}'; refusing to guess which one is the domain key");
        }

        var handle = candidates[0];
        // A dev token's key, made before the unwrap template pinned private session objects, is
        // still served in dev mode; production refuses it (rotate the domain key: docs/ceremony.md).
        var violations = Verify(session, handle, label, idBytes, profile, allowUnwrapToTokenObjects: options.DevMode);
        if (violations.Count > 0)
        {
            throw new HsmConfigurationException(
                $"the domain key on token '{options.TokenLabel}' is not safe to use: {string.Join("; ", violations)}");
        }

        var read = session.GetAttributeValue(handle, [CKA.CKA_CHECK_VALUE]);
        try
        {
            if (read[0].CannotBeRead || read[0].GetValueAsByteArray() is not { Length: > 0 } kcv)
            {
                throw new HsmConfigurationException("the domain key's CKA_CHECK_VALUE cannot be read; the HSM profile claims it can");
            }

            return new Located(handle, Convert.ToHexString(kcv), created);
        }
        finally
        {
            read.DisposeAll();
        }
    }

    /// <summary>What is wrong with a domain key's attributes; empty when nothing is.</summary>
    /// <param name="allowUnwrapToTokenObjects">
    /// Accept an unwrap template that does not force private session objects (keys made before
    /// it did): for reading an old token, and in dev mode. Never for a key being put into service.
    /// </param>
    public static List<string> Verify(ISession session, IObjectHandle handle, string label, byte[] id, HsmProfile profile, bool allowUnwrapToTokenObjects = false)
    {
        var expectedFlags = new (CKA Attribute, bool Value)[]
        {
            (CKA.CKA_TOKEN, true), (CKA.CKA_PRIVATE, true), (CKA.CKA_SENSITIVE, true), (CKA.CKA_EXTRACTABLE, false),
            (CKA.CKA_WRAP, true), (CKA.CKA_UNWRAP, true), (CKA.CKA_ENCRYPT, false), (CKA.CKA_DECRYPT, false),
            (CKA.CKA_SIGN, false), (CKA.CKA_VERIFY, false), (CKA.CKA_DERIVE, false), (CKA.CKA_MODIFIABLE, false),
        };
        var violations = new List<string>();
        var read = session.GetAttributeValue(handle, [.. expectedFlags.Select(f => f.Attribute), CKA.CKA_KEY_TYPE, CKA.CKA_VALUE_LEN, CKA.CKA_LABEL, CKA.CKA_ID]);
        try
        {
            CheckFlagsAndIdentity(read, expectedFlags, label, id, violations);
        }
        finally
        {
            read.DisposeAll();
        }

        var allowed = session.GetAttributeValue(handle, [CKA.CKA_ALLOWED_MECHANISMS]);
        if (allowed[0].CannotBeRead || allowed[0].GetValueAsCkmList() is not [CKM.CKM_AES_KEY_WRAP_PAD])
        {
            violations.Add("CKA_ALLOWED_MECHANISMS must be exactly {CKM_AES_KEY_WRAP_PAD}");
        }

        allowed.DisposeAll();

        if (profile.WrapWithTrusted)
        {
            // Versions made CKA_WRAP_WITH_TRUSTED can be wrapped only by a trusted key: without
            // this, the first wrap failed with a bare CKR_KEY_NOT_WRAPPABLE.
            var trusted = session.GetAttributeValue(handle, [CKA.CKA_TRUSTED]);
            if (trusted[0].CannotBeRead || !trusted[0].GetValueAsBool())
            {
                violations.Add($"HSM profile '{profile.Name}' sets wrapWithTrusted, so the domain key must be CKA_TRUSTED=true (set by the token's security officer); it is not");
            }

            trusted.DisposeAll();
        }

        var unwrap = session.GetAttributeValue(handle, [CKA.CKA_UNWRAP_TEMPLATE]);
        var entries = (unwrap[0].CannotBeRead ? null : unwrap[0].GetValueAsObjectAttributeList()) ?? [];
        var forcesSensitive = entries.Any(a => a.Type == (ulong)CKA.CKA_SENSITIVE && a.GetValueAsBool());
        var forcesUnextractable = entries.Any(a => a.Type == (ulong)CKA.CKA_EXTRACTABLE && !a.GetValueAsBool());
        if (!forcesSensitive || !forcesUnextractable)
        {
            violations.Add("CKA_UNWRAP_TEMPLATE must force CKA_SENSITIVE=true and CKA_EXTRACTABLE=false");
        }

        var forcesPrivate = entries.Any(a => a.Type == (ulong)CKA.CKA_PRIVATE && a.GetValueAsBool());
        var forcesSessionObject = entries.Any(a => a.Type == (ulong)CKA.CKA_TOKEN && !a.GetValueAsBool());
        if (!allowUnwrapToTokenObjects && (!forcesPrivate || !forcesSessionObject))
        {
            violations.Add("CKA_UNWRAP_TEMPLATE must force CKA_PRIVATE=true and CKA_TOKEN=false (a key made before it did: rotate the domain key, docs/ceremony.md)");
        }

        entries.DisposeAll();
        unwrap.DisposeAll();

        return violations;
    }

    private static void CheckFlagsAndIdentity(List<IObjectAttribute> read, (CKA Attribute, bool Value)[] expectedFlags, string label, byte[] id, List<string> violations)
    {
        for (var i = 0; i < expectedFlags.Length; i++)
        {
            var (attribute, expected) = expectedFlags[i];
            if (read[i].CannotBeRead || read[i].GetValueAsBool() != expected)
            {
                violations.Add($"{attribute} must be {expected}");
            }
        }

        var rest = read.Skip(expectedFlags.Length).ToArray();
        if ((CKK)rest[0].GetValueAsUlong() != CKK.CKK_AES || rest[1].GetValueAsUlong() != 32)
        {
            violations.Add("it must be an AES-256 key");
        }

        if (rest[2].GetValueAsString() != label || !rest[3].GetValueAsByteArray().AsSpan().SequenceEqual(id))
        {
            violations.Add("its label and CKA_ID must both match the configuration");
        }
    }

    private static List<IObjectHandle> FindCandidates(ISession session, Templates templates, string label, byte[] id)
    {
        using var labelTemplate = templates.FindSecretKey(CKA.CKA_LABEL, label);
        using var idTemplate = templates.FindSecretKey(CKA.CKA_ID, id);
        var byLabel = session.FindAllObjects(labelTemplate.Attributes);
        var byId = session.FindAllObjects(idTemplate.Attributes);
        HsmMetrics.ObjectSearches.Add(2);
        return byLabel.Concat(byId).DistinctBy(h => h.ObjectId).ToList();
    }

    private static IObjectHandle Create(ISession session, Templates templates, Pkcs11InteropFactories factories, string label, string id, byte[] idBytes)
    {
        using var mechanism = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
        using var template = templates.DomainKey(label, id);
        try
        {
            return session.GenerateKey(mechanism, template.Attributes);
        }
        catch (Pkcs11Exception)
        {
            // A refused template can leave a half-built token object behind (HSM-NOTES.md).
            foreach (var leftover in FindCandidates(session, templates, label, idBytes))
            {
                session.DestroyObject(leftover);
            }

            throw;
        }
    }
}
