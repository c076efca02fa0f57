using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>Message ids come from the kernel's generator, not from random state in the process (see <see cref="KernelRandom"/>).</summary>
public sealed class KernelRandomTests
{
    [Fact]
    public void OnLinux_MessageIdsFromGetrandom_EachFresh()
    {
        Assert.True(OperatingSystem.IsLinux(), "these tests run on Linux");

        var ids = Enumerable.Range(0, 10_000).Select(_ => Convert.ToHexString(KernelRandom.MessageId())).ToHashSet();

        // Still from the kernel after use: no call fell back to OpenSSL's in-process generator.
        Assert.True(KernelRandom.FromKernel, "message ids must come from getrandom(2), not OpenSSL's in-process generator");
        Assert.Equal(10_000, ids.Count);
        Assert.All(ids, id => Assert.Equal(2 * EnvelopeFormat.MessageIdLength, id.Length));
    }

    [Fact]
    public void Fill_MoreThanOneKernelCallReturns_EveryPartWritten()
    {
        // getrandom(2) returns at most 32 MiB − 1 bytes per call: the rest needs the loop.
        var buffer = new byte[(32 << 20) + 4096];

        KernelRandom.Fill(buffer);

        for (var offset = 0; offset < buffer.Length; offset += 4096)
        {
            Assert.True(buffer.AsSpan(offset, 4096).ContainsAnyExcept((byte)0), $"4 KiB at {offset} left zero");
        }
    }

    [Fact]
    public async Task Messages_UnderOneCachedDataKey_CarryDistinctIds()
    {
        using var encryptor = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions
        {
            KeyNames = ["tenants/t/keys/k"],
            DataKeyCache = new Kms.Client.Caching.DataKeyCacheOptions { MaxAge = TimeSpan.FromHours(1) },
        });
        var ids = new HashSet<string>();
        for (var i = 0; i < 200; i++)
        {
            var message = await encryptor.EncryptAsync(new byte[1]);
            Assert.True(ids.Add(Convert.ToHexString(message.AsSpan(7, EnvelopeFormat.MessageIdLength))));
        }

        Assert.Equal(1, encryptor.CacheStatistics!.EncryptMisses); // one data key for all 200
    }
}
