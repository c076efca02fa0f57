using System.Text;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// The search for a token by label when another token of the same HSM cannot be read: SoftHSM
/// answers <c>C_GetTokenInfo</c> with CKR_GENERAL_ERROR for a token whose file is being written
/// (tests creating tokens in parallel made start-ups fail this way) or is damaged. Here a token's
/// file is damaged on purpose and its bytes put back after the test. Whether this process's
/// SoftHSM reads the token again then depends on what else touched it meanwhile, so no other test
/// uses a damaged token, and the other tests must (and do) find theirs beside an unreadable slot.
/// </summary>
public sealed class SlotListTests
{
    [Fact]
    public async Task AnotherTokenUnreadable_StartInspectAndInitialiseStillWork()
    {
        var mine = SoftHsm.CreateToken();
        var other = SoftHsm.CreateToken();
        using (Damage(other))
        {
            await (await Task.Run(() => Pkcs11Hsm.Open(mine.Options(), NullLogger.Instance))).DisposeAsync();
            Assert.Equal(mine.Label, TokenInspection.Inspect(mine.Options()).Label);
            var created = SoftHsm.CreateToken();
            Assert.Equal(created.Label, TokenInspection.Inspect(created.Options()).Label);
        }
    }

    [Fact]
    public void TokenUnreadable_NotFound_NamesTheUnreadableSlot()
    {
        var token = SoftHsm.CreateToken();
        using (Damage(token))
        {
            var e = Assert.Throws<HsmConfigurationException>(() => TokenInspection.Inspect(token.Options()));
            Assert.Contains($"no token labelled '{token.Label}'", e.Message, StringComparison.Ordinal);
            Assert.Contains("could not be read", e.Message, StringComparison.Ordinal);
            Assert.Contains("CKR_GENERAL_ERROR", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task SlotListsReadAtOnce_WhileTokensAreCreated_NoCrash_EveryTokenFound()
    {
        // SoftHSM adds an empty slot when asked for the count and none is free: two asks at once
        // added the same slot id and aborted the process (a CI run's test host). Bounded: four
        // readers of 50 lists each, beside four token creations.
        var existing = SoftHsm.CreateToken();
        var readers = Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
        {
            for (var i = 0; i < 50; i++)
            {
                Assert.Equal(existing.Label, TokenInspection.Inspect(existing.Options()).Label);
            }
        })).ToList();
        var created = await Task.Run(() => Enumerable.Range(0, 4).Select(_ => SoftHsm.CreateToken()).ToList());
        await Task.WhenAll(readers);
        Assert.All(created, t => Assert.Equal(t.Label, TokenInspection.Inspect(t.Options()).Label));
    }

    // Overwrites the token's own file (token.object, which holds its label) with garbage until disposed.
    private static Restore Damage(TestToken token)
    {
        var tokens = Path.Combine(Path.GetDirectoryName(SoftHsm.ConfigPath)!, "tokens");
        var label = Encoding.UTF8.GetBytes(token.Label);
        var file = Directory.GetDirectories(tokens)
            .Select(d => Path.Combine(d, "token.object"))
            .Single(f => File.ReadAllBytes(f).AsSpan().IndexOf(label) >= 0);
        var original = File.ReadAllBytes(file);
        File.WriteAllBytes(file, new byte[5]);
        return new Restore(file, original);
    }

    private sealed class Restore(string file, byte[] original) : IDisposable
    {
        public void Dispose() => File.WriteAllBytes(file, original);
    }
}
