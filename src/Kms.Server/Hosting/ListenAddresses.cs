namespace Kms.Server.Hosting;

/// <summary>
/// Listen addresses: https only (TLS 1.3). Every call but health needs a credential, on any
/// address, so the server may listen beyond loopback; the default stays loopback.
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
}
