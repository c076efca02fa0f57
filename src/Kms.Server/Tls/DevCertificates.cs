using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Kms.Core.Files;
using Kms.Server.Hosting;

namespace Kms.Server.Tls;

/// <summary>
/// Dev mode's TLS material: a self-signed CA (<c>ca.crt</c>, given to clients) and a
/// server certificate for localhost, 127.0.0.1 and ::1 that it signs. Created once;
/// the server certificate is re-issued when it nears expiry.
/// </summary>
/// <remarks>
/// Each file is replaced whole (<see cref="DurableFile"/>), the key before its certificate. A
/// pair that does not load together at start (a crash between the two, or a file an older server
/// left torn) is issued again, the CA's with a new server pair (clients need the new
/// <c>ca.crt</c> then).
/// </remarks>
internal static class DevCertificates
{
    public static (string CertificatePath, string KeyPath) Ensure(string tlsDirectory, TimeProvider time)
    {
        tlsDirectory = DurableFile.CreateDirectory(tlsDirectory);
        var caCertPath = Path.Combine(tlsDirectory, "ca.crt");
        var caKeyPath = Path.Combine(tlsDirectory, "ca.key");
        var certPath = Path.Combine(tlsDirectory, "server.crt");
        var keyPath = Path.Combine(tlsDirectory, "server.key");
        var now = time.GetUtcNow();

        if (!LoadsTogether(caCertPath, caKeyPath))
        {
            // The server certificate goes first, and for certain: one signed by the previous CA
            // must not outlive a crash that leaves the new CA in place.
            if (File.Exists(certPath))
            {
                File.Delete(certPath);
                DirectorySync.Flush(tlsDirectory);
            }

            using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest("CN=Kms dev CA", caKey, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
            using var ca = request.CreateSelfSigned(now.AddMinutes(-5), now.AddYears(10));
            SecretFiles.Write(caKeyPath, caKey.ExportPkcs8PrivateKeyPem());
            WriteCertificate(caCertPath, ca.ExportCertificatePem() + "\n");
        }

        if (LoadsTogether(certPath, keyPath))
        {
            using var existing = X509Certificate2.CreateFromPem(File.ReadAllText(certPath));
            if (existing.NotAfter.ToUniversalTime() > now.UtcDateTime.AddDays(7))
            {
                return (certPath, keyPath);
            }
        }

        using var issuer = X509Certificate2.CreateFromPemFile(caCertPath, caKeyPath);
        using var serverKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var serverRequest = new CertificateRequest("CN=localhost", serverKey, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName("localhost");
        names.AddIpAddress(IPAddress.Loopback);
        names.AddIpAddress(IPAddress.IPv6Loopback);
        serverRequest.CertificateExtensions.Add(names.Build());
        serverRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        serverRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        serverRequest.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        serverRequest.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(issuer, true, false));
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;
        using var server = serverRequest.Create(issuer, now.AddMinutes(-5), now.AddDays(397), serial);
        SecretFiles.Write(keyPath, serverKey.ExportPkcs8PrivateKeyPem());
        WriteCertificate(certPath, server.ExportCertificatePem() + "\n" + issuer.ExportCertificatePem() + "\n");
        return (certPath, keyPath);
    }

    /// <summary>
    /// Whether <paramref name="certificatePath"/> and <paramref name="keyPath"/> are a certificate
    /// and its private key: false for a missing, torn or empty file (an older server wrote them
    /// in place), and for a key whose certificate a crash kept from being written (the key is
    /// written first).
    /// </summary>
    private static bool LoadsTogether(string certificatePath, string keyPath)
    {
        if (!File.Exists(certificatePath) || !File.Exists(keyPath))
        {
            return false;
        }

        try
        {
            using var pair = X509Certificate2.CreateFromPemFile(certificatePath, keyPath);
            return pair.HasPrivateKey;
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            return false;
        }
    }

    /// <summary>A certificate (public: 0644), replaced whole through <see cref="DurableFile"/>, never rewritten in place.</summary>
    private static void WriteCertificate(string path, string pem) =>
        DurableFile.Write(path, System.Text.Encoding.ASCII.GetBytes(pem), DurableFile.Public, overwrite: true);
}
