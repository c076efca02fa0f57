using Kms.Server.Audit;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>Where a SIEM stream file left off, read back at start.</summary>
public sealed class AuditStreamTests : IDisposable
{
    private readonly string _path = Scratch.NewPath("kms-stream-", ".jsonl");

    public void Dispose() => File.Delete(_path);

    [Fact]
    public void LastStreamedSequence_MissingOrEmptyFile_Null()
    {
        Assert.Null(AuditWorker.LastStreamedSequence(_path));
        File.WriteAllText(_path, "");
        Assert.Null(AuditWorker.LastStreamedSequence(_path));
    }

    [Fact]
    public void LastStreamedSequence_TheLastEventLine_ACheckpointLineAfterItIgnored()
    {
        File.WriteAllText(_path, Line(1) + "\n" + Line(2) + "\n" + "{\"checkpoint\":{\"seq\":2},\"signature\":\"AA==\"}\n");
        Assert.Equal(2, AuditWorker.LastStreamedSequence(_path));
    }

    [Fact]
    public void LastStreamedSequence_HalfWrittenLastLine_CutOff_ThePreviousLineCounts()
    {
        var whole = Line(1) + "\n" + Line(2) + "\n";
        File.WriteAllText(_path, whole + Line(3)[..40]);

        Assert.Equal(2, AuditWorker.LastStreamedSequence(_path));
        Assert.Equal(whole, File.ReadAllText(_path));
    }

    [Fact]
    public void LastStreamedSequence_APipeOrAFifo_NullWithoutBlockingOrThrowing()
    {
        // /dev/stdout under a container runtime is a pipe; a SIEM agent may read a FIFO.
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", _path))
        {
            mkfifo.WaitForExit();
            Assert.Equal(0, mkfifo.ExitCode);
        }

        Assert.Null(AuditWorker.LastStreamedSequence(_path));
    }

    [Fact]
    public void LastStreamedSequence_ForeignJsonLines_SkippedForTheLastEventLine()
    {
        File.WriteAllText(_path, Line(7) + "\n[1,2]\n{\"event\":\"not an object\"}\n");
        Assert.Equal(7, AuditWorker.LastStreamedSequence(_path));
    }

    private static string Line(long sequence) =>
        $"{{\"event\":{{\"v\":1,\"seq\":{sequence},\"prev\":\"00\",\"time\":\"2026-12-03T10:00:00.000Z\",\"principal\":\"token:app\"}},\"hash\":\"ab\"}}";
}
