using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Keys;

/// <summary>
/// A BYOK import job: an RSA key pair generated in the HSM whose public half callers wrap key
/// material for (<see cref="ImportMethod"/>), valid until <see cref="ExpireTime"/>. Its private
/// half is stored wrapped under the domain key like a key version, and erased once expired.
/// Safe to log: it holds no material.
/// </summary>
/// <param name="Name">The job's resource name.</param>
/// <param name="Method">How material must be wrapped for it.</param>
/// <param name="MaterialId">Random id of the job's private key (how the HSM adapter caches its unwrapped copy).</param>
/// <param name="PublicKey">The RSA public key callers wrap for.</param>
/// <param name="CreateTime">When it was created.</param>
/// <param name="ExpireTime">After this, imports through it are refused and its private key is erased.</param>
public sealed record ImportJob(
    ImportJobName Name,
    ImportMethod Method,
    KeyVersionId MaterialId,
    SubjectPublicKey PublicKey,
    DateTimeOffset CreateTime,
    DateTimeOffset ExpireTime)
{
    /// <summary>How long a job stays usable (Google Cloud KMS's figure: three days).</summary>
    public static readonly TimeSpan Lifetime = TimeSpan.FromDays(3);

    /// <summary>The audit request id of the CreateImportJob call, when known.</summary>
    public string? CreateRequest { get; init; }

    /// <summary>Whether imports are refused at <paramref name="now"/>.</summary>
    public bool IsExpired(DateTimeOffset now) => now >= ExpireTime;

    /// <summary>The method's API name (<c>RSA_OAEP_3072_SHA1_AES_256</c>).</summary>
    public static string MethodName(ImportMethod method) => method switch
    {
        ImportMethod.RsaOaep3072Sha1Aes256 => "RSA_OAEP_3072_SHA1_AES_256",
        ImportMethod.RsaOaep4096Sha1Aes256 => "RSA_OAEP_4096_SHA1_AES_256",
        ImportMethod.RsaOaep3072Sha256Aes256 => "RSA_OAEP_3072_SHA256_AES_256",
        ImportMethod.RsaOaep4096Sha256Aes256 => "RSA_OAEP_4096_SHA256_AES_256",
        _ => method.ToString(),
    };
}
