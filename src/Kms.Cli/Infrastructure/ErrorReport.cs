using System.Security.Cryptography;
using Grpc.Core;
using Kms.Ceremony;
using Kms.Client.Envelope;
using Kms.Hsm;

namespace Kms.Cli.Infrastructure;

/// <summary>What the user is told when a command fails: one line and an exit code.</summary>
/// <param name="ExitCode">One of <see cref="ExitCodes"/>.</param>
/// <param name="Message">One line, without the <c>kms:</c> prefix; never a stack trace.</param>
internal sealed record ErrorReport(int ExitCode, string Message)
{
    /// <summary>The server's opaque answer to any ciphertext it cannot decrypt.</summary>
    public const string DecryptionFailed = "decryption failed";

    private const string OpaqueEnvelopeFailure = "envelope decryption failed";

    /// <summary>
    /// The one table from failures to exit codes. <paramref name="connection"/>, the settings of the
    /// client the failed call was made with, adds what to set when the call failed for want of a
    /// setting: no credential configured (UNAUTHENTICATED), or no server at the endpoint (UNAVAILABLE
    /// from the transport), with where the endpoint came from.
    /// </summary>
    public static ErrorReport From(Exception exception, CliSettings? connection = null) => exception switch
    {
        CliUsageException usage => new(ExitCodes.Usage, usage.Message),
        CliFailureException failure => new(failure.ExitCode, failure.Message),
        RpcException rpc when Untrusted(rpc) is { } tls => new(
            ExitCodes.Usage,
            $"the server's TLS certificate is not trusted: {OneLine(tls.Message)} (check --ca-file or KMS_CA_FILE, and the endpoint's host name)"),
        RpcException rpc => WithSettingHint(FromStatus(rpc.StatusCode, rpc.Status.Detail), rpc, connection),
        EnvelopeDecryptionException envelope => FromEnvelope(envelope),
        CeremonyException ceremony => FromCeremony(ceremony),
        HsmConfigurationException hsm => new(ExitCodes.Conflict, $"HSM: {OneLine(hsm.Message)}{NextStep(hsm.Failure)}"),
        OperationCanceledException => new(ExitCodes.Cancelled, "cancelled"),
        FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or IOException =>
            new(ExitCodes.LocalIo, exception.Message),
        ArgumentException argument => new(ExitCodes.Usage, WithoutParameterName(argument)),
        CryptographicException crypto => new(ExitCodes.Unexpected, $"cryptographic error: {crypto.Message}"),
        _ => new(ExitCodes.Unexpected, $"unexpected error: {exception.GetType().Name}: {exception.Message}"),
    };

    /// <summary>
    /// What an operator does next about an HSM failure, mid-ceremony or not: the message names the
    /// token and the PKCS#11 return value; this says where to look. Never the PIN.
    /// </summary>
    public static string NextStep(HsmFailure failure) => failure switch
    {
        HsmFailure.PinRefused => " — check the PIN given for that token before trying again: a real HSM locks it after a few wrong tries (kms ceremony inspect-token shows its PIN flags)",
        HsmFailure.TokenNotFound => " — check --token-label, and the module's token directory (--softhsm-conf or --module-env); kms ceremony init-token creates a token",
        HsmFailure.ModuleNotLoaded => " — --module must name the HSM's PKCS#11 library (a .so file), and --module-env or --softhsm-conf what it reads at load",
        HsmFailure.DeviceError => " — check the HSM's power, cable or network and its own log, then run the command again",
        HsmFailure.MechanismMissing => " — kms ceremony inspect-token lists the token's mechanisms: choose the HSM profile that fits this HSM (--hsm-profile), or another HSM",
        HsmFailure.TemplateRefused => " — the HSM refused the key's template: the HSM profile (--hsm-profile) does not fit this HSM's firmware or policy",
        HsmFailure.TokenNotWritable => " — the domain key goes into a writable token with room for it: lift the HSM's write protection or free room with the HSM's own tools, or use another token (kms ceremony init-token)",
        HsmFailure.DomainKeyPresent => " — a token holds one domain key: kms ceremony verify-domain shows the one it holds; use a freshly initialised token (kms ceremony init-token)",
        _ => "",
    };

    /// <summary>A ceremony failure (share files, passphrases, recovery): its message names the file, custodian or numbers.</summary>
    public static ErrorReport FromCeremony(CeremonyException exception) => new(exception.Error switch
    {
        CeremonyError.WrongPassphrase => ExitCodes.Denied,
        CeremonyError.InvalidArgument or CeremonyError.NotEnoughShares or CeremonyError.KdfParametersRefused => ExitCodes.Usage,
        CeremonyError.Io => ExitCodes.LocalIo,
        _ => ExitCodes.Conflict,
    }, exception.Message);

    /// <summary>A gRPC status: its code name and the server's detail, e.g. <c>NOT_FOUND: key tenants/dev/keys/x not found</c>.</summary>
    public static ErrorReport FromStatus(StatusCode code, string detail)
    {
        var exitCode = code switch
        {
            StatusCode.OK => ExitCodes.Ok,
            StatusCode.NotFound => ExitCodes.NotFound,
            StatusCode.Unauthenticated or StatusCode.PermissionDenied => ExitCodes.Denied,
            StatusCode.FailedPrecondition or StatusCode.AlreadyExists or StatusCode.Aborted => ExitCodes.Conflict,
            StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.ResourceExhausted => ExitCodes.Unavailable,
            StatusCode.InvalidArgument when detail == DecryptionFailed => ExitCodes.DecryptionFailed,
            StatusCode.InvalidArgument or StatusCode.OutOfRange => ExitCodes.InvalidArgument,
            StatusCode.Cancelled => ExitCodes.Cancelled,
            _ => ExitCodes.Unexpected,
        };
        var text = string.IsNullOrWhiteSpace(detail) ? StatusName(code) : $"{StatusName(code)}: {OneLine(detail)}";
        return new ErrorReport(exitCode, text);
    }

    /// <summary>The proto spelling of a status code (<c>FAILED_PRECONDITION</c>), as the server's docs use it.</summary>
    public static string StatusName(StatusCode code) => code switch
    {
        StatusCode.OK => "OK",
        StatusCode.Cancelled => "CANCELLED",
        StatusCode.Unknown => "UNKNOWN",
        StatusCode.InvalidArgument => "INVALID_ARGUMENT",
        StatusCode.DeadlineExceeded => "DEADLINE_EXCEEDED",
        StatusCode.NotFound => "NOT_FOUND",
        StatusCode.AlreadyExists => "ALREADY_EXISTS",
        StatusCode.PermissionDenied => "PERMISSION_DENIED",
        StatusCode.Unauthenticated => "UNAUTHENTICATED",
        StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
        StatusCode.FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode.Aborted => "ABORTED",
        StatusCode.OutOfRange => "OUT_OF_RANGE",
        StatusCode.Unimplemented => "UNIMPLEMENTED",
        StatusCode.Internal => "INTERNAL",
        StatusCode.Unavailable => "UNAVAILABLE",
        StatusCode.DataLoss => "DATA_LOSS",
        _ => code.ToString(),
    };

    // The envelope layer says "envelope decryption failed" for any altered byte (and nothing
    // more, by design); its other messages (not an envelope, another context, no trusted key)
    // are about the caller's own inputs and are worth showing.
    // A KMS that refused the caller or the key (a disabled or missing key, a missing role) says
    // nothing about the message: its status is the exit code, as for any other call. Only a data
    // key the KMS could not decrypt (INVALID_ARGUMENT) is a bad message.
    private static ErrorReport FromEnvelope(EnvelopeDecryptionException exception)
    {
        var refusals = exception.InnerException switch
        {
            RpcException rpc => [rpc],
            AggregateException all when all.InnerExceptions.All(e => e is RpcException) => all.InnerExceptions.Cast<RpcException>().ToList(),
            _ => new List<RpcException>(),
        };
        if (refusals.Count > 0 && refusals.All(r => r.StatusCode is not (StatusCode.InvalidArgument or StatusCode.OutOfRange)))
        {
            return FromStatus(refusals[0].StatusCode, refusals[0].Status.Detail);
        }

        return new(ExitCodes.DecryptionFailed, exception.Message == OpaqueEnvelopeFailure ? DecryptionFailed : $"{DecryptionFailed}: {OneLine(exception.Message)}");
    }

    // A server's own UNAVAILABLE (HSM or database down) carries no DebugException; one the
    // transport made (connection refused, no route, name not resolved) does.
    private static ErrorReport WithSettingHint(ErrorReport report, RpcException failure, CliSettings? connection) => (failure.StatusCode, connection) switch
    {
        (StatusCode.Unauthenticated, { TokenFile.Value: null, ClientCert.Value: null }) => report with
        {
            Message = $"{report.Message} (no credential is configured: --token-file, KMS_TOKEN_FILE or the profile's tokenFile; or --client-cert and --client-key)",
        },
        (StatusCode.Unavailable, { } settings) when failure.Status.DebugException is not null => report with
        {
            Message = $"{report.Message} (endpoint {string.Join(", ", settings.Endpoints.Value)} from {settings.Endpoints.Source}: is the server running there?"
                + (settings.Endpoints.Source == "default" ? " --endpoint or KMS_ENDPOINT names another)" : ")"),
        },
        _ => report,
    };

    /// <summary>The TLS handshake's refusal of the server's certificate, if that is why the call failed: a configuration to fix, not a server to wait for.</summary>
    private static System.Security.Authentication.AuthenticationException? Untrusted(RpcException failure)
    {
        for (var e = failure.Status.DebugException; e is not null; e = e.InnerException)
        {
            if (e is System.Security.Authentication.AuthenticationException refused)
            {
                return refused;
            }
        }

        return null;
    }

    /// <summary>An <see cref="ArgumentException"/>'s message without the " (Parameter 'options')" .NET appends: the user gave no parameter of that name.</summary>
    public static string WithoutParameterName(ArgumentException exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        var suffix = $" (Parameter '{exception.ParamName}')";
        return exception.ParamName is not null && exception.Message.EndsWith(suffix, StringComparison.Ordinal)
            ? exception.Message[..^suffix.Length]
            : exception.Message;
    }

    private static string OneLine(string text) => text.ReplaceLineEndings(" ").Trim();
}
