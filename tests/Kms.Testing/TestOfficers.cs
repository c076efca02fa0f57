using System.Security.Cryptography;
using Kms.Client;
using Kms.Client.Quorum;
using Kms.Core.Names;
using Kms.Core.Quorum;
using Kms.Core.Services;

namespace Kms.Testing;

/// <summary>Officers with their private keys, as the tests need them: one P-256 key each, signing canonical renderings.</summary>
public sealed class TestOfficers : IDisposable
{
    private readonly Dictionary<string, ECDsa> _keys = [];

    /// <summary>Officers named <paramref name="names"/>, each with a fresh key.</summary>
    public TestOfficers(params string[] names)
    {
        foreach (var name in names)
        {
            Add(name);
        }
    }

    /// <summary>The officers by name.</summary>
    public Dictionary<string, Officer> Officers { get; } = [];

    /// <summary>The officer named <paramref name="name"/>.</summary>
    public Officer this[string name] => Officers[name];

    /// <summary>Adds an officer with a fresh key.</summary>
    public Officer Add(string name)
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        _keys[name] = key;
        var officer = Officer.Create(name, key.ExportSubjectPublicKeyInfo());
        Officers[name] = officer;
        return officer;
    }

    /// <summary>The private key of an officer.</summary>
    public ECDsa KeyOf(string name) => _keys[name];

    /// <summary>The officers named, for a set.</summary>
    public IReadOnlyList<Officer> Select(params string[] names) => names.Select(n => Officers[n]).ToList();

    /// <summary>An officer's signature (DER) over the request's canonical rendering.</summary>
    public byte[] Sign(string name, QuorumRequest request) => Sign(name, QuorumRendering.Bytes(request));

    /// <summary>An officer's signature (DER) over any bytes.</summary>
    public byte[] Sign(string name, byte[] data) => _keys[name].SignData(data, HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);

    /// <summary>An officer's signature (DER) over the request's approval statement signed at <paramref name="signTime"/>.</summary>
    public byte[] Sign(string name, QuorumRequest request, DateTimeOffset signTime) => Sign(name, QuorumRendering.StatementBytes(request, signTime));

    /// <summary>An approval of the request by the officer, signed (and recorded) at <paramref name="time"/>, as kms approves today.</summary>
    public QuorumApproval Approve(string name, QuorumRequest request, DateTimeOffset time) =>
        new(Officers[name].Fingerprint, Sign(name, request, QuorumRendering.ToMilliseconds(time)), time) { SignTime = QuorumRendering.ToMilliseconds(time) };

    /// <summary>
    /// Approves at <paramref name="quorum"/> as kms approves today: the officer (or, for a forgery,
    /// <paramref name="signedBy"/>'s key) signs the request's approval statement at
    /// <paramref name="signTime"/> (milliseconds) and submits it with that time.
    /// </summary>
    public Task<QuorumApprovalResult> ApproveAsync(QuorumService quorum, string name, QuorumRequest request, DateTimeOffset signTime, string? signedBy = null)
    {
        ArgumentNullException.ThrowIfNull(quorum);
        var signed = QuorumRendering.ToMilliseconds(signTime);
        return quorum.ApproveAsync(request.Name, Officers[name].Fingerprint, Sign(signedBy ?? name, request, signed), signed, default);
    }

    /// <summary>
    /// Approves through the API as kms approves today: the officer (or, for a forgery,
    /// <paramref name="signedBy"/>'s key) signs the approval statement of the request as the server
    /// shows it, at <paramref name="signTime"/> (milliseconds), and submits it with that time.
    /// </summary>
    public Task<Kms.Contracts.V1.ApproveQuorumRequestResponse> ApproveAsync(KmsClient client, string name, Kms.Contracts.V1.QuorumRequestInfo request, DateTimeOffset signTime, string? signedBy = null)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(request);
        var signed = QuorumRendering.ToMilliseconds(signTime);
        return client.ApproveQuorumRequestAsync(request.Name, Officers[name].Fingerprint, Sign(signedBy ?? name, QuorumApprover.ToQuorumRequest(request), signed), signed);
    }

    /// <summary>An approval without a signed time (over the rendering), as kms made them before approvals were timed.</summary>
    public QuorumApproval ApproveUntimed(string name, QuorumRequest request, DateTimeOffset time) => new(Officers[name].Fingerprint, Sign(name, request), time);

    /// <summary>A PENDING request for tests, made for <paramref name="set"/>.</summary>
    public static QuorumRequest Request(OfficerSet set, QuorumOperation operation, IReadOnlyList<KeyValuePair<string, string>> parameters, DateTimeOffset created, TenantId? tenant = null) => new()
    {
        Id = QuorumRequestId.NewId(),
        Operation = operation,
        Parameters = parameters,
        Tenant = tenant,
        DomainKcv = "a1b2c3",
        OfficerSetSequence = set.Sequence,
        OfficerSetHash = set.Hash,
        RequestedBy = "token:tester",
        CreateTime = created,
        ExpireTime = created.AddHours(1),
    };

    /// <summary>The successor of <paramref name="set"/>, installed by a CHANGE_OFFICERS request approved by <paramref name="approvers"/>.</summary>
    public OfficerSet Change(OfficerSet set, IReadOnlyList<Officer> officers, int threshold, DateTimeOffset time, params string[] approvers)
    {
        ArgumentNullException.ThrowIfNull(set);
        var next = set.Successor(officers, threshold);
        var request = Request(set, QuorumOperation.ChangeOfficers, next.ChangeParameters(), time) with { ProposedOfficers = next };
        request = request with
        {
            Approvals = approvers.Select(a => Approve(a, request, time)).ToList(),
            State = QuorumRequestState.Executed,
            ExecuteTime = time,
        };
        return next.WithChange(request);
    }

    public void Dispose()
    {
        foreach (var key in _keys.Values)
        {
            key.Dispose();
        }
    }
}
