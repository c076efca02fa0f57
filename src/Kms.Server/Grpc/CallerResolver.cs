using System.Net;
using Grpc.Core;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Server.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Server.Grpc;

/// <summary>
/// Establishes who is calling. Until mTLS and API tokens land (the identity issue), the
/// only callers are local processes: a loopback peer is <c>local:loopback</c> in the one
/// configured tenant, anything else is refused (the listener is loopback-only too).
/// </summary>
internal sealed class CallerResolver(IOptions<KmsServerOptions> options)
{
    private readonly Caller _loopbackCaller = new("local:loopback", TenantId.Parse(options.Value.Tenant, "Kms:Tenant"));

    public Caller Resolve(ServerCallContext context)
    {
        var remote = context.GetHttpContext().Connection.RemoteIpAddress;
        if (remote is null || !IPAddress.IsLoopback(remote))
        {
            throw new RpcException(new Status(StatusCode.PermissionDenied, "only loopback callers are served until caller authentication is configured"));
        }

        return _loopbackCaller;
    }
}
