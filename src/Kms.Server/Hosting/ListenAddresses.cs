using System.Net;

namespace Kms.Server.Hosting;

/// <summary>
/// Until callers are authenticated (the identity issue), the server answers only on
/// loopback: it refuses to start on any other address, and refuses plain HTTP anywhere.
/// </summary>
internal static class ListenAddresses
{
    public static IReadOnlyList<string> Validate(string? urls)
    {
        var list = (string.IsNullOrWhiteSpace(urls) ? KmsServerOptions.DefaultUrl : urls)
            .Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var url in list)
        {
            if (!Uri.TryCreate(url, UriKind.Absolute, out var uri))
            {
                throw new InvalidOperationException($"listen address '{url}' is not a URL (e.g. {KmsServerOptions.DefaultUrl})");
            }

            if (uri.Scheme != Uri.UriSchemeHttps)
            {
                throw new InvalidOperationException($"listen address '{url}' is not https: the server speaks only TLS 1.3");
            }

            if (!IsLoopback(uri.Host))
            {
                throw new InvalidOperationException(
                    $"listen address '{url}' is not a loopback address; until caller authentication is configured the server serves loopback only (127.0.0.1, ::1, localhost)");
            }
        }

        return list;
    }

    private static bool IsLoopback(string host) =>
        host.Equals("localhost", StringComparison.OrdinalIgnoreCase)
        || (IPAddress.TryParse(host.Trim('[', ']'), out var address) && IPAddress.IsLoopback(address));
}
