using Grpc.Core;

namespace Kms.Client;

/// <summary>
/// <see cref="BlindIndex.ComputeManyAsync(IReadOnlyList{string}, CancellationToken)"/> stopped part way:
/// the KMS refused one of its BatchGenerateMac calls, or a value in one. An <see cref="RpcException"/>
/// with the KMS's status and trailers (a <c>RetryInfo</c> included), whose detail names the values:
/// <c>"values 1000 to 1999: …"</c> for a refused call, <c>"value 1003: …"</c> for a refused value.
/// </summary>
/// <remarks>
/// The beacons of the values before <see cref="FailedValueIndex"/> were computed and checked, and are
/// in <see cref="ComputedBeacons"/>, in order: store them and call again from that value on, rather
/// than computing (and spending quota on) them again. Holds no value, only beacons and positions.
/// </remarks>
public sealed class BlindIndexBatchException : RpcException
{
    /// <summary>Creates the exception for a call that computed no beacon.</summary>
    public BlindIndexBatchException(string message)
        : this(new Status(StatusCode.Unknown, message), [], [])
    {
    }

    /// <summary>Creates the exception with the KMS's status and trailers, and the beacons computed before it.</summary>
    public BlindIndexBatchException(Status status, Metadata trailers, IReadOnlyList<string> computedBeacons)
        : base(status, trailers ?? [])
    {
        ArgumentNullException.ThrowIfNull(computedBeacons);
        ComputedBeacons = [.. computedBeacons];
    }

    /// <summary>The beacons of values 0 to <see cref="FailedValueIndex"/> − 1, in order.</summary>
    public IReadOnlyList<string> ComputedBeacons { get; }

    /// <summary>The first value without a beacon: where to resume (the number of beacons computed).</summary>
    public int FailedValueIndex => ComputedBeacons.Count;
}
