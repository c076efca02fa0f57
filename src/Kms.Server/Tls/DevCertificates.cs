using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Kms.Server.Hosting;

namespace Kms.Server.Tls;

/// <summary>
/// Dev mode's TLS material: a self-signed CA (<c>ca.crt</c>, given to clients) and a
/// server certificate for localhost, 127.0.0.1 and ::1 that it signs. Created once;
/// the server certificate is re-issued when it nears expiry.
/// </summary>
internal static class DevCertificates
{
    public static (string CertificatePath, string KeyPath) Ensure(string tlsDirectory, TimeProvider time)
    {
        Directory.CreateDirectory(tlsDirectory);
        var caCertPath = Path.Combine(tlsDirectory, "ca.crt");
        var caKeyPath = Path.Combine(tlsDirectory, "ca.key");
        var certPath = Path.Combine(tlsDirectory, "server.crt");
        var keyPath = Path.Combine(tlsDirectory, "server.key");
        var now = time.GetUtcNow();

        if (!File.Exists(caCertPath) || !File.Exists(caKeyPath))
        {
            using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest("CN=Kms dev CA", caKey, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
            using var ca = request.CreateSelfSigned(now.AddMinutes(-5), now.AddYears(10));
            SecretFiles.Write(caKeyPath, caKey.ExportPkcs8PrivateKeyPem());
            File.WriteAllText(caCertPath, ca.ExportCertificatePem() + "\n");
            File.Delete(certPath);
        }

        if (File.Exists(certPath) && File.Exists(keyPath))
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
        File.WriteAllText(certPath, server.ExportCertificatePem() + "\n" + issuer.ExportCertificatePem() + "\n");
        return (certPath, keyPath);
    }
}
