using System.Text;
using Kms.Core.Files;
using Kms.Server.Audit;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The checkpoints a node signed that another writer's lock kept out of its checkpoints.jsonl
/// (<see cref="PendingCheckpoints"/>): they wait in memory and are appended once the lock is free,
/// each once and in order.
/// </summary>
public sealed class PendingCheckpointsTests
{
    private static PendingCheckpoints For(string path) =>
        new((lines, wait, token) => DurableFile.Append(path, Encoding.UTF8.GetBytes(lines + "\n"), DurableFile.OwnerOnly, wait, token));

    [Fact]
    public void Locked_TheCheckpointsWait_ThenAreAppendedOnceEach_InOrder()
    {
        var path = Scratch.NewPath("kms-checkpoints-", ".jsonl");
        File.WriteAllText(path, "{\"n\":0}\n");
        var pending = For(path);
        using (var holder = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            DurableFile.EndWithWholeLine(holder); // another writer's lock
            for (var i = 1; i <= 3; i++)
            {
                Assert.Throws<FileLockedException>(() => pending.Add(i, $"{{\"n\":{i}}}"));
            }

            Assert.Throws<FileLockedException>(() => pending.Retry(TimeSpan.Zero, default));
            Assert.Equal([1L, 2L, 3L], pending.Sequences);
            Assert.Equal("{\"n\":0}\n", File.ReadAllText(path));
        }

        Assert.Equal(new PendingCheckpoints.Appended(3, 1, 3, 0), pending.Retry(TimeSpan.Zero, default));
        Assert.Empty(pending.Sequences);
        Assert.Equal(default, pending.Retry(TimeSpan.Zero, default));
        Assert.Equal(new PendingCheckpoints.Appended(1, 4, 4, 0), pending.Add(4, "{\"n\":4}"));
        Assert.Equal(["{\"n\":0}", "{\"n\":1}", "{\"n\":2}", "{\"n\":3}", "{\"n\":4}"], File.ReadAllLines(path));
    }

    [Fact]
    public void MoreThanMaxPending_TheOldestAreDropped_AndCounted()
    {
        var path = Scratch.NewPath("kms-checkpoints-", ".jsonl");
        File.WriteAllText(path, "");
        var pending = For(path);
        using (var holder = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            DurableFile.EndWithWholeLine(holder);
            for (var i = 1; i <= PendingCheckpoints.MaxPending + 2; i++)
            {
                Assert.Throws<FileLockedException>(() => pending.Add(i, $"{{\"n\":{i}}}"));
            }
        }

        Assert.Equal(new PendingCheckpoints.Appended(PendingCheckpoints.MaxPending, 3, PendingCheckpoints.MaxPending + 2, 2), pending.Retry(TimeSpan.Zero, default));
        Assert.Equal(PendingCheckpoints.MaxPending, File.ReadAllLines(path).Length);
    }
}
