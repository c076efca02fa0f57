using System.Globalization;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Services;

namespace Kms.Server.Grpc;

/// <summary>
/// kms.v1.AuditService. Authorization happened in the interceptor: a tenant's auditors list
/// that tenant's events (the events of its principals, and of deployment principals about its
/// resources; not other tenants' probes of its names); security
/// officers list, checkpoint and export the whole chain.
/// </summary>
internal sealed partial class AuditGrpcService(
    AuditLog audit,
    Kms.Core.Ports.IAuditStore store,
    ListPageTokens pageTokens,
    Microsoft.Extensions.Options.IOptions<Hosting.KmsServerOptions> options,
    ILogger<AuditGrpcService> logger) : AuditService.AuditServiceBase
{
    private const int MaxPageSize = 1000;

    public override async Task<ListAuditEventsResponse> ListAuditEvents(ListAuditEventsRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var tenant = request.Tenant.Length == 0 ? null : TenantId.ParseResourceName(request.Tenant, "tenant").Value;
        var size = request.PageSize switch
        {
            0 => 100,
            < 0 or > MaxPageSize => throw KmsErrors.InvalidArgument("page_size", $"must be 1 to {MaxPageSize} (0 for the default of 100)"),
            _ => request.PageSize,
        };
        var start = ProtoMapping.FromProto(request.StartTime, "start_time");
        var end = ProtoMapping.FromProto(request.EndTime, "end_time");
        // An empty window lists nothing: a mistake (the two swapped) is told, not answered with no events.
        if (start is { } from && end is { } to && to <= from)
        {
            throw KmsErrors.InvalidArgument("end_time", $"{Kms.Core.Quorum.QuorumRendering.Time(to)} is not after start_time {Kms.Core.Quorum.QuorumRendering.Time(from)}: the events listed are those at or after start_time and before end_time");
        }

        var query = new AuditQuery
        {
            Limit = size,
            Tenant = tenant,
            StartTime = start,
            EndTime = end,
            Principal = Filter(request.Principal, "principal"),
            Resource = Filter(request.Resource, "resource"),
            Operation = Filter(request.Operation, "operation"),
            Outcome = Filter(request.Outcome, "outcome"),
            NewestFirst = request.NewestFirst,
        };
        var filter = PageTokenFilter(query);
        var cursor = ReadPageToken(caller, filter, request.PageToken);
        query = query.NewestFirst
            ? query with { BeforeSequence = cursor ?? long.MaxValue }
            : query with { AfterSequence = cursor ?? 0 };
        // A page examines a bounded window of the log: a sparse filter gets short or empty pages
        // with a token to go on, rather than one page reading the log from the cursor to its end.
        var page = await AuditPages.ListAsync(store, query, options.Value.AuditScanWindow, context.CancellationToken);
        var response = new ListAuditEventsResponse
        {
            NextPageToken = pageTokens.Seal(Rpc, caller, filter, page.Next?.ToString(CultureInfo.InvariantCulture)),
        };
        response.Events.AddRange(page.Events.Select(ToProto));
        if (caller.HomeTenant is { } reader)
        {
            RedactForTenant(response.Events, reader.Value);
        }

        return response;
    }

    // A tenant's auditors read the events of deployment principals (deployment admins,
    // operators, anonymous callers) about the tenant, but not where those call from: their
    // `client` is withheld. No event's `hash` or `previous_hash` is shown to them either. An
    // event's hash is SHA-256 of its body, whose other members the reader sees, so a withheld
    // event's own hash would give the address away to whoever tries addresses (few bits: a
    // network and a port); and a body holds its predecessor's hash, so the hash of the
    // tenant's own event listed after it would too — hashed forward from the last event listed
    // with its hash, through the listed bodies and a guessed address — and so on down the run
    // of events the reader sees. The chain itself is verified on the export, which only
    // security officers read, and which is not redacted (nothing here changes a stored event).
    private static void RedactForTenant(IList<AuditEventInfo> events, string reader)
    {
        foreach (var info in events)
        {
            if (info.Tenant != reader)
            {
                info.Client = "";
            }

            info.Hash = "";
            info.PreviousHash = "";
        }
    }

    // A page token is where the page ended (its last sequence, or the end of the window it
    // examined when that ran out first: not necessarily an event listed), sealed by ListPageTokens as the
    // other List RPCs' are: tagged with the deployment's page-token key over the RPC, the caller
    // (principal and tenant), every filter field and that sequence. It is accepted only from the
    // caller it was issued to — another caller, even one allowed the same listing, cannot go on
    // with someone's paging — with the filter it was issued for (with another, paging would
    // silently start in the middle of that filter's events, skipping those before), and only as
    // issued: a garbled, edited or made-up one, or one of the layout before (the sequence in 8
    // bytes, tagged over the filter alone), is refused before the store is read. The page size
    // is not bound: a caller may change it between pages. The order is: a token of an oldest-first
    // listing names the sequence to go on after, one of a newest-first listing the sequence to go
    // on before, and one used in the other order is refused, not read the wrong way round.
    private const string Rpc = "ListAuditEvents";

    private long? ReadPageToken(Caller caller, IReadOnlyList<string?> filter, string token) =>
        pageTokens.Open(Rpc, caller, filter, token, "filter (tenant, start_time, end_time, principal, resource, operation, outcome and newest_first)") is not { } text ? null
            : long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var sequence) ? sequence
            : throw KmsErrors.InvalidArgument("page_token", "is not a token that ListAuditEvents returned");

    // Every filter field (absent and empty apart; the times as UTC ticks). The order is bound
    // only when newest first, so that tokens of oldest-first listings issued before the field
    // existed stay valid.
    private static string?[] PageTokenFilter(AuditQuery query) =>
        query.NewestFirst ? [.. Filters(query), "newest_first"] : Filters(query);

    private static string?[] Filters(AuditQuery query) =>
    [
        query.Tenant,
        query.StartTime?.UtcTicks.ToString(CultureInfo.InvariantCulture),
        query.EndTime?.UtcTicks.ToString(CultureInfo.InvariantCulture),
        query.Principal,
        query.Resource,
        query.Operation,
        query.Outcome,
    ];

    public override async Task<GetAuditCheckpointResponse> GetAuditCheckpoint(GetAuditCheckpointRequest request, ServerCallContext context)
    {
        var checkpoint = await audit.CheckpointAsync(context.CancellationToken) ?? await audit.LatestSignedCheckpointAsync(context.CancellationToken);
        return new GetAuditCheckpointResponse { Checkpoint = checkpoint is null ? null : ToProto(checkpoint) };
    }

    public override Task<GetAuditSigningKeyResponse> GetAuditSigningKey(GetAuditSigningKeyRequest request, ServerCallContext context) =>
        Task.FromResult(new GetAuditSigningKeyResponse
        {
            PublicKeyDer = ByteString.CopyFrom(audit.PublicKey),
            PublicKeyPem = PublicKeyPem(audit.PublicKey),
            Fingerprint = audit.Fingerprint,
        });

    public override async Task ExportAudit(ExportAuditRequest request, IServerStreamWriter<ExportAuditResponse> responseStream, ServerCallContext context)
    {
        if (request.FromSequence < 0)
        {
            throw KmsErrors.InvalidArgument("from_sequence", "must not be negative");
        }

        // The export hands out the whole log: its start is made durable before the first line
        // leaves (its end is the interceptor's event), so even an abandoned export is on record.
        if (AuditScope.Current is { } scope)
        {
            await audit.AppendAsync(scope.Entry with { Outcome = "STARTED" }, context.CancellationToken);
        }

        // Signed up to here before it leaves, so the export is vouched for to its last event
        // rather than to the last interval's checkpoint (or, on a young log, to nothing). Without
        // the HSM it goes out as it is — forensics during an outage need it most — and the
        // verifier says how far it is signed. Likewise when the server refuses to sign the chain
        // the database now holds (signed events removed or rewritten under it): that export is
        // evidence, checked against the checkpoints kept off the host.
        try
        {
            await audit.CheckpointAsync(context.CancellationToken);
        }
        catch (KmsException e) when (e.Code is KmsErrorCode.Unavailable or KmsErrorCode.FailedPrecondition)
        {
            LogExportUnsigned(logger, e.Message);
        }

        var chunk = new ExportAuditResponse();
        var bytes = 0;
        await foreach (var line in audit.ExportAsync(request.FromSequence, context.CancellationToken))
        {
            chunk.Lines.Add(line);
            bytes += line.Length;
            if (bytes >= 512 * 1024)
            {
                await responseStream.WriteAsync(chunk, context.CancellationToken);
                chunk = new ExportAuditResponse();
                bytes = 0;
            }
        }

        await responseStream.WriteAsync(chunk, context.CancellationToken);
    }

    [LoggerMessage(EventId = 1160, Level = LogLevel.Warning, Message = "audit export: no checkpoint could be signed before it ({Reason}); it goes out signed only as far as the last checkpoint")]
    private static partial void LogExportUnsigned(ILogger logger, string reason);

    /// <summary>The PEM form of a DER SubjectPublicKeyInfo.</summary>
    public static string PublicKeyPem(byte[] der) => new string(System.Security.Cryptography.PemEncoding.Write("PUBLIC KEY", der)) + "\n";

    private static string? Optional(string value) => value.Length == 0 ? null : value;

    // The audit stores no control character (and a NUL would reach PostgreSQL, which refuses it
    // as text: an "unavailable" database). The bound is above anything stored: a SPIFFE
    // principal's 2,055 characters, a truncated resource's 512 and its mark.
    private const int MaxFilterLength = 4096;

    private static string? Filter(string value, string field) =>
        value.Length > MaxFilterLength || !AuditText.IsClean(value)
            ? throw KmsErrors.InvalidArgument(field, $"is at most {MaxFilterLength} characters without control characters (as the audit stores it)")
            : Optional(value);

    private static AuditEventInfo ToProto(AuditEvent e)
    {
        var info = new AuditEventInfo
        {
            Sequence = e.Sequence,
            Time = Timestamp.FromDateTimeOffset(e.Entry.Time),
            RequestId = e.Entry.RequestId,
            Principal = e.Entry.Principal,
            Tenant = e.Entry.Tenant ?? "",
            Operation = e.Entry.Operation,
            Resource = e.Entry.Resource ?? "",
            Outcome = e.Entry.Outcome,
            Client = e.Entry.Client ?? "",
            Count = e.Entry.Count,
            LastTime = e.Entry.LastTime is { } last ? Timestamp.FromDateTimeOffset(last) : null,
            Hash = e.Hash,
            PreviousHash = e.PreviousHash,
        };
        foreach (var (key, hash) in e.Entry.Context)
        {
            info.ContextHashes[key] = hash;
        }

        foreach (var (resource, count) in e.Entry.Resources ?? [])
        {
            info.Resources[resource] = count;
        }

        info.OtherResources = e.Entry.OtherResources;
        info.KeyVersions.AddRange(e.Entry.KeyVersions ?? []);
        info.OtherKeyVersions = e.Entry.OtherKeyVersions;

        return info;
    }

    private static AuditCheckpointInfo ToProto(AuditCheckpoint c) => new()
    {
        Sequence = c.Sequence,
        HeadHash = c.HeadHash,
        Time = Timestamp.FromDateTimeOffset(c.Time),
        KeyFingerprint = c.KeyFingerprint,
        Body = c.Body,
        Signature = ByteString.CopyFrom(c.Signature),
    };
}
