namespace Kms.Server.Hosting;

/// <summary>
/// Kestrel's bounds on a request's headers, set explicitly (SECURITY.md claim 142): reachable by
/// anyone who can open a connection, before any credential is checked. A gRPC call's metadata is a
/// few hundred bytes; the largest credential sent in a header is a JWT of at most
/// <see cref="Security.JwtValidator.MaxTokenLength"/> characters. Past any bound the connection
/// is closed (HTTP/2 GOAWAY): HPACK's state is shared by the connection's streams, so the server
/// cannot refuse one stream's headers and go on decoding the next.
/// </summary>
internal static class RequestHeaderLimits
{
    /// <summary>
    /// The decoded size of one request's header list — each field's name and value plus 32 bytes
    /// (RFC 9113, 6.5.2), counted as it is decoded, an indexed field as often as it is referenced
    /// (an HPACK "bomb" of one table entry referenced thousands of times stops here): 16 KiB
    /// (Kestrel's default 32 KiB).
    /// </summary>
    public const int TotalBytes = 16 * 1024;

    /// <summary>Header fields in one request: 64 (Kestrel's default 100).</summary>
    public const int Count = 64;

    /// <summary>
    /// One header name or value, compressed or decoded: the longest JWT with its <c>Bearer </c>
    /// scheme, and room to spare (Kestrel's default 16 KiB). A longer value is never buffered
    /// past this, however many CONTINUATION frames carry it.
    /// </summary>
    public const int FieldBytes = Security.JwtValidator.MaxTokenLength + 1024;

    /// <summary>The HPACK dynamic table the client may fill on each connection: 4 KiB (RFC 7541's and Kestrel's default, said here).</summary>
    public const int HeaderTableBytes = 4096;
}
