using System.Collections.Concurrent;
using Kms.Core.Files;
using Kms.Server.Audit;
using Kms.Server.Hosting;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>Where a SIEM stream file left off, read back at start; how the stream and checkpoints.jsonl are appended to.</summary>
public sealed class AuditStreamTests : IDisposable
{
    private readonly string _path = Scratch.NewPath("kms-stream-", ".jsonl");

    public void Dispose() => File.Delete(_path);

    [Fact]
    public void LastStreamedSequence_MissingOrEmptyFile_Null()
    {
        Assert.Null(AuditWorker.LastStreamed(_path)?.Sequence);
        File.WriteAllText(_path, "");
        Assert.Null(AuditWorker.LastStreamed(_path)?.Sequence);
    }

    [Fact]
    public void LastStreamedSequence_TheLastEventLine_ACheckpointLineAfterItIgnored()
    {
        File.WriteAllText(_path, Line(1) + "\n" + Line(2) + "\n" + "{\"checkpoint\":{\"seq\":2},\"signature\":\"AA==\"}\n");
        Assert.Equal(2, AuditWorker.LastStreamed(_path)?.Sequence);
    }

    [Fact]
    public void LastStreamedSequence_HalfWrittenLastLine_CutOff_ThePreviousLineCounts()
    {
        var whole = Line(1) + "\n" + Line(2) + "\n";
        File.WriteAllText(_path, whole + Line(3)[..40]);

        Assert.Equal(2, AuditWorker.LastStreamed(_path)?.Sequence);
        Assert.Equal(whole, File.ReadAllText(_path));
    }

    [Fact]
    public void LastStreamedSequence_AWholeLastEventLackingOnlyItsLineFeed_KeptAndEnded_ItCounts()
    {
        // As every append does: the event is whole, so it stays (with its line feed) and the
        // stream resumes after it; none is forwarded twice, none dropped.
        var whole = Line(1) + "\n" + Line(2) + "\n";
        File.WriteAllText(_path, whole + Line(3));

        Assert.Equal(3, AuditWorker.LastStreamed(_path)?.Sequence);
        Assert.Equal(whole + Line(3) + "\n", File.ReadAllText(_path));
    }

    // Blank lines (or any lines that are no event) past a MiB end the read-back: a file of them
    // is no stream this server wrote, read as one without an event (the stream starts at the
    // head) rather than to its start. Before, the event before them was found after reading
    // every one of them (a file of GBs of blank lines held the start as long).
    [Fact]
    public void LastStreamedSequence_AnEventBeforeMoreThanAMiBOfBlankLines_NotReadThatFar_AFewBlankLinesPassed()
    {
        File.WriteAllText(_path, Line(1) + "\n" + new string('\n', 1000));
        Assert.Equal(1, AuditWorker.LastStreamed(_path)?.Sequence);

        File.WriteAllText(_path, Line(1) + "\n" + new string('\n', DurableFile.MaxTornLine + 2));
        Assert.Null(AuditWorker.LastStreamed(_path)?.Sequence);
        Assert.Empty(AuditWorker.StreamedBackwards(_path));
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

        Assert.Null(AuditWorker.LastStreamed(_path)?.Sequence);
    }

    [Fact]
    public async Task StreamedBackwards_AFifo_EmptyWithoutBlocking()
    {
        // Read back when the database's chain no longer holds the stream's last event (a rollback
        // under the running node). A FIFO's reader is the SIEM agent; opened for reading only, the
        // server waited in open(2) for a writer, which only its own next append would have been:
        // the housekeeping pass (and the stop's final one) hung for good.
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", _path))
        {
            mkfifo.WaitForExit();
            Assert.Equal(0, mkfifo.ExitCode);
        }

        var read = Task.Run(() => AuditWorker.StreamedBackwards(_path).ToList());
        try
        {
            // Only a guard against the hang, which would otherwise outlast the test run.
            Assert.Empty(await read.WaitAsync(TimeSpan.FromSeconds(60)));
        }
        catch (TimeoutException)
        {
            // Let the reader stuck in open(2) go: a writer's open ends its wait.
            using (new FileStream(_path, FileMode.Open, FileAccess.Write))
            {
            }

            Assert.Fail("reading a FIFO back blocked in open(2), waiting for a writer");
        }
    }

    [Fact]
    public void LastStreamedSequence_ForeignJsonLines_SkippedForTheLastEventLine()
    {
        File.WriteAllText(_path, Line(7) + "\n[1,2]\n{\"event\":\"not an object\"}\n");
        Assert.Equal(7, AuditWorker.LastStreamed(_path)?.Sequence);
    }

    [Fact]
    public void LastStreamed_ARestartLineLast_ItsEventCounts_WithItsHash()
    {
        // The stream restarted after event 6 (the chain no longer held event 10), and no event
        // has followed yet: the next start goes on after 6, not after the old chain's 10.
        File.WriteAllText(_path, Line(9) + "\n" + Line(10) + "\n" + Kms.Core.Audit.AuditExport.Restart(new(new(6, "c6"), new(10, "ab"))) + "\n");
        Assert.Equal(new Kms.Core.Audit.AuditHead(6, "c6"), AuditWorker.LastStreamed(_path));
    }

    [Fact]
    public void StreamedBackwards_EveryEventAndRestartLine_NewestFirst_AcrossBlocks()
    {
        // Over 64 KiB (the block it reads back at a time), so lines straddle blocks.
        var lines = Enumerable.Range(1, 3000).Select(i => Line(i)).ToList();
        lines.Insert(1000, Kms.Core.Audit.AuditExport.Restart(new(new(400, "c400"), new(999, "ab"))));
        lines.Insert(10, "{\"checkpoint\":{\"seq\":10},\"signature\":\"AA==\"}");
        File.WriteAllText(_path, string.Join('\n', lines) + "\n");
        Assert.True(new FileInfo(_path).Length > 3 * 65536);

        var read = AuditWorker.StreamedBackwards(_path).ToList();

        var expected = Enumerable.Range(1, 3000).Select(i => new Kms.Core.Audit.AuditHead(i, "ab")).ToList();
        expected.Insert(1000, new Kms.Core.Audit.AuditHead(400, "c400"));
        expected.Reverse();
        Assert.Equal(expected, read);
        Assert.Empty(AuditWorker.StreamedBackwards(_path + ".missing"));
    }

    [Fact]
    public void Append_NewFile_OwnerOnlyFromItsCreation_ItsModeNeverChanged()
    {
        // Created with the default mode and chmod'ed after, the file was readable by group and
        // others in between - and for good if the process died there, since an existing file is
        // not chmod'ed again. inotify reports every change of the mode (IN_ATTRIB), in order.
        var directory = Directory.CreateDirectory(Scratch.NewPath("kms-append-")).FullName;
        var path = Path.Combine(directory, "checkpoints.jsonl");
        var sentinel = Path.Combine(directory, "sentinel");
        File.WriteAllText(sentinel, "");
        using var changed = new BlockingCollection<string>();
        using var watcher = new FileSystemWatcher(directory) { NotifyFilter = NotifyFilters.Attributes };
        watcher.Changed += (_, e) => changed.Add(e.Name!);
        watcher.EnableRaisingEvents = true;
        using var worker = Worker(new LogCapture(), out var factory);
        using (factory)
        {
            worker.Append(path, "{\"checkpoint\":1}");
        }

        // A mode change after the append: its event comes after any the append caused.
        File.SetUnixFileMode(sentinel, UnixFileMode.UserRead);
        var seen = new List<string>();
        var sentinelSeen = false;
        while (!sentinelSeen && changed.TryTake(out var name, TimeSpan.FromMinutes(1)))
        {
            sentinelSeen = name == "sentinel";
            seen.Add(name);
        }

        Assert.Equal("{\"checkpoint\":1}\n", File.ReadAllText(path));
        Assert.Equal(DurableFile.OwnerOnly, File.GetUnixFileMode(path));
        Assert.DoesNotContain("checkpoints.jsonl", seen);
        Assert.True(sentinelSeen, "the sentinel's mode change was never reported: the watcher saw nothing");
        Directory.Delete(directory, recursive: true);
    }

    [Fact]
    public void Append_ACrashLeftTheLastLineTorn_CutOff_TheNextRecordOnALineOfItsOwn_Logged()
    {
        var whole = Line(1) + "\n";
        File.WriteAllText(_path, whole + Line(2)[..40]);
        var capture = new LogCapture();
        using var worker = Worker(capture, out var factory);
        using (factory)
        {
            worker.Append(_path, Line(2) + "\n" + Line(3));
        }

        Assert.Equal(whole + Line(2) + "\n" + Line(3) + "\n", File.ReadAllText(_path));
        Assert.Equal(3, AuditWorker.LastStreamed(_path)?.Sequence);
        Assert.Contains(capture.Events, e => e.StartsWith("Warning the last line of ", StringComparison.Ordinal) && e.Contains("(40 bytes without a line end", StringComparison.Ordinal));
    }

    private static AuditWorker Worker(LogCapture capture, out Serilog.Extensions.Logging.SerilogLoggerFactory factory)
    {
        factory = new Serilog.Extensions.Logging.SerilogLoggerFactory(new Serilog.LoggerConfiguration().WriteTo.Sink(capture).CreateLogger(), dispose: true);
        // Append needs no audit log: the files are all it touches.
        return new AuditWorker(null!, new AuditHostOptions(), Microsoft.Extensions.Options.Options.Create(new KmsServerOptions()), new Microsoft.Extensions.Logging.Logger<AuditWorker>(factory), TimeProvider.System);
    }

    private static string Line(long sequence) =>
        $"{{\"event\":{{\"v\":1,\"seq\":{sequence},\"prev\":\"00\",\"time\":\"2026-12-03T10:00:00.000Z\",\"principal\":\"token:app\"}},\"hash\":\"ab\"}}";
}
