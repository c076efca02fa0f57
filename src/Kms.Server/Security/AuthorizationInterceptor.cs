using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Google.Rpc;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Core;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Server.Grpc;
using Kms.Server.Hosting;
using Kms.Server.Observability;
using Microsoft.Extensions.Options;

namespace Kms.Server.Security;

/// <summary>
/// Every call passes here before its handler: authenticate (UNAUTHENTICATED, one message
/// for every reason), refuse a principal of a tenant being deleted (FAILED_PRECONDITION), authorize by <see cref="AccessRules"/> (PERMISSION_DENIED naming the
/// permission, or NOT_FOUND across tenants), shed when the server is full (UNAVAILABLE), then
/// meter crypto against the tenant's quota (RESOURCE_EXHAUSTED with a retry delay), so that a
/// shed call spends no quota. A method without a rule is refused: default deny. A request whose
/// body was not a valid message (<see cref="MalformedRequest{TRequest}"/>) is refused
/// INVALID_ARGUMENT once the caller is authenticated, before anything reads it. Nothing has run,
/// so a refused call changes nothing.
/// </summary>
internal sealed partial class AuthorizationInterceptor(
    CallerAuthentication authentication,
    TenantQuotas quotas,
    Overload.QueueDelayMonitor overload,
    IOptions<KmsServerOptions> options,
    ILogger<AuthorizationInterceptor> logger) : Interceptor
{
    /// <summary>Where the authenticated caller is kept for the handler (<see cref="ServerCallContext.UserState"/>).</summary>
    public const string CallerKey = "kms.caller";

    private static readonly KeyValuePair<string, object?> CapacityReason = new("reason", "capacity");
    private static readonly KeyValuePair<string, object?> QueueDelayReason = new("reason", "queue_delay");
    private static readonly KeyValuePair<string, object?> TenantReason = new("reason", "tenant");
    private readonly int _maxConcurrentCalls = options.Value.MaxConcurrentCalls;
    private readonly int _maxTenantCalls = options.Value.TenantCallBound;
    private int _inFlight;

    // Calls in flight per tenant (a caller of no tenant: per principal). Only tenants with a call
    // in flight have an entry, so it holds at most Kms:MaxConcurrentCalls of them.
    private readonly Dictionary<string, int> _tenantInFlight = new(StringComparer.Ordinal);
    private readonly LogThrottle _tenantShedLog = new();
    private readonly LogThrottle _shedLog = new();

    // Anyone can send unauthenticated calls, and a tenant at its quota keeps calling: one line
    // per call would let them fill the log (the audit aggregates the same refusals).
    private readonly LogThrottle _unauthenticatedLog = new();
    private readonly LogThrottle _quotaLog = new();
    private readonly LogThrottle _principalQuotaLog = new();
    private readonly LogThrottle _otherQuotaLog = new();
    private readonly LogThrottle _shareQuotaLog = new();
    private readonly LogThrottle _cryptoShareQuotaLog = new();

    // Only authorized, non-public unary calls take an in-flight slot: an anonymous caller
    // cannot fill the server with calls that never end (health Watch streams), and the
    // streaming services (health, reflection) do no HSM or database work worth shedding.
    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Slot slot;
        try
        {
            var rule = await AuthorizeAsync(request as IMessage, ReferenceEquals(request, MalformedRequest<TRequest>.Instance), context);
            slot = rule.Scope == CallScope.Public ? default : Enter(context);
            try
            {
                TakeQuota(rule, request as IMessage, context);
            }
            catch (RpcException)
            {
                slot.Dispose();
                throw;
            }
        }
        catch (Exception e) when (e is KmsException or RpcException)
        {
            // The audit aggregates refusals made here (they cannot be used to fill the disk).
            context.UserState[Audit.AuditInterceptor.RefusedKey] = true;
            throw;
        }

        var caller = context.UserState.TryGetValue(CallerKey, out var value) ? value as Caller : null;
        using (slot)
        using (Serilog.Context.LogContext.PushProperty("Principal", caller?.Principal))
        {
            return await continuation(request, context);
        }
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var rule = await AuthorizeStreamAsync(context);
        try
        {
            return await continuation(Reauthorizing(rule, requestStream, null, context), context);
        }
        catch (MalformedRequestException)
        {
            context.UserState[Audit.AuditInterceptor.RefusedKey] = true;
            throw;
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var rule = await AuthorizeStreamAsync(context, request as IMessage, ReferenceEquals(request, MalformedRequest<TRequest>.Instance));
        await continuation(request, Reauthorizing(rule, responseStream, request as IMessage, context), context);
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var rule = await AuthorizeStreamAsync(context);
        try
        {
            await continuation(Reauthorizing(rule, requestStream, null, context), Reauthorizing(rule, responseStream, null, context), context);
        }
        catch (MalformedRequestException)
        {
            context.UserState[Audit.AuditInterceptor.RefusedKey] = true;
            throw;
        }
    }

    // Streaming handlers are not wrapped by the ErrorInterceptor: map refusals here. A streamed
    // message is read by the handler, after this: a malformed one throws MalformedRequestException
    // there (ParseCheckedMethodProvider), a refusal all the same.
    private async Task<AccessRule> AuthorizeStreamAsync(ServerCallContext context, IMessage? request = null, bool malformed = false)
    {
        try
        {
            var rule = await AuthorizeAsync(request, malformed, context);
            TakeQuota(rule, request, context);
            return rule;
        }
        catch (KmsException e)
        {
            context.UserState[Audit.AuditInterceptor.RefusedKey] = true;
            throw new RpcException(new global::Grpc.Core.Status(ProtoMapping.StatusCodeOf(e.Code), e.Message));
        }
        catch (RpcException)
        {
            context.UserState[Audit.AuditInterceptor.RefusedKey] = true;
            throw;
        }
    }

    // A stream outlives the moment it was authorized: an export or a backup download runs for
    // minutes. So the caller is checked again — authentication, the tenant's state, the
    // permissions, exactly as at the start — before every message the stream sends, and before
    // the handler gets each message the client sends. The check goes through the credential
    // cache, so it costs a hash and a lookup, and it sees what the cache honours: a revocation,
    // a principal deleted, a role binding removed or a tenant marked for deletion on this node at
    // once (access writes forget remembered callers), on another node within a change-feed poll,
    // and in any case within the credential cache time. A public stream (health) has nothing to
    // check again.
    private IServerStreamWriter<T> Reauthorizing<T>(AccessRule rule, IServerStreamWriter<T> stream, IMessage? request, ServerCallContext context) =>
        rule.Scope == CallScope.Public ? stream : new ReauthorizingStreamWriter<T>(stream, () => ReauthorizeAsync(request, context));

    private IAsyncStreamReader<T> Reauthorizing<T>(AccessRule rule, IAsyncStreamReader<T> stream, IMessage? request, ServerCallContext context) =>
        rule.Scope == CallScope.Public ? stream : new ReauthorizingStreamReader<T>(stream, () => ReauthorizeAsync(request, context));

    // A refusal in the middle of a stream ends it with the refusal's status. It is not aggregated
    // as a refusal at the door would be: the stream was authorized once, so it is one durable
    // audit event with its outcome (UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION) and
    // the principal it was authorized for.
    private async Task ReauthorizeAsync(IMessage? request, ServerCallContext context)
    {
        try
        {
            await AuthorizeAsync(request, false, context);
        }
        catch (KmsException e)
        {
            var status = ProtoMapping.StatusCodeOf(e.Code);
            LogStreamEnded(logger, context.Method, status);
            throw new RpcException(new global::Grpc.Core.Status(status, e.Message));
        }
        catch (RpcException e)
        {
            LogStreamEnded(logger, context.Method, e.StatusCode);
            throw;
        }
    }

    // A malformed request is refused where the refusals that need no request are done: after
    // authentication and the bootstrap check, before the permissions, whose targets are in it.
    private async Task<AccessRule> AuthorizeAsync(IMessage? request, bool malformed, ServerCallContext context)
    {
        if (!AccessRules.ByMethod.TryGetValue(context.Method, out var rule))
        {
            throw KmsErrors.PermissionDenied($"{context.Method} has no access rule; it is refused (default deny)");
        }

        if (rule.Scope == CallScope.Public)
        {
            return malformed ? throw MalformedRequestException.For(context) : rule;
        }

        var caller = await authentication.AuthenticateAsync(context);
        if (caller is null)
        {
            if (_unauthenticatedLog.Count() is > 0 and var unauthenticated)
            {
                LogUnauthenticated(logger, context.Method, context.Peer, unauthenticated);
            }

            throw new RpcException(new global::Grpc.Core.Status(StatusCode.Unauthenticated, KmsErrors.Unauthenticated().Message));
        }

        context.UserState[CallerKey] = caller;
        Kms.Core.Audit.AuditScope.SetCaller(caller.Principal, caller.HomeTenant?.Value);
        if (caller.BootstrapTokenId is not null != (rule.Scope == CallScope.Bootstrap))
        {
            throw KmsErrors.PermissionDenied(caller.BootstrapTokenId is not null
                ? "the bootstrap credential may only call Bootstrap"
                : "only the one-time bootstrap credential may call Bootstrap");
        }

        // One check for every method, the public ones aside: a tenant being deleted accepts no new
        // work — no mutation, no crypto, no read — from its principals. Deployment principals (who
        // resume the deletion and read the tenant) belong to no tenant, and the lifecycle worker's
        // sweep and destruction are not calls.
        if (caller is { TenantDeleting: true, HomeTenant: { } deleting })
        {
            throw KmsErrors.CallerTenantDeleting(deleting.ResourceName);
        }

        if (malformed)
        {
            throw MalformedRequestException.For(context);
        }

        if (rule.Scope != CallScope.Permission)
        {
            return rule;
        }

        foreach (var requirement in rule.Requirements)
        {
            var (tenant, resource) = TargetOf(requirement, request, caller);
            AccessControl.Demand(caller, requirement.Permission, tenant, resource);
        }

        return rule;
    }

    // After the in-flight slot is taken: a call shed for capacity has spent none of its tenant's quota.
    // A caller of a tenant spends its tenant's quota on crypto (and its own share of it, where
    // Kms:Quotas:CryptoPrincipalShare sets one), and the tenant's bucket of other calls — and its own
    // share of it — on every other call; a caller of no tenant, its own bucket on every
    // call (a public call has no caller).
    private void TakeQuota(AccessRule rule, IMessage? request, ServerCallContext context)
    {
        if (!context.UserState.TryGetValue(CallerKey, out var value) || value is not Caller caller)
        {
            return;
        }

        if (caller.HomeTenant is not { } home)
        {
            var calls = Math.Max(1, rule.QuotaCost is { } each && request is not null ? each(request) : 1);
            if (!quotas.TryTakePrincipal(caller.Principal, calls, out var wait))
            {
                if (_principalQuotaLog.Count() is > 0 and var refused)
                {
                    LogPrincipalQuotaExceeded(logger, context.Method, caller.Principal, refused);
                }

                throw RateExceeded($"the call rate of {caller.Principal}, a principal of no tenant, is used up (Kms:Quotas:PrincipalsWithoutTenant); retry after {wait.TotalMilliseconds:0} ms", wait);
            }

            return;
        }

        if (rule.QuotaCost is { } cost)
        {
            if (request is not null && !quotas.TryTake(home, caller.Principal, cost(request), out var retryAfter, out var cryptoByShare))
            {
                // A principal's share of the crypto quota, where one is set: refused as for its share of other calls.
                if (cryptoByShare)
                {
                    var cryptoShareOption = quotas.CryptoShareOptionOf(home);
                    if (_cryptoShareQuotaLog.Count() is > 0 and var refusedCrypto)
                    {
                        LogShareQuotaExceeded(logger, context.Method, caller.Principal, home.Value, cryptoShareOption, refusedCrypto);
                    }

                    throw RateExceeded($"{caller.Principal} has used up its share of the crypto-operation quota of {home.ResourceName} ({cryptoShareOption}); retry after {retryAfter.TotalMilliseconds:0} ms", retryAfter);
                }

                var option = quotas.CryptoOptionOf(home);
                if (_quotaLog.Count() is > 0 and var exceeded)
                {
                    LogQuotaExceeded(logger, context.Method, home.Value, option, exceeded);
                }

                throw RateExceeded($"the crypto-operation quota of {home.ResourceName} is used up ({option}); retry after {retryAfter.TotalMilliseconds:0} ms", retryAfter);
            }
        }
        else if (!quotas.TryTakeOther(home, caller.Principal, out var wait, out var byShare))
        {
            // The refusal names what refused it: the principal's share (1317, naming the principal,
            // whose token is the one to look at) or the tenant's whole bucket (1316), with the
            // options in force for this tenant — its override's where it has one.
            if (byShare)
            {
                var shareOption = quotas.ShareOptionOf(home);
                if (_shareQuotaLog.Count() is > 0 and var refusedShare)
                {
                    LogShareQuotaExceeded(logger, context.Method, caller.Principal, home.Value, shareOption, refusedShare);
                }

                throw RateExceeded($"{caller.Principal} has used up its share of the quota of {home.ResourceName} for calls other than crypto operations ({shareOption}); retry after {wait.TotalMilliseconds:0} ms", wait);
            }

            var tenantOption = quotas.OtherOptionOf(home);
            if (_otherQuotaLog.Count() is > 0 and var refused)
            {
                LogOtherQuotaExceeded(logger, context.Method, home.Value, tenantOption, refused);
            }

            throw RateExceeded($"the quota of {home.ResourceName} for calls other than crypto operations is used up ({tenantOption}); retry after {wait.TotalMilliseconds:0} ms", wait);
        }
    }

    // The names TargetKind.TenantNameOrDeployment reads as deployment-wide (quorumRequests/{id}).
    private const string DeploymentQuorumRequests = "quorumRequests/";

    // A malformed or missing resource name is checked against the caller's own tenant: an
    // unauthorized caller learns nothing about the name, an authorized one gets the
    // handler's INVALID_ARGUMENT.
    private static (TenantId? Tenant, string Resource) TargetOf(Requirement requirement, IMessage? request, Caller caller)
    {
        switch (requirement.Target)
        {
            case TargetKind.Deployment:
                return (null, "the deployment");
            case TargetKind.CallerTenant:
                return (caller.HomeTenant, caller.HomeTenant?.ResourceName ?? "the deployment");
            case TargetKind.TenantNameOrDeployment:
                var name = request is null ? "" : requirement.Field!(request);
                if (TenantId.OfResourceName(name) is { } named)
                {
                    return (named, name);
                }

                // A deployment-wide name is the deployment's; an empty or malformed one, as above, the caller's own tenant's.
                return name.StartsWith(DeploymentQuorumRequests, StringComparison.Ordinal) || caller.HomeTenant is not { } home
                    ? (null, "the deployment")
                    : (home, name.Length == 0 ? home.ResourceName : name);
            default:
                var field = request is null ? "" : requirement.Field!(request);
                if (field.Length == 0 && requirement.Target == TargetKind.ResourceOrDeployment)
                {
                    return (null, "the deployment");
                }

                return TenantId.OfResourceName(field) is { } tenant ? (tenant, field) : (caller.HomeTenant, field);
        }
    }

    private static RpcException RateExceeded(string message, TimeSpan retryAfter)
    {
        var status = new Google.Rpc.Status
        {
            Code = (int)Code.ResourceExhausted,
            Message = message,
            Details = { Any.Pack(new RetryInfo { RetryDelay = Duration.FromTimeSpan(retryAfter) }) },
        };
        return status.ToRpcException();
    }

    private Slot Enter(ServerCallContext context)
    {
        if (overload.ShouldShed())
        {
            Shed(QueueDelayReason, context.Method);
            throw ShedFailure("the server is overloaded; retry with backoff", QueueDelayReason);
        }

        if (Interlocked.Increment(ref _inFlight) > _maxConcurrentCalls)
        {
            Interlocked.Decrement(ref _inFlight);
            Shed(CapacityReason, context.Method);
            throw ShedFailure("the server is at capacity; retry with backoff", CapacityReason);
        }

        // One tenant's callers (however many principals and tokens) hold at most their share of
        // the slots: without it one tenant's load — a single SDK client keeps up to 512 calls on
        // the wire — took every slot, and every other tenant's calls were shed. Shed like the
        // others: none of the call ran, no quota was taken (that comes after).
        var caller = context.UserState.TryGetValue(CallerKey, out var value) ? value as Caller : null;
        var owner = caller is null ? null : Overload.RequestBytesInFlight.OwnerOf(caller);
        if (owner is not null && !TryEnterTenant(owner))
        {
            Interlocked.Decrement(ref _inFlight);

            // Counted with the other sheds, logged on its own line (1322, naming the tenant)
            // rather than also on the shared one (1103): one line per window, not two.
            KmsMetrics.CallsShed.Add(1, TenantReason);
            if (_tenantShedLog.Count() is > 0 and var count)
            {
                LogTenantShed(logger, context.Method, caller!.HomeTenant?.ResourceName ?? caller.Principal, _maxTenantCalls, count);
            }

            throw ShedFailure("the calls of your tenant in progress on this server are at its bound; retry with backoff", TenantReason);
        }

        return new Slot(this, owner);
    }

    private bool TryEnterTenant(string owner)
    {
        lock (_tenantInFlight)
        {
            ref var count = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_tenantInFlight, owner, out _);
            if (count >= _maxTenantCalls)
            {
                if (count == 0)
                {
                    _tenantInFlight.Remove(owner);
                }

                return false;
            }

            count++;
            return true;
        }
    }

    private void ExitTenant(string owner)
    {
        lock (_tenantInFlight)
        {
            ref var count = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrNullRef(_tenantInFlight, owner);
            if (!System.Runtime.CompilerServices.Unsafe.IsNullRef(ref count) && --count <= 0)
            {
                _tenantInFlight.Remove(owner);
            }
        }
    }

    /// <summary>Calls in flight of each tenant (or tenant-less principal) that has one (tests).</summary>
    internal int TenantsInFlight
    {
        get
        {
            lock (_tenantInFlight)
            {
                return _tenantInFlight.Count;
            }
        }
    }

    // A shed call's UNAVAILABLE says so in its trailers: `kms-shed` (the reason) tells a client
    // that none of the call ran (its quota not taken either) — any method may be sent again —
    // and that this node is up, only full; `grpc-retry-pushback-ms` (gRFC A6) is the wait a gRPC
    // client's own retry policy honours, drawn from 50 to 150 ms so that the calls shed together
    // do not come back together.
    private static RpcException ShedFailure(string message, KeyValuePair<string, object?> reason) =>
        new(new global::Grpc.Core.Status(StatusCode.Unavailable, message), new Metadata
        {
            { KmsTrailers.Shed, (string)reason.Value! },
            { KmsTrailers.RetryPushback, Random.Shared.Next(50, 151).ToString(System.Globalization.CultureInfo.InvariantCulture) },
        });

    // Shedding is what an overloaded server does thousands of times a second: it is counted
    // every time and logged at most once a second, with the count.
    private void Shed(KeyValuePair<string, object?> reason, string method)
    {
        KmsMetrics.CallsShed.Add(1, reason);
        if (_shedLog.Count() is > 0 and var count)
        {
            LogShed(logger, method, (string)reason.Value!, count, overload.QueueDelay.TotalMilliseconds);
        }
    }

    private readonly struct Slot(AuthorizationInterceptor? owner, string? tenant) : IDisposable
    {
        public void Dispose()
        {
            if (owner is not null)
            {
                if (tenant is not null)
                {
                    owner.ExitTenant(tenant);
                }

                Interlocked.Decrement(ref owner._inFlight);
            }
        }
    }

    [LoggerMessage(EventId = 1322, Level = LogLevel.Warning, Message = "{Method} shed: {Tenant} has {Bound} calls in progress on this node (Kms:MaxConcurrentCallsPerTenant); {Count} calls shed since the last such message")]
    private static partial void LogTenantShed(ILogger logger, string method, string tenant, int bound, long count);

    [LoggerMessage(EventId = 1104, Level = LogLevel.Warning, Message = "{Method}: the stream's caller, checked again before its next message, was refused ({Status}); the stream is ended")]
    private static partial void LogStreamEnded(ILogger logger, string method, StatusCode status);

    [LoggerMessage(EventId = 1101, Level = LogLevel.Information, Message = "{Method} unauthenticated call from {Peer}: {Count} unauthenticated calls since the last such message")]
    private static partial void LogUnauthenticated(ILogger logger, string method, string peer, long count);

    [LoggerMessage(EventId = 1102, Level = LogLevel.Information, Message = "{Method} refused: quota of tenant {Tenant} exceeded ({Option:l}); {Count} calls refused for quota since the last such message")]
    private static partial void LogQuotaExceeded(ILogger logger, string method, string tenant, string option, long count);

    [LoggerMessage(EventId = 1316, Level = LogLevel.Information, Message = "{Method} refused: the quota of tenant {Tenant} for calls other than crypto operations exceeded ({Option:l}); {Count} calls refused since the last such message")]
    private static partial void LogOtherQuotaExceeded(ILogger logger, string method, string tenant, string option, long count);

    [LoggerMessage(EventId = 1317, Level = LogLevel.Information, Message = "{Method} refused: {Principal} used up its share of a quota of tenant {Tenant} ({Option:l}); {Count} calls refused for a principal's share of that quota since the last such message")]
    private static partial void LogShareQuotaExceeded(ILogger logger, string method, string principal, string tenant, string option, long count);

    [LoggerMessage(EventId = 1315, Level = LogLevel.Information, Message = "{Method} refused: the call rate of {Principal}, a principal of no tenant, exceeded (Kms:Quotas:PrincipalsWithoutTenant); {Count} calls refused for it since the last such message")]
    private static partial void LogPrincipalQuotaExceeded(ILogger logger, string method, string principal, long count);

    [LoggerMessage(EventId = 1103, Level = LogLevel.Warning, Message = "{Method} shed ({Reason}): {Count} calls shed since the last such message; shortest queue delay of the last window {QueueDelayMs} ms")]
    private static partial void LogShed(ILogger logger, string method, string reason, long count, double queueDelayMs);
}
