using Grpc.Core;
using Microsoft.AspNetCore.Http;

namespace Kms.Server.Tests;

/// <summary>
/// A call to a method the server does not route, handed straight to an interceptor: what a
/// handler mapped without an access rule would receive. The request carries a bearer token
/// (in the HTTP context the interceptors read the credential from).
/// </summary>
internal sealed class UnroutedCallContext : ServerCallContext
{
    private readonly Dictionary<object, object> _userState = [];

    public UnroutedCallContext(string method, string token)
    {
        MethodCore = method;
        var http = new DefaultHttpContext();
        http.Request.Headers.Authorization = "Bearer " + token;
        _userState["__HttpContext"] = http;
    }

    protected override string MethodCore { get; }

    protected override string HostCore => "localhost";

    protected override string PeerCore => "ipv4:127.0.0.1:50000";

    protected override DateTime DeadlineCore => DateTime.MaxValue;

    protected override Metadata RequestHeadersCore { get; } = [];

    protected override CancellationToken CancellationTokenCore => CancellationToken.None;

    protected override Metadata ResponseTrailersCore { get; } = [];

    protected override Status StatusCore { get; set; }

    protected override WriteOptions? WriteOptionsCore { get; set; }

    protected override AuthContext AuthContextCore { get; } = new(null, []);

    protected override IDictionary<object, object> UserStateCore => _userState;

    protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();

    protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
}
