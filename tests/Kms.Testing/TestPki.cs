using System.Numerics;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Kms.Testing;

/// <summary>
/// A throwaway PKI for mTLS tests, built with .NET's own certificate and CRL builders: a
/// client CA, client certificates (SPIFFE URI SAN or subject CN), and CRLs.
/// </summary>
public sealed class TestPki : IDisposable
{
    /// <summary>id-kp-clientAuth.</summary>
    public const string ClientAuth = "1.3.6.1.5.5.7.3.2";

    /// <summary>id-kp-serverAuth.</summary>
    public const string ServerAuth = "1.3.6.1.5.5.7.3.1";

    private readonly ECDsa _caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    private readonly List<(byte[] Serial, DateTimeOffset When)> _revoked = [];
    private int _crlNumber;

    /// <param name="name">The CA's common name.</param>
    /// <param name="notAfter">The CA certificate's end (default: five years on); a certificate it issues may outlive it, as OpenSSL allows.</param>
    public TestPki(string name = "Kms Test Client CA", DateTimeOffset? notAfter = null)
    {
        var request = new CertificateRequest($"CN={name}", _caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        Certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-30), notAfter ?? DateTimeOffset.UtcNow.AddYears(5));
    }

    /// <summary>An intermediate CA: its certificate issued by <paramref name="issuer"/> (which can revoke it with <see cref="Revoke"/>).</summary>
    /// <param name="name">The intermediate CA's common name.</param>
    /// <param name="issuer">The CA that issues its certificate.</param>
    /// <param name="notBefore">The start of its certificate's validity (default: twenty days ago).</param>
    public TestPki(string name, TestPki issuer, DateTimeOffset? notBefore = null)
    {
        ArgumentNullException.ThrowIfNull(issuer);
        var request = new CertificateRequest($"CN={name}", _caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(issuer.Certificate, true, false));
        var serial = RandomNumberGenerator.GetBytes(12);
        serial[0] &= 0x7F;
        using var issued = request.Create(issuer.Certificate.SubjectName, X509SignatureGenerator.CreateForECDsa(issuer._caKey),
            notBefore ?? DateTimeOffset.UtcNow.AddDays(-20), DateTimeOffset.UtcNow.AddYears(4), serial);
        Certificate = issued.CopyWithPrivateKey(_caKey);
    }

    public X509Certificate2 Certificate { get; }

    /// <summary>Writes the CA certificate as PEM.</summary>
    public string WriteCa(string path)
    {
        File.WriteAllText(path, Certificate.ExportCertificatePem() + "\n");
        return path;
    }

    /// <summary>A client certificate with its key; <paramref name="spiffeId"/> goes into a URI SAN, <paramref name="commonName"/> into the subject.</summary>
    /// <param name="usage">Extended key usage OID (default client authentication); null: no EKU extension.</param>
    /// <param name="moreUris">More URI SANs, after <paramref name="spiffeId"/>, in the same extension.</param>
    public X509Certificate2 Issue(string commonName, string? spiffeId = null, DateTimeOffset? notBefore = null, DateTimeOffset? notAfter = null, string? usage = ClientAuth, IReadOnlyList<string>? moreUris = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={commonName}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        if (usage is not null)
        {
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(usage)], false));
        }

        if (spiffeId is not null || moreUris is { Count: > 0 })
        {
            var san = new SubjectAlternativeNameBuilder();
            foreach (var uri in (spiffeId is null ? [] : new[] { spiffeId }).Concat(moreUris ?? []))
            {
                san.AddUri(new Uri(uri));
            }

            request.CertificateExtensions.Add(san.Build());
        }

        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(Certificate, true, false));
        var serial = RandomNumberGenerator.GetBytes(12);
        serial[0] &= 0x7F;
        // Signed with the CA's key by name: Create(issuerCertificate, …) would refuse a notAfter past
        // the CA's own, which OpenSSL issues without complaint.
        using var issued = request.Create(Certificate.SubjectName, X509SignatureGenerator.CreateForECDsa(_caKey),
            notBefore ?? DateTimeOffset.UtcNow.AddDays(-1), notAfter ?? DateTimeOffset.UtcNow.AddDays(30), serial);

        // Through PKCS#12 so that SslStream gets a key it can use on every platform.
        using var withKey = issued.CopyWithPrivateKey(key);
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12, ""), "");
    }

    /// <summary>Adds a certificate to the next CRL.</summary>
    public void Revoke(X509Certificate2 certificate) => _revoked.Add((certificate.SerialNumberBytes.ToArray(), DateTimeOffset.UtcNow.AddMinutes(-1)));

    /// <summary>Leaves a certificate out of the next CRL again (a hold released, a revocation made in error).</summary>
    public void Reinstate(X509Certificate2 certificate) => _revoked.RemoveAll(r => r.Serial.AsSpan().SequenceEqual(certificate.SerialNumberBytes.Span));

    /// <summary>Writes a CRL (PEM) listing every revoked certificate, signed by the CA.</summary>
    /// <summary>Writes a CRL of the revoked certificates (PEM, atomically); by default valid for 7 days.</summary>
    public string WriteCrl(string path, DateTimeOffset? nextUpdate = null)
    {
        var builder = new CertificateRevocationListBuilder();
        foreach (var (serial, when) in _revoked)
        {
            builder.AddEntry(serial, when, X509RevocationReason.KeyCompromise);
        }

        var crl = builder.Build(Certificate, new BigInteger(++_crlNumber), nextUpdate ?? DateTimeOffset.UtcNow.AddDays(7), HashAlgorithmName.SHA256, thisUpdate: DateTimeOffset.UtcNow.AddMinutes(-5));
        var temp = path + ".tmp";
        File.WriteAllText(temp, PemEncoding.WriteString("X509 CRL", crl) + "\n");
        File.Move(temp, path, overwrite: true);
        return path;
    }

    public void Dispose()
    {
        _caKey.Dispose();
        Certificate.Dispose();
    }
}
