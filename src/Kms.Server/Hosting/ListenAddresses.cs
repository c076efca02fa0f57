using System.Net;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace Kms.Server.Hosting;

/// <summary>
/// Listen addresses. gRPC: https only (TLS 1.3). Every call but health needs a credential, on
/// any address, so the server may listen beyond loopback; the default stays loopback.
/// Metrics (<c>Kms:MetricsUrl</c>): plain http, a listener of its own, and loopback only
/// unless <c>Kms:MetricsAllowNonLoopback</c> says otherwise — the scrape needs no credential.
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
        }

        return list;
    }

    /// <summary>
    /// Checks <c>Kms:MetricsUrl</c>: <c>http://{IP address or localhost}:{port}</c>, nothing
    /// after the port. Returns null when it is unset (no metrics listener).
    /// </summary>
    public static string? ValidateMetrics(string? url, bool allowNonLoopback)
    {
        if (string.IsNullOrWhiteSpace(url))
        {
            return null;
        }

        url = url.Trim();
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme != Uri.UriSchemeHttp)
        {
            throw new InvalidOperationException($"Kms:MetricsUrl '{url}' is not an http URL (e.g. http://127.0.0.1:9464): the metrics listener speaks plain HTTP/1.1");
        }

        if (uri.AbsolutePath != "/" || uri.Query.Length > 0 || uri.Fragment.Length > 0 || uri.UserInfo.Length > 0)
        {
            throw new InvalidOperationException($"Kms:MetricsUrl '{url}' has more than a host and a port; the path is always /metrics");
        }

        var address = BindingAddress.Parse(url);
        var isIpAddress = IPAddress.TryParse(address.Host.Trim('[', ']'), out var ip);
        var loopback = isIpAddress ? IPAddress.IsLoopback(ip!) : string.Equals(address.Host, "localhost", StringComparison.OrdinalIgnoreCase);
        if (!isIpAddress && !loopback)
        {
            throw new InvalidOperationException($"Kms:MetricsUrl '{url}' names a host; give an IP address (0.0.0.0 or [::] for every interface)");
        }

        if (!loopback && !allowNonLoopback)
        {
            throw new InvalidOperationException(
                $"Kms:MetricsUrl '{url}' is not a loopback address; the scrape needs no credential, so set Kms:MetricsAllowNonLoopback=true to serve it there");
        }

        return url;
    }

    /// <summary>
    /// Adds a Kestrel listener for a URL <see cref="ValidateMetrics"/> accepted: <c>localhost</c>
    /// on both loopback addresses (as Kestrel binds it in <c>--urls</c>), else its IP address.
    /// </summary>
    public static void ListenMetrics(KestrelServerOptions kestrel, string url, Action<ListenOptions> configure)
    {
        var address = BindingAddress.Parse(url);
        if (string.Equals(address.Host, "localhost", StringComparison.OrdinalIgnoreCase))
        {
            kestrel.ListenLocalhost(address.Port, configure);
        }
        else
        {
            kestrel.Listen(IPAddress.Parse(address.Host.Trim('[', ']')), address.Port, configure);
        }
    }
}
