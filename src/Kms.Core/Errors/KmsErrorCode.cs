namespace Kms.Core.Errors;

/// <summary>What went wrong, in terms a caller can act on. Mapped to a gRPC status by the server.</summary>
public enum KmsErrorCode
{
    /// <summary>The request is malformed; the message names the field.</summary>
    InvalidArgument,

    /// <summary>The named resource does not exist, or the caller may not know that it does.</summary>
    NotFound,

    /// <summary>The resource to create exists already.</summary>
    AlreadyExists,

    /// <summary>The resource is in a state (or of a purpose) that does not allow the operation.</summary>
    FailedPrecondition,

    /// <summary>No valid credential. Deliberately says nothing that helps guessing.</summary>
    Unauthenticated,

    /// <summary>Authenticated, but not allowed; the message names the missing permission.</summary>
    PermissionDenied,

    /// <summary>A ciphertext could not be decrypted. Deliberately says nothing more.</summary>
    DecryptionFailed,

    /// <summary>A dependency (HSM, database) is down; the caller may retry.</summary>
    Unavailable,

    /// <summary>A quota or limit was reached; the caller may retry later.</summary>
    ResourceExhausted,

    /// <summary>A bug or an integrity failure on the server side. Never carries details to the caller.</summary>
    Internal,
}
