using System.Security.Cryptography;

namespace Kms.Ceremony.Tests;

/// <summary>A "random" source that hands out given bytes, once, and fails if asked for another amount.</summary>
internal sealed class FixedRandom(byte[] bytes) : RandomNumberGenerator
{
    public int Calls { get; private set; }

    public override void GetBytes(byte[] data) => GetBytes(data.AsSpan());

    public override void GetBytes(Span<byte> data)
    {
        Calls++;
        Assert.Equal(bytes.Length, data.Length);
        bytes.CopyTo(data);
    }
}
