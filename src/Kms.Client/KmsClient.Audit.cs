using Kms.Contracts.V1;

namespace Kms.Client;

// The audit log: events, checkpoints, the signing key, the export for offline verification.
public sealed partial class KmsClient
{
    /// <summary>
    /// Audit events matching the filters of <paramref name="query"/> (its page token is
    /// ignored), oldest first or, with its <c>NewestFirst</c>, newest first, fetched page by page
    /// as the enumeration proceeds.
    /// </summary>
    public IAsyncEnumerable<AuditEventInfo> ListAuditEventsAsync(ListAuditEventsRequest query, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        return PagesAsync<AuditEventInfo>(
            async (token, ct) =>
            {
                var request = query.Clone();
                request.PageToken = token;
                var page = await Audit.ListAuditEventsAsync(request, Options(ct)).ConfigureAwait(false);
                return (page.Events, page.NextPageToken);
            },
            cancellationToken);
    }

    /// <summary>The newest signed checkpoint of the chain (signing one of the current head first if there is anything new); null while the log is empty.</summary>
    public async Task<AuditCheckpointInfo?> GetAuditCheckpointAsync(CancellationToken cancellationToken = default) =>
        (await Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest(), Options(cancellationToken)).ConfigureAwait(false)).Checkpoint;

    /// <summary>The public key that signs checkpoints, to pin for verification.</summary>
    public async Task<GetAuditSigningKeyResponse> GetAuditSigningKeyAsync(CancellationToken cancellationToken = default) =>
        await Audit.GetAuditSigningKeyAsync(new GetAuditSigningKeyRequest(), Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>
    /// Writes the audit export (JSON lines) to <paramref name="destination"/>, for
    /// <see cref="Audit.AuditVerifier"/> or the CLI to check offline.
    /// </summary>
    /// <remarks>
    /// The export is a server stream: it is sent to another endpoint only if it fails before
    /// its first message; after that, part of it is already written and the error is
    /// returned (start again, or from the sequence reached). It has no default deadline: pass
    /// a <paramref name="cancellationToken"/> to bound it.
    /// </remarks>
    public async Task ExportAuditAsync(TextWriter destination, long fromSequence = 0, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        using var call = Audit.ExportAudit(new ExportAuditRequest { FromSequence = fromSequence }, cancellationToken: cancellationToken);
        while (await call.ResponseStream.MoveNext(cancellationToken).ConfigureAwait(false))
        {
            foreach (var line in call.ResponseStream.Current.Lines)
            {
                await destination.WriteLineAsync(line.AsMemory(), cancellationToken).ConfigureAwait(false);
            }
        }
    }
}
