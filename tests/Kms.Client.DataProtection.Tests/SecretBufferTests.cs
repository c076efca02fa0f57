namespace Kms.Client.DataProtection.Tests;

/// <summary>The buffer the key element is serialized into before KMS Encrypt.</summary>
public sealed class SecretBufferTests
{
    [Fact]
    public void Dispose_ZeroesWhatWasWritten()
    {
        var buffer = new SecretBuffer(16);
        buffer.Write([1, 2, 3, 4, 5]);
        var written = buffer.Written;
        Assert.Equal([1, 2, 3, 4, 5], written.ToArray());

        buffer.Dispose();

        Assert.All(written.ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void Write_PastTheCapacity_StoresNothingMore_CountsIt_Overflowed()
    {
        using var buffer = new SecretBuffer(4);
        buffer.Write([1, 2, 3]);
        buffer.Write([4, 5]);

        Assert.True(buffer.Overflowed);
        Assert.Equal(5, buffer.Length);
        Assert.Equal([1, 2, 3], buffer.Written.ToArray());
    }
}
