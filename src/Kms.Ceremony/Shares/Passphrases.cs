using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Kms.Ceremony.Shares;

/// <summary>The passphrase policy, and the one way a passphrase becomes bytes for Argon2id.</summary>
/// <remarks>
/// The passphrase is NFC-normalised (so the same text typed on two systems that compose accents
/// differently gives the same key) and encoded as strict UTF-8; see <see cref="CanNormalize"/>
/// for processes without ICU. Every intermediate buffer is
/// zeroed; the passphrase never appears in an exception message.
/// </remarks>
public static class Passphrases
{
    /// <summary>Fewest characters (Unicode scalar values, after NFC) of a new share file's passphrase.</summary>
    public const int MinLength = 12;

    /// <summary>Most characters of any passphrase.</summary>
    public const int MaxLength = 1024;

    /// <summary>The reason <paramref name="passphrase"/> fails the policy for a new share file, or null when it passes.</summary>
    /// <remarks>Non-empty, <see cref="MinLength"/>..<see cref="MaxLength"/> characters, valid Unicode, no control characters (a pasted newline would make it untypeable).</remarks>
    public static string? Check(ReadOnlySpan<char> passphrase)
    {
        try
        {
            var bytes = Encode(passphrase, enforcePolicy: true);
            CryptographicOperations.ZeroMemory(bytes);
            return null;
        }
        catch (CeremonyException e)
        {
            return e.Message;
        }
    }

    /// <summary>NFC-normalised strict UTF-8 of <paramref name="passphrase"/>; the caller zeroes the result.</summary>
    internal static byte[] Encode(ReadOnlySpan<char> passphrase, bool enforcePolicy)
    {
        if (passphrase.IsEmpty)
        {
            throw Refused("the passphrase is empty");
        }
        if (passphrase.Length > MaxLength * 2)
        {
            throw Refused($"the passphrase is longer than {MaxLength} characters");
        }

        try
        {
            StrictUtf8.GetByteCount(passphrase);
        }
        catch (EncoderFallbackException)
        {
            throw Refused("the passphrase is not valid Unicode");
        }

        // NFC can grow a string up to three times.
        var normalized = new char[passphrase.Length * 3];
        try
        {
            int length;
            if (Ascii.IsValid(passphrase))
            {
                // ASCII is its own NFC form.
                passphrase.CopyTo(normalized);
                length = passphrase.Length;
            }
            else if (CanNormalize)
            {
                try
                {
                    if (!passphrase.TryNormalize(normalized, out length, NormalizationForm.FormC))
                    {
                        throw Refused("the passphrase cannot be normalised");
                    }
                }
                catch (ArgumentException)
                {
                    throw Refused("the passphrase is not valid Unicode");
                }
            }
            else if (enforcePolicy)
            {
                throw Refused(
                    "the passphrase has non-ASCII characters, and this process cannot normalise Unicode "
                    + "(it runs with InvariantGlobalization): choose an ASCII passphrase, or run with ICU");
            }
            else
            {
                // Unlocking without ICU: the passphrase as typed (keyboards type NFC as a rule).
                passphrase.CopyTo(normalized);
                length = passphrase.Length;
            }

            var text = normalized.AsSpan(0, length);
            var scalars = 0;
            // A lone surrogate enumerates as U+FFFD here; the strict encoder below refuses it.
            foreach (var rune in text.EnumerateRunes())
            {
                if (enforcePolicy && Rune.IsControl(rune))
                {
                    throw Refused("the passphrase contains a control character");
                }
                scalars++;
            }
            if (scalars > MaxLength)
            {
                throw Refused($"the passphrase is longer than {MaxLength} characters");
            }
            if (enforcePolicy && scalars < MinLength)
            {
                throw Refused($"the passphrase has {scalars} characters; at least {MinLength} are required");
            }

            try
            {
                var utf8 = new byte[StrictUtf8.GetByteCount(text)];
                StrictUtf8.GetBytes(text, utf8);
                return utf8;
            }
            catch (EncoderFallbackException)
            {
                throw Refused("the passphrase is not valid Unicode");
            }
        }
        finally
        {
            CryptographicOperations.ZeroMemory(MemoryMarshal.AsBytes(normalized.AsSpan()));
        }
    }

    /// <summary>
    /// Whether this process normalises Unicode. With <c>InvariantGlobalization</c> (no ICU),
    /// .NET's normalisation silently returns its input unchanged, so a non-ASCII passphrase
    /// could derive different keys on two machines; such passphrases are then refused for new
    /// share files (<see cref="Check"/> says so) and used as typed when unlocking.
    /// </summary>
    public static bool CanNormalize { get; } = "e\u0301".Normalize(NormalizationForm.FormC) == "\u00E9";

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private static CeremonyException Refused(string reason) => new(CeremonyError.InvalidArgument, reason);
}
