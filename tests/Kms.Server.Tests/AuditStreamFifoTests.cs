using System.Diagnostics;
using System.Globalization;
using System.Text;
using Kms.Core.Audit;
using Kms.Server.Audit;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The SIEM stream's FIFO writer: nothing counts as sent that no reader took, a full pipe neither
/// blocks the writer nor drops a line, and a line the pipe took part of is completed first.
/// </summary>
public sealed class AuditStreamFifoTests
{
    [Fact]
    public void Write_NoReader_NothingTaken_PositionStays()
    {
        var path = MakeFifo();
        var taken = new List<(string, AuditHead?)>();
        var e = Assert.Throws<AuditStreamNotTakenException>(() => new AuditStreamFifo(path).Write([("{\"n\":1}", new AuditHead(1, "h1"))], taken.Add));
        Assert.Null(e.Reached);
        Assert.Empty(taken);
        Assert.Contains("no process holds the SIEM stream's FIFO", e.Message, StringComparison.Ordinal);
    }

    // A reader that holds the FIFO open and does not read: the pipe (64 KiB, counted in pages by
    // Linux) takes some of the 5,000-byte lines and likely part of the next. The write returns (no
    // block), the whole lines count, a cut line's rest goes first at the next write; as the reader
    // reads, every line arrives whole, once, in order. Before (a blocking write), the first write
    // never returned.
    [Fact]
    public void Write_FullPipe_ReturnsWithTheWholeLinesTaken_TheCutLineCompletedFirst_EveryLineOnce()
    {
        var path = MakeFifo();
        using var reader = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, bufferSize: 0);
        var lines = Enumerable.Range(1, 40).Select(i => (Line: Line(i), Event: (AuditHead?)new AuditHead(i, "h" + i.ToString(CultureInfo.InvariantCulture)))).ToList();
        var fifo = new AuditStreamFifo(path);
        var taken = new List<(string Line, AuditHead? Event)>();
        var received = new MemoryStream();
        var expected = lines.Sum(l => l.Line.Length + 1);

        var first = Assert.Throws<AuditStreamNotTakenException>(() => fifo.Write(lines, taken.Add));
        Assert.InRange(first.Reached?.Sequence ?? 0, 1, 39);
        Assert.Equal(first.Reached?.Sequence, taken.Count);

        // As the audit log does: the lines after the position, until all were taken.
        var position = first.Reached!.Value.Sequence;
        var buffer = new byte[1 << 20];
        while (true)
        {
            received.Write(buffer, 0, reader.Read(buffer));
            try
            {
                fifo.Write(lines.Where(l => l.Event!.Value.Sequence > position).ToList(), taken.Add);
                break;
            }
            catch (AuditStreamNotTakenException e)
            {
                position = e.Reached?.Sequence ?? position;
            }
        }

        while (received.Length < expected)
        {
            received.Write(buffer, 0, reader.Read(buffer));
        }

        Assert.False(fifo.LineCut);
        Assert.Equal(lines.Select(l => l.Line), Encoding.UTF8.GetString(received.ToArray()).TrimEnd('\n').Split('\n'));
        Assert.Equal(lines.Select(l => l.Event), taken.Select(t => t.Event));
    }

    // 4,999 characters and a line feed: 5,000 bytes.
    private static string Line(int n) => n.ToString("D5", CultureInfo.InvariantCulture) + new string('x', 4994);

    private static string MakeFifo()
    {
        var path = Scratch.NewPath("kms-fifo-", ".fifo");
        using var mkfifo = Process.Start("mkfifo", ["-m", "600", path]) ?? throw new InvalidOperationException("mkfifo did not start");
        mkfifo.WaitForExit();
        Assert.Equal(0, mkfifo.ExitCode);
        return path;
    }
}
