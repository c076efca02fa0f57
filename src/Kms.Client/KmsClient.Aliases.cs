using Kms.Client.Failover;
using Kms.Contracts.V1;

namespace Kms.Client;

// Aliases: names that point at keys (tenants/{t}/aliases/{a}), usable wherever a key name is.
public sealed partial class KmsClient
{
    /// <summary>Creates an alias for a key. Applied once per <paramref name="requestId"/> (generated when null).</summary>
    public async Task<Alias> CreateAliasAsync(string parent, string aliasId, string keyName, string? requestId = null, CancellationToken cancellationToken = default) =>
        (await _stub.CreateAliasAsync(
            new CreateAliasRequest { Parent = parent, AliasId = aliasId, Alias = new Alias { Key = keyName }, RequestId = requestId ?? RetrySafety.NewRequestId() },
            Options(cancellationToken)).ConfigureAwait(false)).Alias;

    /// <summary>An alias.</summary>
    public async Task<Alias> GetAliasAsync(string aliasName, CancellationToken cancellationToken = default) =>
        (await _stub.GetAliasAsync(new GetAliasRequest { Name = aliasName }, Options(cancellationToken)).ConfigureAwait(false)).Alias;

    /// <summary>Points an alias at another key of the same tenant.</summary>
    public async Task<Alias> UpdateAliasAsync(string aliasName, string keyName, CancellationToken cancellationToken = default) =>
        (await _stub.UpdateAliasAsync(new UpdateAliasRequest { Name = aliasName, Key = keyName }, Options(cancellationToken)).ConfigureAwait(false)).Alias;

    /// <summary>Deletes an alias (the key is unaffected). With the same <paramref name="requestId"/> (generated when null), a retry of a delete that succeeded succeeds.</summary>
    public async Task DeleteAliasAsync(string aliasName, string? requestId = null, CancellationToken cancellationToken = default) =>
        await _stub.DeleteAliasAsync(new DeleteAliasRequest { Name = aliasName, RequestId = requestId ?? RetrySafety.NewRequestId() }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>Every alias of a tenant, by alias id, fetched page by page as the enumeration proceeds.</summary>
    public IAsyncEnumerable<Alias> ListAliasesAsync(string parent, int pageSize = 0, CancellationToken cancellationToken = default) =>
        PagesAsync<Alias>(
            async (token, ct) =>
            {
                var page = await _stub.ListAliasesAsync(new ListAliasesRequest { Parent = parent, PageSize = pageSize, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.Aliases, page.NextPageToken);
            },
            cancellationToken);
}
