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
internal sealed partial class AuditGrpcService(AuditLog audit, Kms.Core.Ports.IAuditStore store, ILogger<AuditGrpcService> logger) : AuditService.AuditServiceBase
{
    private const int MaxPageSize = 1000;

    public override async Task<ListAuditEventsResponse> ListAuditEvents(ListAuditEventsRequest request, ServerCallContext context)
    {
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
        };
        query = query with { AfterSequence = request.PageToken.Length == 0 ? 0 : ReadPageToken(request.PageToken, query) };
        var events = await store.ListAuditEventsAsync(query, context.CancellationToken);
        var response = new ListAuditEventsResponse { NextPageToken = events.Count == size ? IssuePageToken(events[^1].Sequence, query) : "" };
        response.Events.AddRange(events.Select(ToProto));
        if (CallerResolver.Current(context).HomeTenant is { } reader)
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

    // A page token is where the page ended and the filter it was listed with, tagged with a key
    // of the deployment's (AuditLog.PageTokenTag): version byte, the sequence (8 bytes, big
    // endian), the first 16 bytes of the tag over both. A token is accepted only with the filter
    // it was issued for — with another, paging would silently start in the middle of that
    // filter's events, skipping those before — and only as issued (a garbled or made-up one is
    // refused). The page size is not bound: a caller may change it between pages.
    private const byte PageTokenVersion = 1;
    private const int PageTokenTagLength = 16;

    private string IssuePageToken(long sequence, AuditQuery query)
    {
        var token = new byte[1 + sizeof(long) + PageTokenTagLength];
        token[0] = PageTokenVersion;
        System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(token.AsSpan(1), sequence);
        audit.PageTokenTag(PageTokenInput(sequence, query)).AsSpan(0, PageTokenTagLength).CopyTo(token.AsSpan(1 + sizeof(long)));
        return System.Buffers.Text.Base64Url.EncodeToString(token);
    }

    private long ReadPageToken(string text, AuditQuery query)
    {
        byte[] token;
        try
        {
            token = System.Buffers.Text.Base64Url.DecodeFromChars(text);
        }
        catch (FormatException)
        {
            token = [];
        }

        var sequence = token.Length == 1 + sizeof(long) + PageTokenTagLength && token[0] == PageTokenVersion
            ? System.Buffers.Binary.BinaryPrimitives.ReadInt64BigEndian(token.AsSpan(1))
            : -1;
        if (sequence < 0 || !System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(
            token.AsSpan(1 + sizeof(long)), audit.PageTokenTag(PageTokenInput(sequence, query)).AsSpan(0, PageTokenTagLength)))
        {
            throw KmsErrors.InvalidArgument("page_token", "is not a token that ListAuditEvents returned for this filter: tenant, start_time, end_time, principal, resource, operation and outcome must be those of the call that returned it (page_size may differ)");
        }

        return sequence;
    }

    // Every filter field, length-prefixed (absent and empty apart), then the sequence.
    private static byte[] PageTokenInput(long sequence, AuditQuery query)
    {
        var text = new System.Text.StringBuilder("ListAuditEvents v1");
        foreach (var field in new[]
        {
            query.Tenant,
            query.StartTime?.UtcTicks.ToString(CultureInfo.InvariantCulture),
            query.EndTime?.UtcTicks.ToString(CultureInfo.InvariantCulture),
            query.Principal,
            query.Resource,
            query.Operation,
            query.Outcome,
            sequence.ToString(CultureInfo.InvariantCulture),
        })
        {
            text.Append('|').Append(field is null ? "-" : field.Length.ToString(CultureInfo.InvariantCulture) + ":" + field);
        }

        return System.Text.Encoding.UTF8.GetBytes(text.ToString());
    }

    public override async Task<GetAuditCheckpointResponse> GetAuditCheckpoint(GetAuditCheckpointRequest request, ServerCallContext context)
    {
        var checkpoint = await audit.CheckpointAsync(context.CancellationToken) ?? await store.GetLatestAuditCheckpointAsync(context.CancellationToken);
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
