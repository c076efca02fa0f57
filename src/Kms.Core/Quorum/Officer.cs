using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Kms.Core.Errors;

namespace Kms.Core.Quorum;

/// <summary>
/// A quorum officer: a display name and an ECDSA P-256 public key. The private key stays in
/// a file the officer holds; the service only ever sees the public half.
/// </summary>
/// <remarks>
/// An officer is identified by <see cref="Fingerprint"/> — the SHA-256 of the key's DER
/// SubjectPublicKeyInfo — never by name: approvals are counted by key.
/// </remarks>
public sealed partial class Officer
{
    /// <summary>Longest officer name.</summary>
    public const int MaxNameLength = 64;

    private readonly byte[] _publicKey;

    private Officer(string name, byte[] publicKey)
    {
        Name = name;
        _publicKey = publicKey;
        Fingerprint = FingerprintOf(publicKey);
    }

    /// <summary>The officer's display name: 1 to 64 of <c>[A-Za-z0-9 ._@-]</c>.</summary>
    public string Name { get; }

    /// <summary>The public key, DER SubjectPublicKeyInfo (a copy).</summary>
    public byte[] PublicKey => (byte[])_publicKey.Clone();

    /// <summary>Lower-case hex SHA-256 of <see cref="PublicKey"/> (64 characters).</summary>
    public string Fingerprint { get; }

    /// <summary>An officer from a DER SubjectPublicKeyInfo, which must be an EC key on P-256.</summary>
    /// <param name="field">The request field to name in an error.</param>
    /// <exception cref="KmsException">InvalidArgument: bad name, or not a P-256 public key.</exception>
    public static Officer Create(string name, ReadOnlySpan<byte> subjectPublicKeyInfo, string field = "officers")
    {
        if (string.IsNullOrEmpty(name) || name.Length > MaxNameLength || !NamePattern().IsMatch(name))
        {
            throw KmsErrors.InvalidArgument(field + ".name", $"an officer name is 1 to {MaxNameLength} of [A-Za-z0-9 ._@-]");
        }

        var der = subjectPublicKeyInfo.ToArray();
        try
        {
            using var key = ECDsa.Create();
            key.ImportSubjectPublicKeyInfo(der, out var read);
            var curve = key.ExportParameters(false).Curve;
            if (read != der.Length || !curve.IsNamed || curve.Oid.Value != "1.2.840.10045.3.1.7")
            {
                throw KmsErrors.InvalidArgument(field + ".public_key", "must be an ECDSA P-256 public key (DER SubjectPublicKeyInfo, nothing after it)");
            }
        }
        catch (Exception e) when (e is CryptographicException or PlatformNotSupportedException)
        {
            // OpenSSL refuses a well-formed key on a curve it does not know (an unknown OID) with
            // PlatformNotSupportedException, not CryptographicException (found by fuzzing).
            throw KmsErrors.InvalidArgument(field + ".public_key", "must be an ECDSA P-256 public key (DER SubjectPublicKeyInfo)");
        }

        return new Officer(name, der);
    }

    /// <summary>
    /// Refuses a name for a NEW officer that would read like another name: a space at either end,
    /// or two spaces in a row — "olga", "olga " and "o  lga" look the same in the text officers
    /// sign. <see cref="Create"/> does not check this, so a genesis file, database or approval
    /// bundle written before the rule still loads; what makes officers (a ceremony's genesis, an
    /// officer-change request) checks it, through <see cref="OfficerSet.CheckNewNames"/>.
    /// </summary>
    /// <param name="name">The proposed name (already of <see cref="Create"/>'s grammar).</param>
    /// <param name="field">The request field to name in an error.</param>
    /// <exception cref="KmsException">InvalidArgument naming the name and how it would read.</exception>
    public static void CheckNewName(string name, string field = "officers")
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.StartsWith(' ') || name.EndsWith(' ') || name.Contains("  ", StringComparison.Ordinal))
        {
            throw KmsErrors.InvalidArgument(field + ".name",
                $"the officer name \"{name}\" has a space at its start or end, or two in a row: it would read as \"{Readable(name)}\" in the text officers sign; give it without them");
        }
    }

    /// <summary>A name as it reads: no spaces at the ends, a run of spaces as one.</summary>
    public static string Readable(string name) => string.Join(' ', (name ?? throw new ArgumentNullException(nameof(name))).Split(' ', StringSplitOptions.RemoveEmptyEntries));

    /// <summary>An officer from a PEM <c>PUBLIC KEY</c> (as <see cref="OfficerSet"/>'s ceremony tooling writes it).</summary>
    /// <exception cref="KmsException">InvalidArgument: not a P-256 public key.</exception>
    public static Officer FromPem(string name, string publicKeyPem)
    {
        ArgumentNullException.ThrowIfNull(publicKeyPem);
        if (!PemEncoding.TryFind(publicKeyPem, out var fields) || publicKeyPem[fields.Label] is not "PUBLIC KEY")
        {
            throw KmsErrors.InvalidArgument("public_key", "expected a PEM PUBLIC KEY block");
        }

        return Create(name, Convert.FromBase64String(publicKeyPem[fields.Base64Data]), "officer");
    }

    /// <summary>The fingerprint of a DER SubjectPublicKeyInfo.</summary>
    public static string FingerprintOf(ReadOnlySpan<byte> subjectPublicKeyInfo) => Convert.ToHexStringLower(SHA256.HashData(subjectPublicKeyInfo));

    /// <summary>Whether a fingerprint is well formed (64 lower-case hex digits).</summary>
    public static bool IsFingerprint(string? text) => text is { Length: 64 } && text.All(c => char.IsAsciiDigit(c) || c is >= 'a' and <= 'f');

    /// <summary>Whether <paramref name="signature"/> (ECDSA P-256, SHA-256, DER) over <paramref name="data"/> verifies under this officer's key.</summary>
    public bool Verifies(ReadOnlySpan<byte> data, ReadOnlySpan<byte> signature)
    {
        using var key = ECDsa.Create();
        key.ImportSubjectPublicKeyInfo(_publicKey, out _);
        try
        {
            return key.VerifyData(data, signature, HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);
        }
        catch (CryptographicException)
        {
            return false;
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"{Name} ({Fingerprint})";

    [GeneratedRegex("^[A-Za-z0-9 ._@-]+\\z", RegexOptions.CultureInvariant)]
    private static partial Regex NamePattern();
}
