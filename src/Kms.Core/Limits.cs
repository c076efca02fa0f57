namespace Kms.Core;

/// <summary>Hard limits, checked up front. Documented in the proto and in docs/ciphertext-format.md.</summary>
public static class Limits
{
    /// <summary>Largest plaintext that Encrypt accepts (64 KiB). Larger data: envelope encryption.</summary>
    public const int MaxEncryptPlaintextBytes = 64 * 1024;

    /// <summary>Largest ciphertext that Decrypt accepts: the largest plaintext plus the blob overhead.</summary>
    public const int MaxCiphertextBytes = MaxEncryptPlaintextBytes + Crypto.CiphertextBlob.OverheadBytes;

    /// <summary>Most entries in an encryption context.</summary>
    public const int MaxContextEntries = 64;

    /// <summary>Longest encryption-context key, in UTF-8 bytes.</summary>
    public const int MaxContextKeyBytes = 256;

    /// <summary>Longest encryption-context value, in UTF-8 bytes.</summary>
    public const int MaxContextValueBytes = 1024;

    /// <summary>Length of a data key from GenerateDataKey (AES-256).</summary>
    public const int DataKeyBytes = 32;

    /// <summary>Most bytes GenerateRandom returns in one call.</summary>
    public const int MaxRandomBytes = 1024;

    /// <summary>Default page size of List RPCs.</summary>
    public const int DefaultPageSize = 100;

    /// <summary>Largest page size of List RPCs.</summary>
    public const int MaxPageSize = 1000;

    /// <summary>
    /// Default page size of the List RPCs that answered everything in one message before they
    /// were paged (ListApiTokens, ListRoleBindings, ListGrants): the largest, so a client from
    /// before, which sends no page_size and reads no next_page_token, still gets whole lists of
    /// up to this many.
    /// </summary>
    public const int FormerlyUnpagedDefaultPageSize = MaxPageSize;

    /// <summary>Most labels on a key.</summary>
    public const int MaxLabels = 64;

    /// <summary>Most items in one batch call.</summary>
    public const int MaxBatchItems = 1000;

    /// <summary>Most plaintext (or ciphertext) bytes in one batch call, all items together.</summary>
    public const int MaxBatchBytes = 4 * 1024 * 1024;

    /// <summary>Longest request id (idempotency key).</summary>
    public const int MaxRequestIdLength = 128;
}
