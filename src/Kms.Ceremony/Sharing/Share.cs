using System.Security.Cryptography;

namespace Kms.Ceremony.Sharing;

/// <summary>
/// One Shamir share: its index x (1..255) and the polynomial values at x, one byte per secret byte.
/// </summary>
/// <remarks>
/// The value is secret: it is zeroed on <see cref="Dispose"/>, reading it afterwards throws, and
/// <see cref="ToString"/> shows only the index. The index is public (it is in the share file).
/// </remarks>
public sealed class Share : IDisposable
{
    private byte[]? _value;

    /// <summary>A share with a copy of <paramref name="value"/>.</summary>
    /// <exception cref="CeremonyException">Index outside 1..255, or a value of 0 or more than <see cref="Shamir.MaxSecretLength"/> bytes.</exception>
    public Share(int index, ReadOnlySpan<byte> value)
    {
        if (index is < 1 or > Shamir.MaxShares)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, $"share index {index} is outside 1..{Shamir.MaxShares}");
        }
        if (value.Length is < 1 or > Shamir.MaxSecretLength)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, $"share {index} has {value.Length} bytes; a share has 1..{Shamir.MaxSecretLength}");
        }
        Index = index;
        _value = value.ToArray();
    }

    /// <summary>The x coordinate, 1..255 (never 0: f(0) is the secret).</summary>
    public int Index { get; }

    /// <summary>The share's bytes, f_i(x) for each secret byte i.</summary>
    /// <exception cref="ObjectDisposedException">After dispose.</exception>
    public ReadOnlySpan<byte> Value => _value ?? throw new ObjectDisposedException(nameof(Share));

    /// <summary>Length in bytes (the secret's length).</summary>
    public int Length => Value.Length;

    /// <summary>Zeroes the value.</summary>
    public void Dispose()
    {
        var value = Interlocked.Exchange(ref _value, null);
        if (value is not null)
        {
            CryptographicOperations.ZeroMemory(value);
        }
    }

    /// <summary>The index only, never the value.</summary>
    public override string ToString() => $"share {Index} (***)";
}
