using System.Formats.Asn1;
using System.Security.Cryptography.X509Certificates;
using Kms.Core.Access;
using Kms.Core.Services;
using Org.BouncyCastle.X509;

namespace Kms.Server.Security;

/// <summary>
/// Verifies client certificates for mTLS: chain to the configured CA bundle (and nothing
/// else: no system roots), within validity, an extended key usage that includes client
/// authentication (required, not merely allowed by its absence), not on the
/// configured CRL (signed by the CA), nor any intermediate CA of its chain on its issuer's. Revocation is never checked online (there is no
/// network to ask). CA bundle and CRL reload when their files change. A CRL past its
/// nextUpdate fails closed, as OpenSSL does: every certificate is refused until a fresh
/// CRL is installed (a stale CRL could be hiding a revocation). Validity and the CRL's nextUpdate
/// are judged by <see cref="TrustedTime"/>, not by the system clock the TLS stack would use: a
/// node whose clock was set back accepts no certificate that has expired by the time this
/// deployment has evidence of. Each load of the files is a new <see cref="TrustVersion"/>: a
/// caller remembered from a certificate accepted under an older one is checked again
/// (<see cref="CallerAuthentication"/>), because a client presents its certificate once, at the
/// handshake of a connection it may keep open for as long as it runs.
/// </summary>
/// <remarks>
/// Principal rule (docs/access-control.md): a URI SAN starting with <c>spiffe://</c> gives
/// <c>spiffe:&lt;uri&gt;</c> — the certificate's only URI SAN, as in an X.509-SVID: one with a
/// SPIFFE ID and any other URI SAN is refused; otherwise the subject's CN gives
/// <c>cn:&lt;cn&gt;</c>; a certificate with neither is refused.
/// </remarks>
internal sealed partial class ClientCertificateValidator
{
    private const string ClientAuthOid = "1.3.6.1.5.5.7.3.2";
    private const string CommonNameOid = "2.5.4.3";
    private readonly ReloadingFile<TrustMaterial> _trust;
    private readonly TrustedTime _trusted;
    private readonly ILogger _logger;
    private readonly Kms.Core.LogThrottle _notAnSvidLog = new();
    private long _loads;
    private long _verifications;

    public ClientCertificateValidator(string caPath, string? crlPath, TrustedTime trustedTime, TimeProvider time, ILogger<ClientCertificateValidator> logger)
    {
        _trusted = trustedTime;
        _logger = logger;
        _trust = new ReloadingFile<TrustMaterial>(
            () => TrustMaterial.Load(caPath, crlPath, Interlocked.Increment(ref _loads)),
            time,
            e => LogReloadFailed(_logger, e.Message),
            crlPath is null ? [caPath] : [caPath, crlPath]);
        _ = _trust.Value;
    }

    /// <summary>
    /// The version of the CA bundle and CRL in force: another number once either file has been
    /// read again (they are looked at, at most once a second, when this is read). Takes no lock
    /// between looks, so it is cheap enough to read on every call.
    /// </summary>
    public long TrustVersion => _trust.Value.Version;

    /// <summary>How many certificates were verified (calls of Accept; tests count the ones the cache spared).</summary>
    internal long Verifications => Interlocked.Read(ref _verifications);

    /// <summary>
    /// Whether the certificate is acceptable now (called per call, for the certificate of the
    /// call's connection); if so, under which <see cref="TrustVersion"/>, and until when that
    /// answer holds if nothing is read again: the earliest notAfter of its chain (its own, or a
    /// CA's that ends first), or an earlier nextUpdate of a CRL (past it, every certificate is refused).
    /// </summary>
    public Acceptance? Accept(X509Certificate2 certificate) => Accept(certificate, out _);

    /// <summary>
    /// As <see cref="Accept(X509Certificate2)"/>; a certificate refused only because it or a CA
    /// certificate of its chain is not yet valid gives the time the first of them becomes so.
    /// </summary>
    /// <param name="certificate">The client's certificate.</param>
    /// <param name="validFrom">
    /// For a certificate refused only because its chain is not yet valid — the chain otherwise
    /// sound (trusted, signatures, client authentication usage, no revocation, a name): the
    /// earliest notBefore still ahead among its certificates (the client's own or a CA's). Null when
    /// it is refused for any other reason as well, or accepted.
    /// </param>
    public Acceptance? Accept(X509Certificate2 certificate, out DateTimeOffset? validFrom)
    {
        Interlocked.Increment(ref _verifications);
        validFrom = null;
        var trust = _trust.Value;
        var now = _trusted.GetUtcNow().UtcDateTime;
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(trust.Roots);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;

        // Never fetch issuers from URLs the (untrusted) certificate names: no requests to
        // attacker-chosen addresses, no stalls.
        chain.ChainPolicy.DisableCertificateDownloads = true;
        // Validity at the trusted time, not the system clock's (which VerificationTimeIgnored,
        // true by default, would take): setting VerificationTime clears it; said again here.
        chain.ChainPolicy.VerificationTime = now;
        chain.ChainPolicy.VerificationTimeIgnored = false;
        chain.ChainPolicy.ApplicationPolicy.Add(new System.Security.Cryptography.Oid(ClientAuthOid));
        // A chain that fails only because certificates of it are not valid yet (the client's own, or
        // a CA's) is checked on as if it were, and refused at the end, until the first of them
        // becomes valid: a refusal that lapses by itself. Failing for any other reason as well
        // (untrusted, a bad signature, expired; below: no client authentication usage, revoked, no
        // name), it is refused for good: before, the client's own notBefore was given whatever
        // else failed, and a not-yet-valid CA's was never looked at.
        DateTimeOffset? notYetValidUntil = null;
        if (!chain.Build(certificate) && (notYetValidUntil = NotYetValidOnly(chain, now)) is null)
        {
            return null;
        }

        if (!HasClientAuthUsage(certificate))
        {
            return null;
        }

        // The answer lapses with the first certificate of the chain to expire: the client's own,
        // or a CA's that expires before it (a certificate may outlive its issuer; OpenSSL issues
        // such with -days past the CA's end). Past that, the chain no longer builds.
        var until = DateTimeOffset.MaxValue;
        foreach (var element in chain.ChainElements)
        {
            var notAfter = new DateTimeOffset(element.Certificate.NotAfter.ToUniversalTime());
            if (notAfter < until)
            {
                until = notAfter;
            }
        }

        if (trust.Crls.Count > 0)
        {
            if (trust.Crls.Select(c => c.Crl).FirstOrDefault(crl => crl.NextUpdate is { } next && next < now) is { } stale)
            {
                if (Interlocked.Exchange(ref trust.StaleReported, 1) == 0)
                {
                    LogCrlStale(_logger, stale.IssuerDN.ToString(), stale.NextUpdate!.Value);
                }

                return null;
            }

            // Every certificate of the chain below its anchor — the client's own and each
            // intermediate CA's — is checked against the CRL of the CA that issued it, and there
            // must be one: a CA without a CRL in the file (the old one during a CA rotation, a
            // root whose CRL revokes an intermediate) would otherwise have its revocations
            // silently ignored. Before, only the client's own certificate was checked: a
            // certificate of an intermediate CA the root had revoked was accepted.
            if (chain.ChainElements.Count < 2)
            {
                ReportNoCrl(trust, certificate.Issuer);
                return null;
            }

            for (var link = 0; link < chain.ChainElements.Count - 1; link++)
            {
                var issued = chain.ChainElements[link].Certificate;
                var issuer = chain.ChainElements[link + 1].Certificate;
                var ownCrls = trust.Crls.Where(c => c.Issuer.RawData.AsSpan().SequenceEqual(issuer.RawData)).Select(c => c.Crl).ToList();
                if (ownCrls.Count == 0)
                {
                    ReportNoCrl(trust, issuer.Subject);
                    return null;
                }

                var parsed = new X509CertificateParser().ReadCertificate(issued.RawData);
                if (ownCrls.Any(crl => crl.IsRevoked(parsed)))
                {
                    return null;
                }
            }

            foreach (var crl in trust.Crls)
            {
                if (crl.Crl.NextUpdate is { } next && new DateTimeOffset(DateTime.SpecifyKind(next, DateTimeKind.Utc)) is var expires && expires < until)
                {
                    until = expires;
                }
            }
        }

        if (PrincipalOf(certificate, out var refusal) is null)
        {
            if (refusal is not null && _notAnSvidLog.Count() is var count and > 0)
            {
                LogNotAnSvid(_logger, certificate.SerialNumber, certificate.Issuer, refusal, count);
            }

            return null;
        }

        if (notYetValidUntil is not null)
        {
            validFrom = notYetValidUntil;
            return null;
        }

        return new Acceptance(trust.Version, until);
    }

    // The earliest notBefore ahead of now in a chain that failed to build only because certificates
    // of it are not yet valid; null when it failed for anything else (or was not built to an anchor).
    private static DateTimeOffset? NotYetValidOnly(X509Chain chain, DateTime now)
    {
        if (chain.ChainElements.Count == 0 || chain.ChainStatus.Any(s => (s.Status & ~X509ChainStatusFlags.NotTimeValid) != 0))
        {
            return null;
        }

        DateTimeOffset? earliest = null;
        foreach (var element in chain.ChainElements)
        {
            if (element.ChainElementStatus.Any(s => (s.Status & ~X509ChainStatusFlags.NotTimeValid) != 0))
            {
                return null;
            }

            if (element.ChainElementStatus.Length == 0)
            {
                continue;
            }

            // Not valid in time: only a certificate whose validity has not begun (and does not end before it does) lapses by itself.
            var notBefore = element.Certificate.NotBefore.ToUniversalTime();
            if (notBefore <= now || element.Certificate.NotAfter.ToUniversalTime() < now)
            {
                return null;
            }

            var from = new DateTimeOffset(notBefore, TimeSpan.Zero);
            if (earliest is null || from < earliest)
            {
                earliest = from;
            }
        }

        return earliest;
    }

    private void ReportNoCrl(TrustMaterial trust, string issuer)
    {
        if (Interlocked.Exchange(ref trust.NoCrlReported, 1) == 0)
        {
            LogNoCrlOfIssuer(_logger, issuer);
        }
    }

    /// <summary>A certificate found acceptable under <paramref name="TrustVersion"/>, an answer good until <paramref name="Until"/>.</summary>
    /// <param name="TrustVersion">The <see cref="ClientCertificateValidator.TrustVersion"/> the certificate was checked against.</param>
    /// <param name="Until">When the answer lapses even if no file changes: the earliest notAfter in the certificate's chain (its own or a CA's) or a CRL's nextUpdate, whichever is first.</param>
    public readonly record struct Acceptance(long TrustVersion, DateTimeOffset Until);

    // Stricter than RFC 5280, where a certificate without the extension may be used for
    // anything: a client certificate must say it is one.
    private static bool HasClientAuthUsage(X509Certificate2 certificate) =>
        certificate.Extensions.OfType<X509EnhancedKeyUsageExtension>().Any(e => e.EnhancedKeyUsages.Cast<System.Security.Cryptography.Oid>().Any(o => o.Value == ClientAuthOid));

    /// <summary>The certificate's principal, by the documented rule; null if it has no usable name.</summary>
    public static PrincipalName? PrincipalOf(X509Certificate2 certificate) => PrincipalOf(certificate, out _);

    // refusal: why a certificate with a SPIFFE ID is no X.509-SVID, for the log; null otherwise.
    private static PrincipalName? PrincipalOf(X509Certificate2 certificate, out string? refusal)
    {
        refusal = null;
        var uris = certificate.Extensions.OfType<X509SubjectAlternativeNameExtension>().SelectMany(e => ReadUris(e.RawData)).ToList();
        var spiffeIds = uris.Count(u => u.StartsWith("spiffe://", StringComparison.Ordinal));
        if (spiffeIds > 0)
        {
            // An X.509-SVID holds exactly one URI SAN (SPIFFE X509-SVID, section 2): with two
            // SPIFFE IDs the certificate names two workloads, and taking the first would choose
            // one for it. Refused, as a SPIFFE ID that is no valid name is; no falling back to its CN.
            if (uris.Count != 1)
            {
                refusal = $"it carries {uris.Count} URI SANs, {spiffeIds} of them SPIFFE IDs; an X.509-SVID holds exactly one URI SAN";
                return null;
            }

            return PrincipalName.IsValid(PrincipalKind.Spiffe, uris[0]) ? PrincipalName.Spiffe(uris[0]) : null;
        }

        // The subject's commonName attribute (2.5.4.3) itself, exactly one: GetNameInfo(SimpleName)
        // falls back to other attributes (O, OU, L, C …) when there is none, which would let a
        // certificate for "O=payments" authenticate as cn:payments.
        var names = certificate.SubjectName.EnumerateRelativeDistinguishedNames()
            .Where(rdn => !rdn.HasMultipleElements && rdn.GetSingleElementType().Value == CommonNameOid)
            .Select(rdn => rdn.GetSingleElementValue())
            .ToList();
        // A CN with a control character or a lone surrogate (BMPString allows both) is no name:
        // it would reach the logs, error messages and the audit chain as it is.
        return names is [{ } cn] && PrincipalName.IsValid(PrincipalKind.CommonName, cn) ? PrincipalName.CommonName(cn) : null;
    }

    // SubjectAltName ::= SEQUENCE OF GeneralName; uniformResourceIdentifier is [6] IA5String.
    private static List<string> ReadUris(byte[] extension)
    {
        var uris = new List<string>();
        try
        {
            var sequence = new AsnReader(extension, AsnEncodingRules.DER).ReadSequence();
            while (sequence.HasData)
            {
                var tag = sequence.PeekTag();
                if (tag.TagClass == TagClass.ContextSpecific && tag.TagValue == 6)
                {
                    uris.Add(sequence.ReadCharacterString(UniversalTagNumber.IA5String, new Asn1Tag(TagClass.ContextSpecific, 6)));
                }
                else
                {
                    sequence.ReadEncodedValue();
                }
            }
        }
        catch (AsnContentException)
        {
            return [];
        }

        return uris;
    }

    [LoggerMessage(EventId = 1110, Level = LogLevel.Error, Message = "client CRL of {Issuer} expired at {NextUpdate:O}: every client certificate is refused until a fresh CRL is installed")]
    private static partial void LogCrlStale(ILogger logger, string issuer, DateTime nextUpdate);

    [LoggerMessage(EventId = 1111, Level = LogLevel.Warning, Message = "client CA bundle or CRL could not be reloaded ({Reason}); still using the previous ones")]
    private static partial void LogReloadFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 1112, Level = LogLevel.Warning, Message = "client certificate refused: {Issuer} issued it or a CA certificate of its chain, and the CRL file holds no CRL of that CA (during a CA rotation it holds one of each; with an intermediate CA, the root's too)")]
    private static partial void LogNoCrlOfIssuer(ILogger logger, string issuer);

    [LoggerMessage(EventId = 1116, Level = LogLevel.Warning, Message = "client certificate {Serial} issued by {Issuer} refused: {Reason}; {Count} such refusals since the last message")]
    private static partial void LogNotAnSvid(ILogger logger, string serial, string issuer, string reason, long count);

    private sealed record TrustMaterial(X509Certificate2Collection Roots, IReadOnlyList<(X509Crl Crl, X509Certificate2 Issuer)> Crls, long Version)
    {
        // Set once the expiry of one of these CRLs has been logged.
        public int StaleReported;

        // Set once a certificate of a CA without a CRL here has been refused and logged.
        public int NoCrlReported;

        public static TrustMaterial Load(string caPath, string? crlPath, long version)
        {
            var roots = new X509Certificate2Collection();
            roots.ImportFromPemFile(caPath);
            if (roots.Count == 0)
            {
                throw new InvalidOperationException($"no CA certificate in {caPath}");
            }

            var crls = new List<(X509Crl, X509Certificate2)>();
            if (crlPath is not null)
            {
                foreach (var crl in new X509CrlParser().ReadCrls(File.ReadAllBytes(crlPath)))
                {
                    // Only CRLs signed by one of our CAs count.
                    var issuer = roots.FirstOrDefault(r => Verifies(crl, r))
                        ?? throw new InvalidOperationException($"the CRL in {crlPath} is not signed by a configured client CA");
                    crls.Add((crl, issuer));
                }

                // A configured CRL file that holds no CRL must not quietly turn revocation off.
                if (crls.Count == 0)
                {
                    throw new InvalidOperationException($"no CRL in {crlPath}");
                }
            }

            return new TrustMaterial(roots, crls, version);
        }

        private static bool Verifies(X509Crl crl, X509Certificate2 ca)
        {
            try
            {
                crl.Verify(new X509CertificateParser().ReadCertificate(ca.RawData).GetPublicKey());
                return true;
            }
            catch (Exception e) when (e is Org.BouncyCastle.Security.InvalidKeyException or Org.BouncyCastle.Security.SignatureException or Org.BouncyCastle.Crypto.CryptoException)
            {
                return false;
            }
        }
    }
}
