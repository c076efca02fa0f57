using System.Security.Cryptography;
using System.Text;
using Kms.Core.Files;
using Kms.Core.Quorum;

namespace Kms.Client.Quorum;

/// <summary>An officer's key files: the private key (PKCS#8 PEM, encrypted with a passphrase) and the public key (SPKI PEM).</summary>
/// <param name="PrivateKeyPath">The private key file (mode 0600).</param>
/// <param name="PublicKeyPath">The public key file, to hand to the ceremony.</param>
/// <param name="PublicKey">The public key, DER SubjectPublicKeyInfo.</param>
/// <param name="Fingerprint">Hex SHA-256 of <paramref name="PublicKey"/>: how the KMS names this officer.</param>
public sealed record OfficerKeyFiles(string PrivateKeyPath, string PublicKeyPath, byte[] PublicKey, string Fingerprint);

/// <summary>
/// Officer key pairs (what <c>kms officer keygen</c> writes): ECDSA P-256. The private key
/// never goes to the KMS; only its public half is registered at the ceremony.
/// </summary>
public static class OfficerKeys
{
    /// <summary>PBKDF2 iterations of the private key file's encryption (PBES2, SHA-256, AES-256-CBC).</summary>
    public const int Pbkdf2Iterations = 600_000;

    /// <summary>
    /// Generates a P-256 key pair and writes the private key to <paramref name="privateKeyPath"/>
    /// (encrypted PKCS#8 PEM, mode 0600 from its creation, never overwriting a file) and the
    /// public key to <paramref name="privateKeyPath"/><c>.pub</c> (SPKI PEM).
    /// </summary>
    /// <remarks>
    /// Both or neither: each file is written through <see cref="DurableFile"/> (whole or absent
    /// after a crash, on disk once this returns), and a private key whose public half cannot be
    /// written is removed again.
    /// </remarks>
    /// <exception cref="ArgumentException">An empty passphrase.</exception>
    /// <exception cref="IOException">A file exists already.</exception>
    public static OfficerKeyFiles Generate(string privateKeyPath, string passphrase)
    {
        ArgumentNullException.ThrowIfNull(privateKeyPath);
        ArgumentException.ThrowIfNullOrEmpty(passphrase);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var pem = key.ExportEncryptedPkcs8PrivateKeyPem(passphrase.AsSpan(), new PbeParameters(PbeEncryptionAlgorithm.Aes256Cbc, HashAlgorithmName.SHA256, Pbkdf2Iterations));
        var publicKey = key.ExportSubjectPublicKeyInfo();
        var publicKeyPath = privateKeyPath + ".pub";
        foreach (var path in new[] { privateKeyPath, publicKeyPath })
        {
            if (File.Exists(path) || Directory.Exists(path))
            {
                throw new IOException($"{path} exists already; officer keys are never overwritten");
            }
        }

        DurableFile.Write(privateKeyPath, Encoding.UTF8.GetBytes(pem + "\n"), DurableFile.OwnerOnly, overwrite: false);
        try
        {
            DurableFile.Write(publicKeyPath, Encoding.ASCII.GetBytes(PemEncoding.WriteString("PUBLIC KEY", publicKey) + "\n"), DurableFile.Public, overwrite: false);
        }
        catch
        {
            File.Delete(privateKeyPath);
            throw;
        }

        return new OfficerKeyFiles(privateKeyPath, publicKeyPath, publicKey, Officer.FingerprintOf(publicKey));
    }

    /// <summary>Loads a private key file (encrypted PKCS#8 with <paramref name="passphrase"/>, or plain PKCS#8/SEC1 when it is null).</summary>
    /// <exception cref="CryptographicException">A wrong passphrase, or not a P-256 private key.</exception>
    public static ECDsa LoadPrivateKey(string privateKeyPath, string? passphrase)
    {
        var pem = File.ReadAllText(privateKeyPath);
        var key = ECDsa.Create();
        try
        {
            if (passphrase is null)
            {
                key.ImportFromPem(pem);
            }
            else
            {
                key.ImportFromEncryptedPem(pem, passphrase);
            }

            var curve = key.ExportParameters(false).Curve;
            if (!curve.IsNamed || curve.Oid.Value != "1.2.840.10045.3.1.7")
            {
                throw new CryptographicException($"{privateKeyPath} is not a P-256 key; officer keys are ECDSA P-256");
            }

            return key;
        }
        catch
        {
            key.Dispose();
            throw;
        }
    }

    /// <summary>Reads a public key file (SPKI PEM) as an officer, e.g. for the ceremony's genesis set.</summary>
    public static Officer ReadOfficer(string name, string publicKeyPath) => Officer.FromPem(name, File.ReadAllText(publicKeyPath));
}
