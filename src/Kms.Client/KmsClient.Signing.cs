using Google.Protobuf;
using Kms.Client.Failover;
using Kms.Contracts.V1;

namespace Kms.Client;

// Signing, asymmetric decryption, MACs, BYOK import and key provenance statements.
public sealed partial class KmsClient
{
    /// <summary>
    /// Signs <paramref name="message"/> (at most 64 KiB; the server hashes it with the key's
    /// hash) with a SIGN_VERIFY key version, or a key's or alias's primary version.
    /// ECDSA signatures are DER unless <paramref name="format"/> says P1363.
    /// </summary>
    public async Task<SignResponse> SignAsync(string name, ReadOnlyMemory<byte> message, SignatureFormat format = SignatureFormat.Der, CancellationToken cancellationToken = default) =>
        await _stub.SignAsync(new SignRequest { Name = name, Message = ByteString.CopyFrom(message.Span), SignatureFormat = format }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>Signs a digest the caller computed with the key's hash (32, 48 or 64 bytes).</summary>
    public async Task<SignResponse> SignDigestAsync(string name, ReadOnlyMemory<byte> digest, SignatureFormat format = SignatureFormat.Der, CancellationToken cancellationToken = default) =>
        await _stub.SignAsync(new SignRequest { Name = name, Digest = ByteString.CopyFrom(digest.Span), SignatureFormat = format }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>Whether <paramref name="signature"/> is the version's signature of <paramref name="message"/>.</summary>
    public async Task<bool> VerifyAsync(string name, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> signature, SignatureFormat format = SignatureFormat.Der, CancellationToken cancellationToken = default) =>
        (await _stub.VerifyAsync(
            new VerifyRequest { Name = name, Message = ByteString.CopyFrom(message.Span), Signature = ByteString.CopyFrom(signature.Span), SignatureFormat = format },
            Options(cancellationToken)).ConfigureAwait(false)).Valid;

    /// <summary>The public key (PEM and DER SubjectPublicKeyInfo) of a SIGN_VERIFY or ASYMMETRIC_DECRYPT version.</summary>
    public async Task<GetPublicKeyResponse> GetPublicKeyAsync(string name, CancellationToken cancellationToken = default) =>
        await _stub.GetPublicKeyAsync(new GetPublicKeyRequest { Name = name }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>Decrypts an RSA-OAEP ciphertext made with an ASYMMETRIC_DECRYPT version's public key.</summary>
    /// <returns>The plaintext; dispose it to zero it.</returns>
    public async Task<DecryptedData> AsymmetricDecryptAsync(string name, ReadOnlyMemory<byte> ciphertext, CancellationToken cancellationToken = default)
    {
        var response = await _stub.AsymmetricDecryptAsync(new AsymmetricDecryptRequest { Name = name, Ciphertext = ByteString.CopyFrom(ciphertext.Span) }, Options(cancellationToken)).ConfigureAwait(false);
        return new DecryptedData(response.Plaintext, response.KeyVersion);
    }

    /// <summary>HMAC of <paramref name="data"/> (at most 64 KiB) with a MAC key version.</summary>
    public async Task<byte[]> GenerateMacAsync(string name, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) =>
        (await _stub.GenerateMacAsync(new GenerateMacRequest { Name = name, Data = ByteString.CopyFrom(data.Span) }, Options(cancellationToken)).ConfigureAwait(false)).Mac.ToByteArray();

    /// <summary>Whether <paramref name="mac"/> is the version's HMAC of <paramref name="data"/> (compared in constant time by the server).</summary>
    public async Task<bool> VerifyMacAsync(string name, ReadOnlyMemory<byte> data, ReadOnlyMemory<byte> mac, CancellationToken cancellationToken = default) =>
        (await _stub.VerifyMacAsync(new VerifyMacRequest { Name = name, Data = ByteString.CopyFrom(data.Span), Mac = ByteString.CopyFrom(mac.Span) }, Options(cancellationToken)).ConfigureAwait(false)).Valid;

    /// <summary>Creates an import job (<c>tenants/{t}/importJobs/{id}</c>) whose RSA public key material is wrapped for (<see cref="KeyImport"/>).</summary>
    public async Task<ImportJob> CreateImportJobAsync(string parent, string importJobId, ImportMethod method, CancellationToken cancellationToken = default) =>
        (await _stub.CreateImportJobAsync(
            new CreateImportJobRequest { Parent = parent, ImportJobId = importJobId, ImportJob = new ImportJob { ImportMethod = method } },
            Options(cancellationToken)).ConfigureAwait(false)).ImportJob;

    /// <summary>An import job.</summary>
    public async Task<ImportJob> GetImportJobAsync(string name, CancellationToken cancellationToken = default) =>
        (await _stub.GetImportJobAsync(new GetImportJobRequest { Name = name }, Options(cancellationToken)).ConfigureAwait(false)).ImportJob;

    /// <summary>
    /// Imports material wrapped with <see cref="KeyImport.Wrap"/> as the key's new primary version.
    /// A request id is generated when none is given, so a retry is applied once.
    /// </summary>
    public async Task<KeyVersion> ImportKeyVersionAsync(string keyName, string importJob, ReadOnlyMemory<byte> wrappedKey, ReadOnlyMemory<byte> publicKey = default, string? requestId = null, CancellationToken cancellationToken = default) =>
        (await _stub.ImportKeyVersionAsync(
            new ImportKeyVersionRequest
            {
                Parent = keyName,
                ImportJob = importJob,
                WrappedKey = ByteString.CopyFrom(wrappedKey.Span),
                PublicKey = ByteString.CopyFrom(publicKey.Span),
                RequestId = requestId ?? RetrySafety.NewRequestId(),
            },
            Options(cancellationToken)).ConfigureAwait(false)).KeyVersion;

    /// <summary>A key version's signed provenance statement; check it with <see cref="Kms.Core.Keys.KeyAttestation.Verify"/> and the published audit key.</summary>
    public async Task<GetKeyAttestationResponse> GetKeyAttestationAsync(string name, CancellationToken cancellationToken = default) =>
        await _stub.GetKeyAttestationAsync(new GetKeyAttestationRequest { Name = name }, Options(cancellationToken)).ConfigureAwait(false);
}
