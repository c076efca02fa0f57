using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kms.Ceremony.Sharing;
using Org.BouncyCastle.Crypto.Generators;
using Org.BouncyCastle.Crypto.Parameters;

namespace Kms.Ceremony.Shares;

/// <summary>
/// One custodian's share file (format <c>kms-share-v1</c>, docs/share-format.md): the share,
/// encrypted with AES-256-GCM under a key derived from the custodian's passphrase with Argon2id,
/// and public fields (domain, check value, custodian, index, M of N, time, KDF parameters) bound
/// to it as associated data.
/// </summary>
/// <remarks>
/// <para>Two integrity layers with different jobs: a SHA-256 <em>checksum</em> over the file's
/// bytes tells accidental corruption apart from a wrong passphrase; the GCM tag authenticates the
/// share and every public field against deliberate edits (an attacker can recompute the checksum,
/// not the tag). The <see cref="Fingerprint"/> is a hash of public fields and ciphertext only,
/// for the ceremony transcript.</para>
/// <para>Instances are immutable and hold nothing secret: the share is decrypted only by
/// <see cref="Unprotect"/>.</para>
/// </remarks>
public sealed class ShareFile
{
    /// <summary>The format version this code writes and reads.</summary>
    public const string FormatVersion = "kms-share-v1";

    /// <summary>Largest file read; a real one is under 2 KiB.</summary>
    public const int MaxFileSize = 64 * 1024;

    private const string KdfAlgorithm = "argon2id";
    private const string AeadAlgorithm = "aes-256-gcm";
    private const int NonceLength = 12;
    private const int TagLength = 16;
    private const string TimeFormat = "yyyy-MM-dd'T'HH:mm:ss'Z'";
    private static readonly byte[] FingerprintLabel = Encoding.ASCII.GetBytes("kms-share-v1 fingerprint");

    // The file ends with exactly this line and the closing brace; the checksum covers every byte before it.
    private static readonly byte[] ChecksumLineStart = Encoding.ASCII.GetBytes("  \"checksum\": \"");
    private static readonly byte[] ChecksumLineEnd = Encoding.ASCII.GetBytes("\"\n}\n");
    private static readonly int ChecksumTrailerLength = ChecksumLineStart.Length + 64 + ChecksumLineEnd.Length;

    private static readonly string[] TopLevelNames =
        ["format", "domainId", "domainKcv", "custodian", "index", "threshold", "count", "shareLength", "createdAt", "kdf", "aead", "fingerprint", "checksum"];
    private static readonly string[] KdfNames = ["algorithm", "version", "memoryKib", "iterations", "parallelism", "salt"];
    private static readonly string[] AeadNames = ["algorithm", "nonce", "ciphertext", "tag"];

    private readonly byte[] _salt;
    private readonly byte[] _nonce;
    private readonly byte[] _ciphertext;
    private readonly byte[] _tag;

    private ShareFile(
        string domainId, string domainKcv, string custodian, int index, int threshold, int count, DateTimeOffset createdAt,
        Argon2idParameters kdf, byte[] salt, byte[] nonce, byte[] ciphertext, byte[] tag, string? source)
    {
        DomainId = domainId;
        DomainKcv = domainKcv;
        Custodian = custodian;
        Index = index;
        Threshold = threshold;
        Count = count;
        CreatedAt = createdAt;
        Kdf = kdf;
        _salt = salt;
        _nonce = nonce;
        _ciphertext = ciphertext;
        _tag = tag;
        Source = source;
    }

    /// <summary>The domain key's identifier.</summary>
    public string DomainId { get; }

    /// <summary>The domain key's check value, 6 upper-case hex digits.</summary>
    public string DomainKcv { get; }

    /// <summary>The custodian this share was made for.</summary>
    public string Custodian { get; }

    /// <summary>The share's index x, 1..N.</summary>
    public int Index { get; }

    /// <summary>M: shares needed to rebuild the key.</summary>
    public int Threshold { get; }

    /// <summary>N: shares made.</summary>
    public int Count { get; }

    /// <summary>Length of the share, in bytes (that of the secret: 32 for a domain key).</summary>
    public int ShareLength => _ciphertext.Length;

    /// <summary>When the share file was made (UTC, whole seconds).</summary>
    public DateTimeOffset CreatedAt { get; }

    /// <summary>The Argon2id cost parameters of this file.</summary>
    public Argon2idParameters Kdf { get; }

    /// <summary>
    /// SHA-256 (lower-case hex) over the public fields and the ciphertext: what the ceremony
    /// transcript records for this share. It reveals nothing the file does not already show.
    /// </summary>
    public string Fingerprint => Convert.ToHexStringLower(ComputeFingerprint());

    /// <summary>The path it was read from, or null for a file made or parsed in memory. Used in messages.</summary>
    public string? Source { get; }

    /// <summary>Encrypts <paramref name="share"/> for one custodian.</summary>
    /// <param name="share">The share; it must be one of <paramref name="metadata"/>'s N (index ≤ N).</param>
    /// <param name="metadata">Domain, check value, custodian, M and N.</param>
    /// <param name="passphrase">The custodian's passphrase; it must pass <see cref="Passphrases.Check"/>.</param>
    /// <param name="kdf">Argon2id cost (default <see cref="Argon2idParameters.Default"/>).</param>
    /// <param name="policy">Whether parameters below the production floor are allowed (tests only).</param>
    /// <param name="timeProvider">Clock of <see cref="CreatedAt"/> (default: the system clock).</param>
    /// <remarks>A fresh random salt and nonce every time. The passphrase's bytes and the derived key are zeroed before returning.</remarks>
    /// <exception cref="CeremonyException">A field, the passphrase or the parameters fail validation.</exception>
    public static ShareFile Protect(
        Share share, ShareMetadata metadata, ReadOnlySpan<char> passphrase,
        Argon2idParameters? kdf = null, KdfPolicy policy = KdfPolicy.Production, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(share);
        ArgumentNullException.ThrowIfNull(metadata);
        kdf ??= Argon2idParameters.Default;
        var custodian = metadata.Custodian?.Normalize(NormalizationForm.FormC);
        var domainKcv = KeyCheckValue.Normalize(metadata.DomainKcv);
        var problem = ShareMetadata.CheckDomainId(metadata.DomainId)
            ?? CustodianName.Check(custodian)
            ?? (domainKcv is null ? "the domain check value must be 6 hex digits" : null)
            ?? ShareMetadata.CheckSplit(metadata.Threshold, metadata.Count)
            ?? (share.Index > metadata.Count ? $"share index {share.Index} is above the share count {metadata.Count}" : null);
        if (problem is not null)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, problem);
        }
        if (kdf.Check(policy) is { } kdfProblem)
        {
            throw new CeremonyException(CeremonyError.KdfParametersRefused, kdfProblem);
        }

        var passphraseBytes = Passphrases.Encode(passphrase, enforcePolicy: true);
        var key = new byte[Argon2idParameters.KeyLength];
        try
        {
            var now = (timeProvider ?? TimeProvider.System).GetUtcNow();
            var createdAt = DateTimeOffset.FromUnixTimeSeconds(now.ToUnixTimeSeconds());
            var salt = RandomNumberGenerator.GetBytes(Argon2idParameters.SaltLength);
            var nonce = RandomNumberGenerator.GetBytes(NonceLength);
            var ciphertext = new byte[share.Length];
            var tag = new byte[TagLength];
            var file = new ShareFile(metadata.DomainId, domainKcv!, custodian!, share.Index, metadata.Threshold, metadata.Count, createdAt, kdf, salt, nonce, ciphertext, tag, source: null);

            DeriveKey(passphraseBytes, kdf, salt, key);
            using var gcm = new AesGcm(key, TagLength);
            // The file owns these buffers and shows them to no one before it is returned.
            gcm.Encrypt(nonce, share.Value, ciphertext, tag, file.AssociatedData());
            return file;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(passphraseBytes);
            CryptographicOperations.ZeroMemory(key);
        }
    }

    /// <summary>Decrypts the share with the custodian's passphrase.</summary>
    /// <returns>The share (index <see cref="Index"/>); the caller disposes it.</returns>
    /// <remarks>The passphrase's bytes, the derived key and the plaintext buffer are zeroed before returning.</remarks>
    /// <exception cref="CeremonyException">
    /// <see cref="CeremonyError.WrongPassphrase"/> when the tag does not verify: the passphrase is
    /// wrong, or the file was altered and its checksum recomputed (the two cannot be told apart).
    /// </exception>
    public Share Unprotect(ReadOnlySpan<char> passphrase)
    {
        var passphraseBytes = Passphrases.Encode(passphrase, enforcePolicy: false);
        var key = new byte[Argon2idParameters.KeyLength];
        var plaintext = new byte[_ciphertext.Length];
        try
        {
            DeriveKey(passphraseBytes, Kdf, _salt, key);
            using var gcm = new AesGcm(key, TagLength);
            try
            {
                gcm.Decrypt(_nonce, _ciphertext, _tag, plaintext, AssociatedData());
            }
            catch (AuthenticationTagMismatchException)
            {
                throw new CeremonyException(
                    CeremonyError.WrongPassphrase,
                    $"wrong passphrase for {Describe()} (or the file was altered and its checksum recomputed)");
            }
            return new Share(Index, plaintext);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(passphraseBytes);
            CryptographicOperations.ZeroMemory(key);
            CryptographicOperations.ZeroMemory(plaintext);
        }
    }

    /// <summary>
    /// The file's bytes: UTF-8 JSON, LF line ends, ending with the checksum line. The kms CLI
    /// writes them owner-only (0600) and crash-safe (Kms.Core's <c>DurableFile</c>), never
    /// over an existing file.
    /// </summary>
    public byte[] ToBytes()
    {
        var buffer = new MemoryStream();
        using (var writer = new System.Text.Json.Utf8JsonWriter(buffer, new System.Text.Json.JsonWriterOptions
        {
            Indented = true,
            IndentSize = 2,
            NewLine = "\n",
            // Custodian names stay readable (é, not \u00E9); the file is never embedded in HTML.
            Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        }))
        {
            writer.WriteStartObject();
            writer.WriteString("format", FormatVersion);
            writer.WriteString("domainId", DomainId);
            writer.WriteString("domainKcv", DomainKcv);
            writer.WriteString("custodian", Custodian);
            writer.WriteNumber("index", Index);
            writer.WriteNumber("threshold", Threshold);
            writer.WriteNumber("count", Count);
            writer.WriteNumber("shareLength", ShareLength);
            writer.WriteString("createdAt", CreatedAt.UtcDateTime.ToString(TimeFormat, CultureInfo.InvariantCulture));
            writer.WriteStartObject("kdf");
            writer.WriteString("algorithm", KdfAlgorithm);
            writer.WriteNumber("version", Argon2idParameters.Version);
            writer.WriteNumber("memoryKib", Kdf.MemoryKib);
            writer.WriteNumber("iterations", Kdf.Iterations);
            writer.WriteNumber("parallelism", Kdf.Parallelism);
            writer.WriteString("salt", Convert.ToHexStringLower(_salt));
            writer.WriteEndObject();
            writer.WriteStartObject("aead");
            writer.WriteString("algorithm", AeadAlgorithm);
            writer.WriteString("nonce", Convert.ToHexStringLower(_nonce));
            writer.WriteString("ciphertext", Convert.ToHexStringLower(_ciphertext));
            writer.WriteString("tag", Convert.ToHexStringLower(_tag));
            writer.WriteEndObject();
            writer.WriteString("fingerprint", Fingerprint);
            writer.WriteString("checksum", new string('0', 64));
            writer.WriteEndObject();
        }
        buffer.WriteByte((byte)'\n');

        var bytes = buffer.ToArray();
        var prefixLength = bytes.Length - ChecksumTrailerLength;
        var checksum = Encoding.ASCII.GetBytes(Convert.ToHexStringLower(SHA256.HashData(bytes.AsSpan(0, prefixLength))));
        checksum.CopyTo(bytes, prefixLength + ChecksumLineStart.Length);
        return bytes;
    }

    /// <summary>Reads and validates a share file (size, checksum, structure, bounds, fingerprint); does not decrypt it.</summary>
    /// <remarks>
    /// Looked at before it is opened: a directory, and an empty file or no regular file at all
    /// (a FIFO or a device, whose size is 0; also behind a symbolic link) are refused without
    /// being opened — open(2) of a FIFO waits for a writer, and a device reads without end. At
    /// most <see cref="MaxFileSize"/> + 1 bytes are read, so a file that grew meanwhile is
    /// refused by its size too.
    /// </remarks>
    /// <exception cref="CeremonyException">Unreadable, no regular file, corrupted, of another version, or with refused KDF parameters.</exception>
    public static ShareFile Read(string path, KdfPolicy policy = KdfPolicy.Production)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        byte[] content;
        try
        {
            if (Directory.Exists(path))
            {
                throw new CeremonyException(CeremonyError.Io, $"cannot read share file {path}: it is a directory");
            }

            var link = new FileInfo(path);
            if ((link.ResolveLinkTarget(returnFinalTarget: true) ?? link) is FileInfo { Exists: true } file)
            {
                if (file.Length == 0)
                {
                    throw new CeremonyException(CeremonyError.Io, $"cannot read share file {path}: it is empty, or no regular file (a FIFO or a device: not opened)");
                }
                if (file.Length > MaxFileSize)
                {
                    throw new CeremonyException(CeremonyError.Corrupted, $"share file {path} is corrupted ({file.Length} bytes; a share file has at most {MaxFileSize})");
                }
            }

            // A missing file (or link target) fails here, as FileNotFoundException.
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
            var buffer = new byte[MaxFileSize + 1];
            var length = 0;
            int read;
            while (length < buffer.Length && (read = stream.Read(buffer, length, buffer.Length - length)) > 0)
            {
                length += read;
            }
            if (length > MaxFileSize)
            {
                throw new CeremonyException(CeremonyError.Corrupted, $"share file {path} is corrupted (more than {MaxFileSize} bytes; a share file has at most {MaxFileSize})");
            }
            content = buffer[..length];
        }
        catch (UnauthorizedAccessException e)
        {
            // .NET's "Access to the path … is denied." said neither what the file is nor what is missing.
            throw new CeremonyException(CeremonyError.Io, $"cannot read share file {path}: permission denied (the user running this needs read permission on the file and search permission on its directories)", e);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new CeremonyException(CeremonyError.Io, $"cannot read share file {path}: it does not exist", e);
        }
        catch (IOException e)
        {
            throw new CeremonyException(CeremonyError.Io, $"cannot read share file {path}: {e.Message}", e);
        }
        return Parse(content, path, policy);
    }

    /// <summary>Parses and validates a share file's bytes, as <see cref="Read"/> does.</summary>
    /// <param name="content">The file's bytes.</param>
    /// <param name="source">How to name the file in messages (its path), or null.</param>
    /// <param name="policy">Whether KDF parameters below the production floor are allowed (tests only).</param>
    /// <exception cref="CeremonyException">Corrupted, of another version, or with refused KDF parameters.</exception>
    public static ShareFile Parse(ReadOnlySpan<byte> content, string? source, KdfPolicy policy = KdfPolicy.Production)
    {
        var name = source is null ? "share file" : $"share file {source}";
        if (content.Length > MaxFileSize)
        {
            throw new CeremonyException(CeremonyError.Corrupted, $"{name} is corrupted ({content.Length} bytes; a share file has at most {MaxFileSize})");
        }

        // The checksum first: any damaged byte is reported as corruption, before anything else is believed.
        var checksumProblem = CheckChecksum(content);
        if (checksumProblem is not null)
        {
            if (ForeignVersion(content) is { } version)
            {
                throw Unsupported(name, version);
            }
            throw new CeremonyException(CeremonyError.Corrupted, $"{name} is corrupted ({checksumProblem})");
        }

        try
        {
            using var document = System.Text.Json.JsonDocument.Parse(content.ToArray(), new System.Text.Json.JsonDocumentOptions { MaxDepth = 4 });
            var root = document.RootElement;
            var format = root.ValueKind == System.Text.Json.JsonValueKind.Object && root.TryGetProperty("format", out var f) ? f.ToString() : null;
            if (format != FormatVersion)
            {
                throw Unsupported(name, format ?? "(none)");
            }
            var top = Members(root, TopLevelNames);
            var kdfMembers = Members(top["kdf"], KdfNames);
            var aeadMembers = Members(top["aead"], AeadNames);

            var domainId = Text(top, "domainId");
            var domainKcv = Text(top, "domainKcv");
            var custodian = Text(top, "custodian");
            var index = Number(top, "index");
            var threshold = Number(top, "threshold");
            var count = Number(top, "count");
            var shareLength = Number(top, "shareLength");
            var createdAtText = Text(top, "createdAt");
            var problem = ShareMetadata.CheckDomainId(domainId)
                ?? ShareMetadata.CheckCustodian(custodian)
                ?? (KeyCheckValue.Normalize(domainKcv) != domainKcv ? "domainKcv is not 6 upper-case hex digits" : null)
                ?? ShareMetadata.CheckSplit(threshold, count)
                ?? (index < 1 || index > count ? $"index {index} is outside 1..{count}" : null)
                ?? (shareLength is < 1 or > Shamir.MaxSecretLength ? $"shareLength {shareLength} is outside 1..{Shamir.MaxSecretLength}" : null)
                ?? (Text(kdfMembers, "algorithm") != KdfAlgorithm ? $"kdf.algorithm is not {KdfAlgorithm}" : null)
                ?? (Number(kdfMembers, "version") != Argon2idParameters.Version ? $"kdf.version is not {Argon2idParameters.Version}" : null)
                ?? (Text(aeadMembers, "algorithm") != AeadAlgorithm ? $"aead.algorithm is not {AeadAlgorithm}" : null);
            if (problem is not null)
            {
                throw Invalid(name, problem);
            }
            if (!DateTimeOffset.TryParseExact(createdAtText, TimeFormat, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out var createdAt))
            {
                throw Invalid(name, $"createdAt is not a UTC time of the form {TimeFormat}");
            }

            var kdf = new Argon2idParameters(Number(kdfMembers, "memoryKib"), Number(kdfMembers, "iterations"), Number(kdfMembers, "parallelism"));
            if (kdf.Check(policy) is { } kdfProblem)
            {
                throw new CeremonyException(CeremonyError.KdfParametersRefused, $"{name} (share {index}, custodian '{CustodianName.Printable(custodian)}') is refused: {kdfProblem}");
            }
            var salt = Hex(kdfMembers, "salt", name);
            var nonce = Hex(aeadMembers, "nonce", name);
            var ciphertext = Hex(aeadMembers, "ciphertext", name);
            var tag = Hex(aeadMembers, "tag", name);
            if (salt.Length is < Argon2idParameters.SaltLength or > Argon2idParameters.MaxSaltLength)
            {
                throw Invalid(name, $"kdf.salt has {salt.Length} bytes; {Argon2idParameters.SaltLength}..{Argon2idParameters.MaxSaltLength} are allowed");
            }
            if (nonce.Length != NonceLength || tag.Length != TagLength || ciphertext.Length != shareLength)
            {
                throw Invalid(name, $"aead fields have the wrong lengths (nonce {nonce.Length}, tag {tag.Length}, ciphertext {ciphertext.Length} for a share of {shareLength} bytes)");
            }

            var file = new ShareFile(domainId, domainKcv, custodian, index, threshold, count, createdAt, kdf, salt, nonce, ciphertext, tag, source);
            if (Text(top, "fingerprint") != file.Fingerprint)
            {
                throw new CeremonyException(CeremonyError.Corrupted, $"{name} is corrupted (its fingerprint does not match its content: the file was altered and its checksum recomputed)");
            }
            return file;
        }
        catch (System.Text.Json.JsonException)
        {
            throw Invalid(name, "not well-formed JSON");
        }
        catch (InvalidOperationException e)
        {
            // A member of the wrong JSON type (a number where a string belongs, and so on).
            throw Invalid(name, e.Message);
        }
    }

    /// <summary>Who and what this file is, without anything secret: for messages and listings.</summary>
    public override string ToString() =>
        $"share {Index} of {Count} (threshold {Threshold}) for custodian '{CustodianName.Printable(Custodian)}', domain '{DomainId}' (KCV {DomainKcv}), fingerprint {Fingerprint}";

    internal string Describe() =>
        Source is null ? $"share {Index} (custodian '{CustodianName.Printable(Custodian)}')" : $"share {Index} (custodian '{CustodianName.Printable(Custodian)}', file {Source})";

    /// <summary>
    /// The associated data of the GCM encryption: every public field, length-prefixed, in a fixed
    /// order (docs/share-format.md), so that editing any of them makes decryption fail.
    /// </summary>
    internal byte[] AssociatedData()
    {
        var domainId = Encoding.UTF8.GetBytes(DomainId);
        var custodian = Encoding.UTF8.GetBytes(Custodian);
        var buffer = new MemoryStream();
        buffer.Write(Encoding.ASCII.GetBytes(FormatVersion));
        WriteU16(buffer, domainId.Length);
        buffer.Write(domainId);
        buffer.Write(Convert.FromHexString(DomainKcv));
        WriteU16(buffer, custodian.Length);
        buffer.Write(custodian);
        buffer.WriteByte((byte)Index);
        buffer.WriteByte((byte)Threshold);
        buffer.WriteByte((byte)Count);
        buffer.WriteByte((byte)ShareLength);
        Span<byte> number = stackalloc byte[8];
        BinaryPrimitives.WriteInt64BigEndian(number, CreatedAt.ToUnixTimeSeconds());
        buffer.Write(number);
        foreach (var value in new[] { Argon2idParameters.Version, Kdf.MemoryKib, Kdf.Iterations, Kdf.Parallelism })
        {
            BinaryPrimitives.WriteUInt32BigEndian(number, (uint)value);
            buffer.Write(number[..4]);
        }
        buffer.WriteByte((byte)_salt.Length);
        buffer.Write(_salt);
        buffer.Write(_nonce);
        return buffer.ToArray();
    }

    private byte[] ComputeFingerprint()
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(FingerprintLabel);
        hash.AppendData(AssociatedData());
        hash.AppendData(_ciphertext);
        hash.AppendData(_tag);
        return hash.GetHashAndReset();
    }

    internal static void DeriveKey(byte[] passphrase, Argon2idParameters kdf, byte[] salt, byte[] key)
    {
        var parameters = new Argon2Parameters.Builder(Argon2Parameters.Argon2id)
            .WithVersion(Argon2Parameters.Version13)
            .WithMemoryAsKB(kdf.MemoryKib)
            .WithIterations(kdf.Iterations)
            .WithParallelism(kdf.Parallelism)
            .WithSalt(salt)
            .Build();
        var generator = new Argon2BytesGenerator();
        generator.Init(parameters);
        generator.GenerateBytes(passphrase, key);
    }

    private static string? CheckChecksum(ReadOnlySpan<byte> content)
    {
        if (content.Length < ChecksumTrailerLength)
        {
            return "it is too short to be a share file";
        }
        var prefix = content[..^ChecksumTrailerLength];
        var trailer = content[^ChecksumTrailerLength..];
        if (!trailer.StartsWith(ChecksumLineStart) || !trailer.EndsWith(ChecksumLineEnd))
        {
            return "it does not end with its checksum line: cut short, reformatted or not a share file";
        }
        var recorded = trailer.Slice(ChecksumLineStart.Length, 64);
        Span<byte> actual = stackalloc byte[64];
        Encoding.ASCII.GetBytes(Convert.ToHexStringLower(SHA256.HashData(prefix)), actual);
        return recorded.SequenceEqual(actual) ? null : "checksum mismatch";
    }

    // The version of a damaged or unknown file, when it plainly names another kms-share version.
    private static string? ForeignVersion(ReadOnlySpan<byte> content)
    {
        try
        {
            using var document = System.Text.Json.JsonDocument.Parse(content.ToArray());
            if (document.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object
                && document.RootElement.TryGetProperty("format", out var format)
                && format.ValueKind == System.Text.Json.JsonValueKind.String
                && format.GetString() is { } version
                && version.StartsWith("kms-share-v", StringComparison.Ordinal)
                && version.Length > "kms-share-v".Length
                && version["kms-share-v".Length..].All(char.IsAsciiDigit)
                && version != FormatVersion)
            {
                return version;
            }
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException)
        {
            // Not JSON, or not UTF-8: corruption, not a version question.
        }
        return null;
    }

    private static Dictionary<string, System.Text.Json.JsonElement> Members(System.Text.Json.JsonElement element, string[] names)
    {
        if (element.ValueKind != System.Text.Json.JsonValueKind.Object)
        {
            throw new InvalidOperationException("an object was expected");
        }
        // Exactly these members, in this order: no unknown, missing or duplicate member slips through.
        var members = element.EnumerateObject().ToList();
        if (!members.Select(m => m.Name).SequenceEqual(names))
        {
            throw new InvalidOperationException($"members must be exactly {string.Join(", ", names)}, in that order");
        }
        return members.ToDictionary(m => m.Name, m => m.Value);
    }

    private static string Text(Dictionary<string, System.Text.Json.JsonElement> members, string name) =>
        members[name].GetString() ?? throw new InvalidOperationException($"{name} must be a string");

    private static int Number(Dictionary<string, System.Text.Json.JsonElement> members, string name) =>
        members[name].ValueKind == System.Text.Json.JsonValueKind.Number && members[name].TryGetInt32(out var value)
            ? value
            : throw new InvalidOperationException($"{name} must be an integer");

    private static byte[] Hex(Dictionary<string, System.Text.Json.JsonElement> members, string name, string file)
    {
        var text = Text(members, name);
        if (text.Length % 2 != 0 || !text.All(c => char.IsAsciiDigit(c) || c is >= 'a' and <= 'f'))
        {
            throw Invalid(file, $"{name} is not lower-case hex");
        }
        return Convert.FromHexString(text);
    }

    private static void WriteU16(MemoryStream buffer, int value)
    {
        buffer.WriteByte((byte)(value >> 8));
        buffer.WriteByte((byte)value);
    }

    private static CeremonyException Invalid(string name, string problem) =>
        new(CeremonyError.Corrupted, $"{name} is corrupted or was not written by kms ({problem})");

    private static CeremonyException Unsupported(string name, string version) =>
        new(CeremonyError.UnsupportedVersion, $"{name} has the unsupported share format version '{version}'; this kms reads {FormatVersion}");
}
