namespace Kms.Client.Tests.Failover;

/// <summary>Waits (in real time, briefly) for something another task does.</summary>
internal static class Eventually
{
    public static async Task TrueAsync(Func<bool> condition, string what)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, "timed out waiting until " + what);
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
