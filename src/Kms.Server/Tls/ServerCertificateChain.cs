using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Kms.Server.Tls;

/// <summary>
/// What the server presents in its TLS handshake, read from <c>Kms:TlsCertificatePath</c> and
/// <c>Kms:TlsKeyPath</c>: the server's certificate, then the intermediate CA certificates of
/// the file in the file's order, so that a client trusting only the root CA can verify it.
/// </summary>
/// <remarks>
/// The file holds the server's certificate first (the one <c>Kms:TlsKeyPath</c> is the key
/// of), then the CA that issued it, then that CA's issuer, and so on. A self-signed root may
/// end the file; it is not sent (a client must already have it to trust it, RFC 8446 §4.4.2).
/// A file that does not follow this order is refused rather than served in part: a dropped
/// intermediate fails only the clients that lack it, long after the server started.
/// The chain is built offline: nothing is downloaded at start or reload.
/// </remarks>
internal static class ServerCertificateChain
{
    private const string ServerAuth = "1.3.6.1.5.5.7.3.1";

    /// <summary>Reads the files and builds the certificate context every handshake uses.</summary>
    /// <exception cref="InvalidOperationException">The files hold no usable chain; the message says why.</exception>
    public static SslStreamCertificateContext Load(string certificatePath, string keyPath)
    {
        // Each file is read once: a rotation that replaces them between two reads fails this
        // load (the previous chain is kept and the next check retries), never mixes versions.
        var file = new X509Certificate2Collection();
        try
        {
            file.ImportFromPem(Read(certificatePath, "Kms:TlsCertificatePath", "the server's certificate chain (PEM, its own certificate first)"));
        }
        catch (CryptographicException e)
        {
            throw new InvalidOperationException($"Kms:TlsCertificatePath {certificatePath}: a certificate in it cannot be read ({e.Message})", e);
        }

        if (file.Count == 0)
        {
            throw new InvalidOperationException($"Kms:TlsCertificatePath {certificatePath} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        }

        var key = Read(keyPath, "Kms:TlsKeyPath", "the private key of the server's certificate (PEM, unencrypted)");
        if ((PemEncoding.TryFind(key, out var pem) && key.AsSpan()[pem.Label].SequenceEqual("ENCRYPTED PRIVATE KEY")) || key.Contains("Proc-Type: 4,ENCRYPTED", StringComparison.Ordinal))
        {
            // No setting holds a password for it (one would sit in the configuration beside the
            // file it protects): the key is read as the file's mode allows, as the PIN file is.
            throw new InvalidOperationException(
                $"Kms:TlsKeyPath {keyPath} is an encrypted private key, which the server does not read (there is no password setting): write it unencrypted to a file only the server's user can read (openssl pkey -in {keyPath} -out <file>; chmod 600) and set Kms:TlsKeyPath to that file");
        }

        var leaf = WithKey(file, key, certificatePath, keyPath);
        if (leaf.Extensions.OfType<X509EnhancedKeyUsageExtension>().FirstOrDefault() is { } usage
            && !usage.EnhancedKeyUsages.Cast<Oid>().Any(o => o.Value == ServerAuth))
        {
            throw new InvalidOperationException($"Kms:TlsCertificatePath {certificatePath}: the server's certificate ({leaf.Subject}) has an extended key usage without serverAuth ({ServerAuth})");
        }

        // Every CA certificate of the file must be in the chain, in the file's order: the chain
        // is built by name and signature, and a certificate that is not the issuer of the one
        // before it would be left out of what is sent without a word.
        var authorities = new X509Certificate2Collection(file.Skip(1).ToArray());
        using (var chain = new X509Chain())
        {
            chain.ChainPolicy.ExtraStore.AddRange(authorities);
            chain.ChainPolicy.VerificationFlags = X509VerificationFlags.AllFlags;
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            chain.ChainPolicy.DisableCertificateDownloads = true;
            chain.Build(leaf);
            try
            {
                for (var i = 1; i < file.Count; i++)
                {
                    if (i >= chain.ChainElements.Count || !chain.ChainElements[i].Certificate.RawDataMemory.Span.SequenceEqual(file[i].RawDataMemory.Span))
                    {
                        throw new InvalidOperationException(
                            $"Kms:TlsCertificatePath {certificatePath}: certificate {i + 1} ({file[i].Subject}) is not the issuer of certificate {i} ({file[i - 1].Subject}): "
                            + "the file must hold the server's certificate, then the CA that issued it, then that CA's issuer, and so on");
                    }
                }
            }
            finally
            {
                foreach (var element in chain.ChainElements)
                {
                    element.Certificate.Dispose();
                }
            }
        }

        // A self-signed root at the end is left out by SslStream (trimmed from what it sends).
        return SslStreamCertificateContext.Create(leaf, authorities, offline: true);
    }

    // The file's text; a file that is missing or cannot be read is named with its setting (.NET's
    // own message named only the path: "Could not find file '…'").
    private static string Read(string path, string setting, string what)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new InvalidOperationException($"{setting} {path} does not exist: set {setting} to {what}", e);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new InvalidOperationException($"{setting} {path} cannot be read ({e.Message}): it must be a file the server's user can read, holding {what}", e);
        }
    }

    // The key must be that of the first certificate: say which one it is of when it is another's,
    // the usual mistake being a chain file written root or intermediate first.
    private static X509Certificate2 WithKey(X509Certificate2Collection file, string key, string certificatePath, string keyPath)
    {
        try
        {
            return X509Certificate2.CreateFromPem(file[0].ExportCertificatePem(), key);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            for (var i = 1; i < file.Count; i++)
            {
                if (IsKeyOf(file[i], key))
                {
                    throw new InvalidOperationException(
                        $"Kms:TlsKeyPath {keyPath} is the key of certificate {i + 1} ({file[i].Subject}) of Kms:TlsCertificatePath {certificatePath}, not of the first ({file[0].Subject}): "
                        + "the file must start with the server's own certificate, followed by its intermediate CAs", e);
                }
            }

            throw new InvalidOperationException(
                $"Kms:TlsKeyPath {keyPath} is not a readable private key of the first certificate ({file[0].Subject}) of Kms:TlsCertificatePath {certificatePath} ({e.Message})", e);
        }
    }

    private static bool IsKeyOf(X509Certificate2 certificate, string key)
    {
        try
        {
            using var paired = X509Certificate2.CreateFromPem(certificate.ExportCertificatePem(), key);
            return true;
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            return false;
        }
    }
}
