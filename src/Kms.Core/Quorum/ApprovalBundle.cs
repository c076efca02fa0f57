using System.Globalization;
using System.Text;
using System.Text.Json;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Core.Quorum;

/// <summary>
/// An approved quorum request as a self-contained file, for an operation the server only
/// approves and an offline ceremony carries out (<see cref="QuorumOperations.IsApprovalOnly"/>):
/// the request's fields, every approval with its signature and the officer's public key, and the
/// officer chain back to the genesis. <c>kms quorum export</c> writes it; <c>kms ceremony
/// rotate-domain|restore-domain --approval FILE</c> verifies it with <see cref="Verify"/>.
/// </summary>
/// <remarks>
/// <para>Nothing in the file is trusted by itself. The verifier recomputes the canonical
/// rendering from the request's fields (the file carries no rendering text), checks every
/// signature against the keys of the officer set the chain leads to, and verifies the chain
/// back to a genesis pinned outside the file (<see cref="OfficerChain.Verify"/>).</para>
/// <para>JSON, format <see cref="Format"/>; times are UTC with milliseconds as the rendering
/// writes them. docs/quorum.md shows an example.</para>
/// </remarks>
public sealed record ApprovalBundle(QuorumRequest Request, IReadOnlyList<OfficerSet> Chain)
{
    /// <summary>The format tag written; a reader refuses any other but <see cref="UntimedFormat"/>.</summary>
    /// <remarks>Version 2 adds each approval's <c>sign_time</c>, which its signature covers: a reader of version 1 would not verify those signatures.</remarks>
    public const string Format = "kms-quorum-approval-bundle-v2";

    /// <summary>The format of bundles written before approvals carried a signed time; still read.</summary>
    public const string UntimedFormat = "kms-quorum-approval-bundle-v1";

    // Relaxed: base64 keeps its '+' and '/' for people reading the file (it is never embedded in HTML).
    private static readonly JsonWriterOptions Indented = new() { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The file's JSON text.</summary>
    public string Serialize()
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, Indented))
        {
            w.WriteStartObject();
            w.WriteString("format", Format);
            w.WritePropertyName("request");
            WriteRequest(w, Request, Chain.LastOrDefault(s => s.Hash == Request.OfficerSetHash));
            w.WriteStartArray("officer_chain");
            for (var i = 0; i < Chain.Count; i++)
            {
                var set = Chain[i];
                w.WriteStartObject();
                w.WriteNumber("sequence", set.Sequence);
                w.WriteString("previous_hash", set.PreviousHash);
                w.WriteNumber("threshold", set.Threshold);
                w.WriteStartArray("officers");
                foreach (var officer in set.Officers)
                {
                    w.WriteStartObject();
                    w.WriteString("name", officer.Name);
                    w.WriteString("public_key", Convert.ToBase64String(officer.PublicKey));
                    w.WriteString("fingerprint", officer.Fingerprint);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
                w.WriteString("sha256", set.Hash);
                if (set.Change is { } change)
                {
                    w.WritePropertyName("change");
                    WriteRequest(w, change, i > 0 ? Chain[i - 1] : null);
                }

                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }

    /// <summary>Parses a bundle's text. Parsing checks the form only; <see cref="Verify"/> decides whether to trust it.</summary>
    /// <exception cref="KmsException">InvalidArgument naming what is malformed.</exception>
    public static ApprovalBundle Parse(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            using var document = JsonDocument.Parse(json);
            var root = document.RootElement;
            if (root.GetProperty("format").GetString() is not (Format or UntimedFormat))
            {
                throw Malformed($"its format is not {Format} (or {UntimedFormat})");
            }

            var chain = new List<OfficerSet>();
            foreach (var entry in root.GetProperty("officer_chain").EnumerateArray())
            {
                var officers = entry.GetProperty("officers").EnumerateArray()
                    .Select(o => Officer.Create(o.GetProperty("name").GetString()!, Convert.FromBase64String(o.GetProperty("public_key").GetString()!)))
                    .ToList();
                var change = entry.TryGetProperty("change", out var c) && c.ValueKind != JsonValueKind.Null ? ReadRequest(c) : null;
                var set = OfficerSet.Restore(entry.GetProperty("sequence").GetInt64(), entry.GetProperty("previous_hash").GetString()!, officers, entry.GetProperty("threshold").GetInt32(), change);
                if (entry.GetProperty("sha256").GetString() != set.Hash)
                {
                    throw Malformed($"officer set {set.Sequence}'s sha256 does not match its officers and threshold (computed {set.Hash})");
                }

                chain.Add(set);
            }

            return new ApprovalBundle(ReadRequest(root.GetProperty("request")), chain);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or ArgumentException)
        {
            throw Malformed(e.Message);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.InvalidArgument && !e.Message.Contains("approval bundle", StringComparison.Ordinal))
        {
            throw Malformed(e.Message);
        }
    }

    /// <summary>
    /// Verifies the bundle offline as authority for <paramref name="operation"/> on the domain key
    /// with check value <paramref name="domainKcv"/>, at <paramref name="now"/> (the ceremony host's clock).
    /// </summary>
    /// <param name="pinnedGenesis">The genesis officer set the deployment pins (its genesis file, checked against its hash).</param>
    /// <param name="operation">The operation the ceremony performs.</param>
    /// <param name="domainKcv">The check value of the domain key the ceremony acts on.</param>
    /// <param name="now">The ceremony host's time: the request must not have expired.</param>
    /// <param name="untimedApprovalsThrough">
    /// The newest officer set of the chain whose change may count approvals without a signed time
    /// (<see cref="OfficerChain.Verify"/>): the set the deployment's node recorded as verified, or 0.
    /// </param>
    /// <returns>The request and the distinct officers whose signatures verify (at least the threshold).</returns>
    /// <exception cref="KmsException">
    /// PermissionDenied: the chain does not verify back to the pinned genesis, or fewer than M
    /// distinct officers of the current set signed the locally computed rendering before the
    /// expiry. FailedPrecondition: the request is for another operation, another domain key,
    /// another officer set than the chain's head, a tenant, was not approved, or has expired; or
    /// fewer than M counted and others signed it without a signed time (which counts only for
    /// DESTROY_KEY_VERSION_NOW, <see cref="QuorumOperations.AcceptsUntimedApprovals"/>).
    /// </exception>
    public VerifiedApproval Verify(OfficerSet pinnedGenesis, QuorumOperation operation, string domainKcv, DateTimeOffset now, long untimedApprovalsThrough = 0)
    {
        ArgumentNullException.ThrowIfNull(pinnedGenesis);
        ArgumentNullException.ThrowIfNull(domainKcv);
        OfficerSet head;
        try
        {
            head = OfficerChain.Verify(Chain, pinnedGenesis, untimedApprovalsThrough);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
        {
            throw KmsErrors.PermissionDenied($"the approval of {Request.Name} is refused: its officer chain does not verify back to the pinned genesis {pinnedGenesis.Hash} ({e.Message})");
        }

        var name = Request.Name;
        if (Request.Operation != operation)
        {
            throw KmsErrors.FailedPrecondition(
                $"the approval of {name} is for {QuorumOperations.NameOf(Request.Operation)}, not {QuorumOperations.NameOf(operation)}: an approval authorises only the operation its officers signed");
        }

        if (Request.Tenant is not null)
        {
            throw KmsErrors.FailedPrecondition($"the approval of {name} acts in a tenant; {QuorumOperations.NameOf(operation)} is deployment-wide");
        }

        if (!string.Equals(Request.DomainKcv, domainKcv, StringComparison.OrdinalIgnoreCase))
        {
            throw KmsErrors.FailedPrecondition(
                $"the approval of {name} was given for the domain key with check value {Request.DomainKcv}, not this one's {domainKcv}");
        }

        if (Request.OfficerSetSequence != head.Sequence || Request.OfficerSetHash != head.Hash)
        {
            throw KmsErrors.FailedPrecondition(
                $"the approval of {name} was made for officer set {Request.OfficerSetSequence}, but the bundle's officer chain leads to set {head.Sequence}; create a new request");
        }

        // Counted over the statement computed here from the fields, by key, only approvals signed
        // before the expiry (as the server refuses later ones), by the rule the server counts by:
        // an untimed approval (its only time the server's unsigned record, which whoever carried or
        // edited the bundle could set) counts for no operation a ceremony runs.
        var approvers = OfficerChain.ValidApprovers(Request.WithCountedApprovals(), head);
        if (approvers.Count < head.Threshold)
        {
            var refused = $"the approval of {name} is refused: {approvers.Count} distinct officers of set {head.Sequence} signed its canonical rendering in time, and it needs {head.Threshold}";
            var untimed = OfficerChain.ValidApprovers(Request with { Approvals = [.. Request.Approvals.Where(a => a.SignTime is null)] }, head)
                .Count(o => !approvers.Any(a => a.Fingerprint == o.Fingerprint));
            if (untimed > 0 && !QuorumOperations.AcceptsUntimedApprovals(Request.Operation))
            {
                throw QuorumOperations.UntimedApprovalRefused(name, Request.Operation, $"{refused}; {untimed} more signed it without a signed time and do not count (create a new request)");
            }

            throw KmsErrors.PermissionDenied(refused);
        }

        if (Request.State != QuorumRequestState.Approved)
        {
            throw KmsErrors.FailedPrecondition($"quorum request {name} is not APPROVED");
        }

        if (Request.IsExpiredAt(now))
        {
            throw KmsErrors.FailedPrecondition(
                $"the approval of {name} expired at {QuorumRendering.Time(Request.ExpireTime)} (now {QuorumRendering.Time(now)}): the ceremony must run before the request expires; create a new request");
        }

        return new VerifiedApproval(Request, head, approvers);
    }

    private static void WriteRequest(Utf8JsonWriter w, QuorumRequest request, OfficerSet? approvedBy)
    {
        w.WriteStartObject();
        w.WriteString("name", request.Name);
        w.WriteString("id", request.Id.Value);
        w.WriteString("operation", QuorumOperations.NameOf(request.Operation));
        if (request.Tenant is { } tenant)
        {
            w.WriteString("tenant", tenant.Value);
        }
        else
        {
            w.WriteNull("tenant");
        }

        w.WriteString("domain_kcv", request.DomainKcv);
        w.WriteNumber("officer_set_sequence", request.OfficerSetSequence);
        w.WriteString("officer_set_hash", request.OfficerSetHash);
        w.WriteString("requested_by", request.RequestedBy);
        w.WriteString("create_time", QuorumRendering.Time(request.CreateTime));
        w.WriteString("expire_time", QuorumRendering.Time(request.ExpireTime));
        w.WriteStartArray("parameters");
        foreach (var (key, value) in request.Parameters)
        {
            w.WriteStartObject();
            w.WriteString("key", key);
            w.WriteString("value", value);
            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteString("state", request.State switch
        {
            QuorumRequestState.Approved => "APPROVED",
            QuorumRequestState.Executed => "EXECUTED",
            QuorumRequestState.Void => "VOID",
            _ => "PENDING",
        });
        if (request.ExecuteTime is { } executed)
        {
            w.WriteString("decide_time", QuorumRendering.Time(executed));
        }

        w.WriteStartArray("approvals");
        foreach (var approval in request.Approvals)
        {
            w.WriteStartObject();
            w.WriteString("officer_fingerprint", approval.OfficerFingerprint);
            if (approvedBy?.Find(approval.OfficerFingerprint) is { } officer)
            {
                w.WriteString("officer_name", officer.Name);
                w.WriteString("public_key", Convert.ToBase64String(officer.PublicKey));
            }

            w.WriteString("signature", Convert.ToBase64String(approval.Signature));
            w.WriteString("approve_time", QuorumRendering.Time(approval.ApproveTime));
            if (approval.SignTime is { } signed)
            {
                w.WriteString("sign_time", QuorumRendering.Time(signed));
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static QuorumRequest ReadRequest(JsonElement e)
    {
        var approvals = new List<QuorumApproval>();
        foreach (var a in e.GetProperty("approvals").EnumerateArray())
        {
            var fingerprint = a.GetProperty("officer_fingerprint").GetString()!;
            // The key is there for people and other tools; the verifier uses the officer set's.
            if (a.TryGetProperty("public_key", out var key) && Officer.FingerprintOf(Convert.FromBase64String(key.GetString()!)) != fingerprint)
            {
                throw Malformed($"the public key of approval {fingerprint} does not match its fingerprint");
            }

            approvals.Add(new QuorumApproval(fingerprint, Convert.FromBase64String(a.GetProperty("signature").GetString()!), Time(a.GetProperty("approve_time")))
            {
                SignTime = a.TryGetProperty("sign_time", out var signed) && signed.ValueKind != JsonValueKind.Null ? Time(signed) : null,
            });
        }

        var state = e.GetProperty("state").GetString() switch
        {
            "APPROVED" => QuorumRequestState.Approved,
            "EXECUTED" => QuorumRequestState.Executed,
            "PENDING" => QuorumRequestState.Pending,
            "VOID" => QuorumRequestState.Void,
            var other => throw Malformed($"unknown request state '{other}'"),
        };
        var tenant = e.GetProperty("tenant");
        var request = new QuorumRequest
        {
            Id = QuorumRequestId.Parse(e.GetProperty("id").GetString(), "request.id"),
            Operation = QuorumOperations.Parse(e.GetProperty("operation").GetString(), "request.operation"),
            Parameters = [.. e.GetProperty("parameters").EnumerateArray().Select(p => KeyValuePair.Create(p.GetProperty("key").GetString()!, p.GetProperty("value").GetString()!))],
            Tenant = tenant.ValueKind == JsonValueKind.Null ? null : TenantId.Parse(tenant.GetString()!),
            DomainKcv = e.GetProperty("domain_kcv").GetString()!,
            OfficerSetSequence = e.GetProperty("officer_set_sequence").GetInt64(),
            OfficerSetHash = e.GetProperty("officer_set_hash").GetString()!,
            RequestedBy = e.GetProperty("requested_by").GetString()!,
            CreateTime = Time(e.GetProperty("create_time")),
            ExpireTime = Time(e.GetProperty("expire_time")),
            State = state,
            ExecuteTime = e.TryGetProperty("decide_time", out var decided) ? Time(decided) : null,
            Approvals = approvals,
        };

        // What the officers signed is the rendering: a request that has none (a parameter key
        // outside the alphabet, keys out of order, a lone surrogate) is malformed here, not an
        // ArgumentException out of Verify (found by fuzzing).
        _ = QuorumRendering.Render(request);
        return request;
    }

    private static DateTimeOffset Time(JsonElement e) =>
        DateTimeOffset.ParseExact(e.GetString()!, "yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal);

    private static KmsException Malformed(string reason) => KmsErrors.InvalidArgument("approval", $"is not an approval bundle: {reason}");
}

/// <summary>An approval bundle that verified: the request, the officer set it was approved by, and the officers whose signatures count.</summary>
/// <param name="Request">The approved request.</param>
/// <param name="OfficerSet">The head of the verified officer chain (the set that approved it).</param>
/// <param name="Approvers">The distinct officers whose signatures verify, at least the set's threshold.</param>
public sealed record VerifiedApproval(QuorumRequest Request, OfficerSet OfficerSet, IReadOnlyList<Officer> Approvers);
