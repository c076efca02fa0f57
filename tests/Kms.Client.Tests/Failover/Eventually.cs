namespace Kms.Client.Tests.Failover;

/// <summary>Waits (in real time) for something another task does; 60 s is a hang guard, not a bound on how fast.</summary>
internal static class Eventually
{
    public static async Task TrueAsync(Func<bool> condition, string what)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, "hang guard: not within 60 s: " + what);
            await Task.Delay(5);
        }
    }

    /// <summary>Gives other tasks a moment, then checks that <paramref name="condition"/> still holds.</summary>
    public static async Task StillAsync(Func<bool> condition, string what)
    {
        await Task.Delay(100);
        Assert.True(condition(), what);
    }
}
