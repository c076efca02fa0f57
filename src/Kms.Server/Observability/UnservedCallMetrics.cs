using System.Globalization;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Features;

namespace Kms.Server.Observability;

/// <summary>
/// Counts gRPC calls to a method the server does not serve. grpc-dotnet answers those
/// UNIMPLEMENTED from its own fallback endpoints, which run no interceptor, so without this
/// probing for methods would not show in <c>kms_grpc_requests_total</c>. They are counted
/// under the one method tag <see cref="KmsMetrics.UnknownMethod"/>: the path a caller sent
/// never becomes a label value.
/// </summary>
internal static class UnservedCallMetrics
{
    /// <summary>Adds the middleware; it must run after routing (WebApplication routes first).</summary>
    public static void Use(WebApplication app)
    {
        var time = app.Services.GetRequiredService<TimeProvider>();
        app.Use(async (context, next) =>
        {
            // A served method's endpoint carries its metadata; the interceptors count those calls.
            if (!IsGrpc(context.Request) || context.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>() is not null)
            {
                await next(context);
                return;
            }

            var start = time.GetTimestamp();
            await next(context);
            MetricsInterceptor.Record(KmsMetrics.UnknownMethod, CodeOf(context), time.GetElapsedTime(start));
        });
    }

    private static bool IsGrpc(HttpRequest request) =>
        request.ContentType?.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase) == true;

    // The grpc-status the caller got (in the headers of a trailers-only answer, else in the
    // trailers); without one, what a gRPC client makes of the HTTP status (gRPC's
    // http-grpc-status-mapping: a 404 is UNIMPLEMENTED).
    private static StatusCode CodeOf(HttpContext context)
    {
        var status = context.Response.Headers["grpc-status"].ToString();
        if (status.Length == 0)
        {
            status = context.Features.Get<IHttpResponseTrailersFeature>()?.Trailers["grpc-status"].ToString() ?? "";
        }

        if (int.TryParse(status, NumberStyles.None, CultureInfo.InvariantCulture, out var code))
        {
            return (StatusCode)code;
        }

        return context.Response.StatusCode switch
        {
            StatusCodes.Status400BadRequest => StatusCode.Internal,
            StatusCodes.Status401Unauthorized => StatusCode.Unauthenticated,
            StatusCodes.Status403Forbidden => StatusCode.PermissionDenied,
            StatusCodes.Status404NotFound => StatusCode.Unimplemented,
            StatusCodes.Status429TooManyRequests or StatusCodes.Status502BadGateway
                or StatusCodes.Status503ServiceUnavailable or StatusCodes.Status504GatewayTimeout => StatusCode.Unavailable,
            _ => StatusCode.Unknown,
        };
    }
}
