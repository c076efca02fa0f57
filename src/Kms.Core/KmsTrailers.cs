namespace Kms.Core;

/// <summary>
/// The trailers the server adds to a refusal for the client SDK to act on, named once for both
/// sides. Their names and values are part of the wire contract (docs/client.md, docs/deployment.md);
/// the tests spell them out literally, so renaming one here fails them.
/// </summary>
public static class KmsTrailers
{
    /// <summary>On a FAILED_PRECONDITION from a node outside the key's residency region (none of the call ran): the region the key needs.</summary>
    public const string Residency = "kms-residency";

    /// <summary>On an UNAVAILABLE a full server answered before any of the call ran: the reason (<c>capacity</c>, <c>tenant</c>, <c>queue_delay</c>).</summary>
    public const string Shed = "kms-shed";

    /// <summary>gRPC's retry pushback (gRFC A6): the server's wait, in milliseconds, before the next attempt.</summary>
    public const string RetryPushback = "grpc-retry-pushback-ms";
}
