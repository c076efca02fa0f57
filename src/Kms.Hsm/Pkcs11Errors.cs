using Kms.Core.Errors;
using Net.Pkcs11Interop.Common;

namespace Kms.Hsm;

/// <summary>Maps PKCS#11 return values to domain errors. Only this project knows CKR values.</summary>
internal static class Pkcs11Errors
{
    // The device, the library or our sessions are gone: answer UNAVAILABLE and recover.
    private static readonly HashSet<CKR> DeviceLost =
    [
        CKR.CKR_DEVICE_REMOVED,
        CKR.CKR_DEVICE_ERROR,
        CKR.CKR_DEVICE_MEMORY,

        // The library's own memory (SoftHSM and network HSM clients keep session objects and
        // buffers there): a resource, not a fault of the request. The recovery closes the
        // sessions, which frees every unwrapped copy.
        CKR.CKR_HOST_MEMORY,
        CKR.CKR_TOKEN_NOT_PRESENT,
        CKR.CKR_TOKEN_NOT_RECOGNIZED,
        CKR.CKR_SESSION_HANDLE_INVALID,
        CKR.CKR_SESSION_CLOSED,
        CKR.CKR_SESSION_COUNT,
        CKR.CKR_CRYPTOKI_NOT_INITIALIZED,
        CKR.CKR_USER_NOT_LOGGED_IN,

        // The domain key's handle is gone: recover, which finds it again and re-checks its KCV.
        CKR.CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        CKR.CKR_WRAPPING_KEY_HANDLE_INVALID,
    ];

    // A cached key handle no longer names an object: drop it and unwrap again.
    private static readonly HashSet<CKR> HandleLost = [CKR.CKR_OBJECT_HANDLE_INVALID, CKR.CKR_KEY_HANDLE_INVALID];

    // The stored wrapped material does not unwrap under this domain key.
    private static readonly HashSet<CKR> WrappedKeyBad =
    [
        CKR.CKR_WRAPPED_KEY_INVALID,
        CKR.CKR_WRAPPED_KEY_LEN_RANGE,
    ];

    // A real HSM locks the token after a few wrong PINs: never retry these.
    private static readonly HashSet<CKR> PinRefused =
    [
        CKR.CKR_PIN_INCORRECT,
        CKR.CKR_PIN_INVALID,
        CKR.CKR_PIN_LEN_RANGE,
        CKR.CKR_PIN_EXPIRED,
        CKR.CKR_PIN_LOCKED,
    ];

    // The token lacks a mechanism the call needs.
    private static readonly HashSet<CKR> MechanismMissing = [CKR.CKR_MECHANISM_INVALID, CKR.CKR_MECHANISM_PARAM_INVALID];

    // The HSM refused a template or an attribute in it.
    private static readonly HashSet<CKR> TemplateRefused =
    [
        CKR.CKR_TEMPLATE_INCONSISTENT,
        CKR.CKR_TEMPLATE_INCOMPLETE,
        CKR.CKR_ATTRIBUTE_VALUE_INVALID,
        CKR.CKR_ATTRIBUTE_TYPE_INVALID,
        CKR.CKR_ATTRIBUTE_READ_ONLY,
        CKR.CKR_ATTRIBUTE_SENSITIVE,
        CKR.CKR_ACTION_PROHIBITED,
    ];

    /// <summary>The CKR_ name of the first PKCS#11 failure in <paramref name="exception"/>'s chain, if any.</summary>
    public static string? ReturnValueOf(Exception? exception) => Find(exception)?.RV.ToString();

    /// <summary>The kind of the first PKCS#11 failure in <paramref name="exception"/>'s chain (<see cref="HsmFailure.Other"/> without one).</summary>
    public static HsmFailure FailureOf(Exception? exception) => Find(exception) switch
    {
        null => HsmFailure.Other,
        { } e when IsPinRefused(e) => HsmFailure.PinRefused,
        { RV: CKR.CKR_TOKEN_WRITE_PROTECTED } => HsmFailure.TokenNotWritable,
        { } e when IsDeviceLost(e) || e.RV == CKR.CKR_GENERAL_ERROR => HsmFailure.DeviceError,
        { } e when MechanismMissing.Contains(e.RV) => HsmFailure.MechanismMissing,
        { } e when TemplateRefused.Contains(e.RV) => HsmFailure.TemplateRefused,
        _ => HsmFailure.Other,
    };

    private static Pkcs11Exception? Find(Exception? exception)
    {
        for (var e = exception; e is not null; e = e.InnerException)
        {
            if (e is Pkcs11Exception pkcs11)
            {
                return pkcs11;
            }
        }

        return null;
    }

    public static bool IsDeviceLost(Pkcs11Exception e) => DeviceLost.Contains(e.RV);

    public static bool IsHandleLost(Pkcs11Exception e) => HandleLost.Contains(e.RV);

    public static bool IsWrappedKeyBad(Pkcs11Exception e) => WrappedKeyBad.Contains(e.RV);

    public static bool IsPinRefused(Pkcs11Exception e) => PinRefused.Contains(e.RV);

    public static KmsException Unavailable(Pkcs11Exception e) =>
        KmsErrors.Unavailable("the HSM is unavailable; retry shortly", e);

    /// <summary>Any other failure: a server-side fault, described for operators only.</summary>
    public static KmsException Internal(string operation, Pkcs11Exception e) =>
        KmsErrors.Internal($"HSM {operation} failed: {e.Method} returned {e.RV}", e);
}
