using Grpc.Core;
using Kms.Cli.Infrastructure;
using Kms.Client.Envelope;

namespace Kms.Cli.Tests;

/// <summary>The one table from failures to exit codes and one-line messages.</summary>
public sealed class ErrorReportTests
{
    [Theory]
    [InlineData(StatusCode.NotFound, "key not found", ExitCodes.NotFound)]
    [InlineData(StatusCode.Unauthenticated, "no credential", ExitCodes.Denied)]
    [InlineData(StatusCode.PermissionDenied, "needs kms.keys.create", ExitCodes.Denied)]
    [InlineData(StatusCode.FailedPrecondition, "key is disabled", ExitCodes.Conflict)]
    [InlineData(StatusCode.AlreadyExists, "key exists", ExitCodes.Conflict)]
    [InlineData(StatusCode.Aborted, "conflict", ExitCodes.Conflict)]
    [InlineData(StatusCode.Unavailable, "HSM down", ExitCodes.Unavailable)]
    [InlineData(StatusCode.DeadlineExceeded, "", ExitCodes.Unavailable)]
    [InlineData(StatusCode.ResourceExhausted, "quota", ExitCodes.Unavailable)]
    [InlineData(StatusCode.InvalidArgument, "decryption failed", ExitCodes.DecryptionFailed)]
    [InlineData(StatusCode.InvalidArgument, "key_id: must be 1 to 63 characters", ExitCodes.InvalidArgument)]
    [InlineData(StatusCode.OutOfRange, "length", ExitCodes.InvalidArgument)]
    [InlineData(StatusCode.Internal, "boom", ExitCodes.Unexpected)]
    [InlineData(StatusCode.Unknown, "", ExitCodes.Unexpected)]
    [InlineData(StatusCode.Cancelled, "", ExitCodes.Cancelled)]
    public void From_RpcException_MapsStatusToExitCode(StatusCode code, string detail, int expected)
    {
        var report = ErrorReport.From(new RpcException(new Status(code, detail)));

        Assert.Equal(expected, report.ExitCode);
        Assert.StartsWith(ErrorReport.StatusName(code), report.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void From_RpcException_MessageIsStatusNameAndDetailOnOneLine()
    {
        var report = ErrorReport.From(new RpcException(new Status(StatusCode.NotFound, "key tenants/dev/keys/x\nnot found")));

        Assert.Equal("NOT_FOUND: key tenants/dev/keys/x not found", report.Message);
    }

    [Fact]
    public void From_TamperedEnvelope_IsDecryptionFailedAndNothingMore()
    {
        var report = ErrorReport.From(new EnvelopeDecryptionException("envelope decryption failed"));

        Assert.Equal(new ErrorReport(ExitCodes.DecryptionFailed, "decryption failed"), report);
    }

    [Fact]
    public void From_EnvelopeWithAnotherContext_IsDecryptionFailedWithTheReason()
    {
        var report = ErrorReport.From(new EnvelopeDecryptionException("the message's encryption context is not the expected one"));

        Assert.Equal(ExitCodes.DecryptionFailed, report.ExitCode);
        Assert.Equal("decryption failed: the message's encryption context is not the expected one", report.Message);
    }

    [Fact]
    public void From_EnvelopeRefusedForTheCaller_IsDenied()
    {
        var refused = new RpcException(new Status(StatusCode.PermissionDenied, "needs kms.keys.decrypt"));

        Assert.Equal(ExitCodes.Denied, ErrorReport.From(new EnvelopeDecryptionException("no data key in the message could be decrypted", refused)).ExitCode);
    }

    [Fact]
    public void From_LocalFailures_MapToTheirCodes()
    {
        Assert.Equal(ExitCodes.Usage, ErrorReport.From(new CliUsageException("bad")).ExitCode);
        Assert.Equal(ExitCodes.LocalIo, ErrorReport.From(new FileNotFoundException("no such file")).ExitCode);
        Assert.Equal(ExitCodes.LocalIo, ErrorReport.From(new UnauthorizedAccessException("denied")).ExitCode);
        Assert.Equal(ExitCodes.Cancelled, ErrorReport.From(new OperationCanceledException()).ExitCode);
        Assert.Equal(ExitCodes.Unexpected, ErrorReport.From(new InvalidOperationException("bug")).ExitCode);
        Assert.Equal(7, ErrorReport.From(new CliFailureException(7, "x")).ExitCode);
    }

    [Fact]
    public void From_TransportUnavailableAtTheDefaultEndpoint_NamesTheSettingsToChangeIt()
    {
        var settings = new CliSettings
        {
            Endpoints = new([CliSettings.DefaultEndpoint], "default"),
            CaFile = new(null, "default"),
            TokenFile = new("/t/developer.token", "env KMS_TOKEN_FILE"),
            ClientCert = new(null, "default"),
            ClientKey = new(null, "default"),
            Tenant = new("dev", "env KMS_TENANT"),
            Timeout = new(CliSettings.DefaultTimeout, "default"),
        };
        var refused = new RpcException(new Status(StatusCode.Unavailable, "Error starting gRPC call.", new HttpRequestException("Connection refused (127.0.0.1:8443)")));
        var hsmDown = new RpcException(new Status(StatusCode.Unavailable, "HSM unavailable"));

        Assert.Equal(
            "UNAVAILABLE: Error starting gRPC call. (endpoint https://127.0.0.1:8443/ from default: is the server running there? --endpoint or KMS_ENDPOINT names another)",
            ErrorReport.From(refused, settings).Message);
        Assert.Equal("UNAVAILABLE: HSM unavailable", ErrorReport.From(hsmDown, settings).Message);   // the server answered: it is running
        Assert.Equal("UNAVAILABLE: Error starting gRPC call.", ErrorReport.From(refused).Message);  // no configured client made the call
    }

    [Fact]
    public void ExitCodes_AreDistinct()
    {
        var values = typeof(ExitCodes).GetFields().Select(f => (int)f.GetValue(null)!).ToList();

        Assert.Equal(values.Count, values.Distinct().Count());
    }
}
