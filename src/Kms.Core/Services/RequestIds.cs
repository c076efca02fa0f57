using System.Security.Cryptography;
using System.Text;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Client request ids (idempotency keys, AIP-155): a mutation applied with a request id is
/// recorded with it in the same transaction, so a retry of the same request replays instead
/// of applying twice, and a reuse of the id for a different request is refused.
/// </summary>
internal sealed class RequestIds(IKeyStore store)
{
    /// <summary>Null for no id; the id when it is printable ASCII of at most 128 characters.</summary>
    public static string? Validate(string? requestId)
    {
        if (string.IsNullOrEmpty(requestId))
        {
            return null;
        }

        if (requestId.Length > Limits.MaxRequestIdLength || requestId.Any(c => c < 0x21 || c > 0x7e))
        {
            throw KmsErrors.InvalidArgument("request_id", $"must be at most {Limits.MaxRequestIdLength} printable ASCII characters");
        }

        return requestId;
    }

    /// <summary>A hash of the operation and its canonical parameters.</summary>
    public static byte[] Fingerprint(string operation, params object?[] parameters)
    {
        var canonical = new StringBuilder(operation);
        foreach (var parameter in parameters)
        {
            var text = parameter switch
            {
                null => "",
                // Before the catch-all: an array's ToString is its type name ("System.Byte[]"), the same whatever it holds.
                byte[] bytes => Convert.ToHexString(bytes),
                IEnumerable<KeyValuePair<string, string>> map => string.Join('\u001f', map.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key.Length}:{kv.Key}={kv.Value.Length}:{kv.Value}")),
                IFormattable formattable => formattable.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
                _ => parameter.ToString(),
            };
            canonical.Append('\u001e').Append(text!.Length).Append(':').Append(text);
        }

        return SHA256.HashData(Encoding.UTF8.GetBytes(canonical.ToString()));
    }

    /// <summary>The record of an earlier identical request, or null if there was none.</summary>
    /// <exception cref="KmsException">InvalidArgument if the id was used for another request.</exception>
    public async Task<RequestRecord?> FindReplayAsync(TenantId tenant, string? requestId, string operation, byte[] fingerprint, CancellationToken cancellationToken)
    {
        if (requestId is null)
        {
            return null;
        }

        var recorded = await store.FindRequestAsync(tenant, requestId, cancellationToken);
        if (recorded is null)
        {
            return null;
        }

        if (recorded.Operation != operation || !CryptographicOperations.FixedTimeEquals(recorded.Fingerprint, fingerprint))
        {
            throw KmsErrors.InvalidArgument("request_id", "was already used for a different request");
        }

        return recorded;
    }
}
