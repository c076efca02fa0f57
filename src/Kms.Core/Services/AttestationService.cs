using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>GetKeyAttestation: a key version's provenance statement, signed by the audit key (<see cref="KeyAttestation"/>).</summary>
public sealed class AttestationService(IHsm hsm, IKeyStore store, AuditLog audit, TimeProvider time)
{
    private readonly KeyResolver _resolver = new(store);

    /// <summary>
    /// The statement for a key version (or a key's primary): its stored provenance plus what the
    /// HSM reports for its unwrapped copy, signed. Versions without material (DESTROYED), or whose
    /// (or whose key's) destruction has taken effect, cannot be attested. An alias is resolved
    /// only for a caller that may read aliases (<see cref="Permission.AliasesRead"/>).
    /// </summary>
    public async Task<SignedKeyAttestation> GetKeyAttestationAsync(Caller caller, string name, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);

        // The statement names the version it attests (tenants/T/keys/K/versions/N), so through an
        // alias it says which key the alias names: a key-importer, who reads keys but not aliases,
        // must not learn that (claim 95). Decided from the name alone, before anything is read: a
        // missing alias gets the same PERMISSION_DENIED. (Another tenant's alias never gets here.)
        if (!ResourceSegments.Is(name, ResourceSegments.KeyCollection, "versions") && ResourceSegments.Is(name, ResourceSegments.Collection, "aliases"))
        {
            var alias = AliasName.Parse(name, "name");
            AccessControl.Demand(caller, Permission.AliasesRead, alias.Tenant, alias.ToString());
        }

        var found = await _resolver.ResolveVersionAsync(caller, name, cancellationToken);
        Audit.AuditScope.SetResource(found.Version.Name.ToString());
        if (found.Material is null)
        {
            throw KmsErrors.FailedPrecondition($"key version {found.Version.Name} is {KeyTransitions.StateName(found.Version.State)}: its material is gone, there is nothing to attest");
        }

        // A destruction that has taken effect, whether or not the background job has erased the
        // material yet: every other call treats the version as gone, and so does the statement.
        // By the latest time the deployment has evidence of (as cancel and restore are): a node
        // whose clock was set back attests no version whose destruction has taken effect, and
        // the statement's issueTime is no earlier than that time.
        var now = await Clock.LatestAsync(Clock.Now(time), store, cancellationToken);
        if (KeyTransitions.DestructionDue(found.Key, now) || KeyTransitions.DestructionDue(found.Version, now))
        {
            throw KmsErrors.FailedPrecondition($"the destruction of key version {found.Version.Name} has taken effect: there is nothing to attest");
        }

        var version = found.Version;
        var spec = KeyAlgorithms.Of(version.Algorithm);
        // A resident key's versions are under its region's domain key: that is the one the statement names.
        var wrappingHsm = hsm.For(found.Key.Residency);
        var properties = await wrappingHsm.DescribeKeyVersionAsync(new KeyMaterialRef(version.Id, found.Material), version.Algorithm, cancellationToken);
        var attestation = new KeyAttestation
        {
            KeyVersion = version.Name.ToString(),
            Purpose = KeyAlgorithms.PurposeName(found.Key.Purpose),
            Algorithm = spec.Name,
            State = KeyTransitions.StateName(version.State),
            Origin = version.Origin == KeyOrigin.Imported ? "IMPORTED" : "GENERATED",
            ImportJob = version.ImportJob,
            CreateTime = KeyAttestation.Time(version.CreateTime),
            CreateRequest = version.CreateRequest,
            DomainKeyCheckValue = wrappingHsm.DomainKeyCheckValue,
            PublicKey = version.PublicKey is { } publicKey ? Convert.ToBase64String(publicKey.Der) : null,
            PublicKeySha256 = version.PublicKey?.Fingerprint,
            CheckValue = properties.CheckValue is { } kcv ? Convert.ToHexStringLower(kcv) : null,
            HsmAttributes = properties.Attributes,
            IssueTime = KeyAttestation.Time(now),
            SigningKeyFingerprint = audit.Fingerprint,
        };
        var statement = attestation.ToCanonicalJson();
        var signature = await audit.SignStatementAsync(KeyAttestation.Kind, statement, cancellationToken);
        return new SignedKeyAttestation(attestation, statement, signature);
    }
}

/// <summary>A provenance statement, its canonical bytes and the audit key's signature (IEEE P1363) over them.</summary>
public sealed record SignedKeyAttestation(KeyAttestation Attestation, byte[] Statement, byte[] Signature);
