using Kms.Core.Audit;

namespace Kms.Core.Tests;

/// <summary>
/// The key versions an audit event lists besides its resource (ReEncrypt's source, a batch's
/// items): bounded, in the order first resolved, the rest counted, in the body as two trailing
/// members that every other body lacks (docs/audit-format.md).
/// </summary>
public sealed class AuditKeyVersionsTests
{
    private static readonly AuditEntry Batch = new()
    {
        Time = new DateTimeOffset(2026, 12, 6, 4, 0, 0, TimeSpan.Zero),
        RequestId = "req-1",
        Principal = "token:app",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/BatchEncrypt",
        Outcome = "UNKNOWN",
    };

    [Fact]
    public void AddKeyVersion_At128Listed_InTheOrderFirstAdded_EachOnce_TheDistinctRestCounted()
    {
        var scope = new AuditScope(Batch, mutating: false);
        using (AuditScope.Enter(scope))
        {
            // 1,000 items over 200 keys, each key named five times.
            for (var i = 0; i < 1000; i++)
            {
                AuditScope.AddKeyVersion($"tenants/dev/keys/k{i % 200}/versions/1");
            }
        }

        var entry = scope.Entry;
        Assert.Equal(AuditEntry.MaxListedKeyVersions, entry.KeyVersions!.Count);
        Assert.Equal(Enumerable.Range(0, 128).Select(i => $"tenants/dev/keys/k{i}/versions/1"), entry.KeyVersions);
        Assert.Equal(72, entry.OtherKeyVersions);

        var linked = AuditChain.Link(AuditChain.Empty, entry);
        Assert.EndsWith("\"tenants/dev/keys/k127/versions/1\"],\"other_key_versions\":72}", linked.Body, StringComparison.Ordinal);
        Assert.True(linked.Body.Length < 20_000, $"{linked.Body.Length} characters");
        var parsed = AuditChain.Parse(linked.Body, linked.Hash).Entry;
        Assert.Equal(entry.KeyVersions, parsed.KeyVersions);
        Assert.Equal(72, parsed.OtherKeyVersions);
    }

    [Fact]
    public void NoKeyVersionAdded_TheBodyIsAsBefore_NoNewMembers()
    {
        var scope = new AuditScope(Batch with { Operation = "/kms.v1.KeyManagementService/Encrypt", Resource = "tenants/dev/keys/k/versions/1" }, mutating: false);
        var entry = scope.Entry;
        Assert.Null(entry.KeyVersions);

        // The body an event had before the list existed, byte for byte: hashes of old exports still match.
        var linked = AuditChain.Link(AuditChain.Empty, entry);
        Assert.Equal(
            "{\"v\":1,\"seq\":1,\"prev\":\"" + AuditChain.Genesis + "\",\"time\":\"2026-12-06T04:00:00.000Z\",\"request_id\":\"req-1\",\"principal\":\"token:app\",\"tenant\":\"dev\","
            + "\"operation\":\"/kms.v1.KeyManagementService/Encrypt\",\"resource\":\"tenants/dev/keys/k/versions/1\",\"outcome\":\"UNKNOWN\",\"client\":null,\"count\":1,\"last_time\":null,\"context\":{}}",
            linked.Body);
        Assert.Null(AuditChain.Parse(linked.Body, linked.Hash).Entry.KeyVersions);
    }
}
