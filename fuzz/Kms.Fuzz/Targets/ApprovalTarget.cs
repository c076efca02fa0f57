using System.Security.Cryptography;
using System.Text;
using Kms.Core.Errors;
using Kms.Core.Quorum;

namespace Kms.Fuzz;

/// <summary>
/// Quorum approval bundles (docs/quorum.md): <see cref="ApprovalBundle.Parse"/>, then
/// <see cref="ApprovalBundle.Verify"/> against the bundle's own first officer set as the pinned
/// genesis (so signatures, the chain and the rendering are all reached). Contract: Parse refuses
/// with KmsException InvalidArgument, Verify with PermissionDenied or FailedPrecondition; a parsed
/// bundle serializes to text that parses back to the same text.
/// </summary>
internal sealed class ApprovalTarget : FuzzTarget
{
    public override string Name => "approval";

    public override string Description => "quorum approval bundle: ApprovalBundle.Parse + Verify (refusal: KmsException InvalidArgument / PermissionDenied / FailedPrecondition)";

    public override void Run(byte[] input)
    {
        ApprovalBundle bundle;
        try
        {
            bundle = ApprovalBundle.Parse(Encoding.UTF8.GetString(input));
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.InvalidArgument)
        {
            return;
        }

        var text = bundle.Serialize();
        if (ApprovalBundle.Parse(text).Serialize() != text)
        {
            throw new FuzzContractException("a parsed approval bundle does not serialize to text that parses back to itself");
        }

        if (bundle.Chain.Count == 0)
        {
            return;
        }

        try
        {
            bundle.Verify(bundle.Chain[0], bundle.Request.Operation, bundle.Request.DomainKcv, bundle.Request.CreateTime);
        }
        catch (KmsException e) when (e.Code is KmsErrorCode.PermissionDenied or KmsErrorCode.FailedPrecondition)
        {
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        using var officers = new Officers("alice", "bob", "carol", "dave");
        var genesis = OfficerSet.CreateGenesis(officers.Select("alice", "bob", "carol"), 2);
        var time = new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
        yield return ("rotate", Encoding.UTF8.GetBytes(officers.Approved(genesis, QuorumOperation.RotateDomainKey, [new("new-custodians", "5"), new("new-threshold", "3")], time, [genesis], "alice", "bob").Serialize()));

        var second = officers.Change(genesis, officers.Select("bob", "carol", "dave"), 2, time, "alice", "carol");
        yield return ("restore-after-change", Encoding.UTF8.GetBytes(officers.Approved(second, QuorumOperation.RestoreDomain, [new("token-label", "kms-é")], time, [genesis, second], "dave", "bob").Serialize()));
    }

    /// <summary>Officers with fresh P-256 keys, signing canonical renderings (seed generation only).</summary>
    internal sealed class Officers : IDisposable
    {
        private readonly Dictionary<string, (Officer Officer, ECDsa Key)> _officers = [];

        public Officers(params string[] names)
        {
            foreach (var name in names)
            {
                var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
                _officers[name] = (Officer.Create(name, key.ExportSubjectPublicKeyInfo()), key);
            }
        }

        public IReadOnlyList<Officer> Select(params string[] names) => [.. names.Select(n => _officers[n].Officer)];

        public QuorumApproval Approve(string name, QuorumRequest request, DateTimeOffset time) =>
            new(_officers[name].Officer.Fingerprint, _officers[name].Key.SignData(QuorumRendering.Bytes(request), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence), time);

        public static QuorumRequest Request(OfficerSet set, QuorumOperation operation, IReadOnlyList<KeyValuePair<string, string>> parameters, DateTimeOffset created) => new()
        {
            Id = QuorumRequestId.NewId(),
            Operation = operation,
            Parameters = parameters,
            DomainKcv = "a1b2c3",
            OfficerSetSequence = set.Sequence,
            OfficerSetHash = set.Hash,
            RequestedBy = "token:fuzz",
            CreateTime = created,
            ExpireTime = created.AddHours(1),
        };

        public ApprovalBundle Approved(OfficerSet set, QuorumOperation operation, IReadOnlyList<KeyValuePair<string, string>> parameters, DateTimeOffset time, IReadOnlyList<OfficerSet> chain, params string[] approvers)
        {
            var request = Request(set, operation, parameters, time);
            request = request with
            {
                Approvals = [.. approvers.Select(a => Approve(a, request, time))],
                State = QuorumRequestState.Approved,
                ExecuteTime = time,
            };
            return new ApprovalBundle(request, chain);
        }

        public OfficerSet Change(OfficerSet set, IReadOnlyList<Officer> officers, int threshold, DateTimeOffset time, params string[] approvers)
        {
            var next = set.Successor(officers, threshold);
            var request = Request(set, QuorumOperation.ChangeOfficers, next.ChangeParameters(), time) with { ProposedOfficers = next };
            request = request with
            {
                Approvals = [.. approvers.Select(a => Approve(a, request, time))],
                State = QuorumRequestState.Executed,
                ExecuteTime = time,
            };
            return next.WithChange(request);
        }

        public void Dispose()
        {
            foreach (var (_, key) in _officers.Values)
            {
                key.Dispose();
            }
        }
    }
}
