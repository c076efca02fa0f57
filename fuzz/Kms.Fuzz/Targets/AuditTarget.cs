using System.Security.Cryptography;
using System.Text;
using Kms.Client.Audit;
using Kms.Core.Audit;

namespace Kms.Fuzz;

/// <summary>
/// Audit exports (docs/audit-format.md) as the client verifies them offline:
/// <see cref="AuditVerifier.Verify"/> with a fixed audit key. Contract: it never throws; malformed
/// input is an invalid verification.
/// </summary>
internal sealed class AuditTarget : FuzzTarget
{
    private static readonly ECDsa Key = FixedKey();
    private static readonly byte[] PublicKey = Key.ExportSubjectPublicKeyInfo();

    public override string Name => "audit";

    public override string Description => "audit export (JSON lines): AuditVerifier.Verify (refusal: Valid = false, never an exception)";

    public override void Run(byte[] input)
    {
        var text = Encoding.UTF8.GetString(input);
        _ = AuditVerifier.Verify(new StringReader(text), PublicKey);
        _ = AuditVerifier.Verify(new StringReader(text), PublicKey, new KnownCheckpoint(2, AuditChain.Genesis), partial: true);
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        var fingerprint = AuditChain.Fingerprint(PublicKey);
        var time = new DateTimeOffset(2026, 11, 30, 12, 0, 0, TimeSpan.Zero);
        var lines = new List<string> { AuditExport.Header(AuditChain.Empty, fingerprint, PublicKey) };
        var head = AuditChain.Empty;
        for (var i = 0; i < 3; i++)
        {
            var e = AuditChain.Link(head, new AuditEntry
            {
                Time = time.AddSeconds(i),
                RequestId = $"req-{i}",
                Principal = "token:fuzz",
                Tenant = "dev",
                Operation = "kms.v1.KeyManagementService/Encrypt",
                Resource = "tenants/dev/keys/k",
                Outcome = "OK",
                Context = [new("table", "orders")],
            });
            head = new AuditHead(e.Sequence, e.Hash);
            lines.Add(AuditExport.Event(e));
        }

        var body = AuditChain.CheckpointBody(head.Sequence, head.Hash, time, fingerprint);
        var signature = Key.SignHash(AuditChain.CheckpointDigest(body));
        lines.Add(AuditExport.Checkpoint(new AuditCheckpoint(head.Sequence, head.Hash, time, fingerprint, body, signature)));
        yield return ("export", Encoding.UTF8.GetBytes(string.Join('\n', lines) + "\n"));
    }

    private static ECDsa FixedKey()
    {
        // A fixed key, so the seeds' checkpoint signatures verify in every later run.
        var key = ECDsa.Create(new ECParameters { Curve = ECCurve.NamedCurves.nistP256, D = SHA256.HashData("kms fuzz audit key"u8) });
        return key;
    }
}
