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

/// <summary>Runs alone (after the parallel tests): it counts the message ids the whole process draws.</summary>
[CollectionDefinition(nameof(EncryptorMessageIdTests), DisableParallelization = true)]
public sealed class EncryptorMessageIdCollection;

/// <summary>Every way of encrypting takes its message id from <see cref="KernelRandom"/>.</summary>
[Collection(nameof(EncryptorMessageIdTests))]
public sealed class EncryptorMessageIdTests
{
    [Fact]
    public async Task EveryEncryptionPath_TakesItsMessageIdFromKernelRandom()
    {
        // Distinct ids alone do not show where they came from: .NET's generator gives distinct ids
        // too, until a VM restored from one snapshot replays its state. So each message must have
        // drawn its id through KernelRandom.MessageId (before, an encryptor drawing from
        // RandomNumberGenerator passed every other test).
        using var encryptor = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions
        {
            KeyNames = ["tenants/t/keys/k"],
            DataKeyCache = new Kms.Client.Caching.DataKeyCacheOptions { MaxAge = TimeSpan.FromHours(1) },
        });
        var plaintext = new byte[100];
        var before = KernelRandom.MessageIdsDrawn;

        await encryptor.EncryptAsync(plaintext);
        Assert.Equal(before + 1, KernelRandom.MessageIdsDrawn);

        var destination = new byte[encryptor.GetMaxMessageLength(plaintext.Length)];
        await encryptor.EncryptAsync(plaintext, destination);
        Assert.Equal(before + 2, KernelRandom.MessageIdsDrawn);

        using (var output = new MemoryStream())
        {
            await encryptor.EncryptAsync(new MemoryStream(plaintext), output);
        }

        Assert.Equal(before + 3, KernelRandom.MessageIdsDrawn);
    }
}
