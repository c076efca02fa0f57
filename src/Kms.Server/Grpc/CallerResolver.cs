using Grpc.Core;
using Kms.Core.Services;
using Kms.Server.Security;

namespace Kms.Server.Grpc;

/// <summary>The caller the <see cref="AuthorizationInterceptor"/> authenticated for this call.</summary>
internal static class CallerResolver
{
    /// <summary>The authenticated caller.</summary>
    /// <exception cref="InvalidOperationException">The call did not pass the interceptor (a wiring bug, never a client error).</exception>
    public static Caller Current(ServerCallContext context) =>
        context.UserState.TryGetValue(AuthorizationInterceptor.CallerKey, out var caller) && caller is Caller authenticated
            ? authenticated
            : throw new InvalidOperationException($"{context.Method} ran without an authenticated caller");
}
