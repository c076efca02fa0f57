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
