using System.Security.Cryptography;
using Kms.Client.Audit;

namespace Kms.Client.Tests;

/// <summary>Runs alone (after the parallel tests): it measures the managed heap.</summary>
[CollectionDefinition(nameof(AuditVerifierMemoryTests), DisableParallelization = true)]
public sealed class AuditVerifierMemoryCollection;

/// <summary>The verifier's memory is bounded, not proportional to the export.</summary>
[Collection(nameof(AuditVerifierMemoryTests))]
public sealed class AuditVerifierMemoryTests
{
    [Fact]
    public void Verify_200000EventsCheckpointedEvery10000_HeapDoesNotGrowWithTheExport()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var export = new SyntheticAuditExport(key, 200_000, 10_000, sampleHeapAt: [70_000, 200_000]);

        var result = AuditVerifier.Verify(export, key.ExportSubjectPublicKeyInfo());

        Assert.True(result.Valid, result.Problem);
        Assert.Equal((200_000L, 20L, 200_000L, 0L), (result.Events, result.Checkpoints, result.LastSignedSequence, result.UnsignedTail));

        // Keeping every event's hash (as before) held about 200 bytes an event: 26 MB more here.
        var growth = export.HeapAt[200_000] - export.HeapAt[70_000];
        Assert.True(growth < 4 << 20, $"the heap grew by {growth:N0} bytes over 130,000 events");
    }
}
