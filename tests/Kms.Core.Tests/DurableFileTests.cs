using Kms.Core.Files;

namespace Kms.Core.Tests;

/// <summary>
/// The one writer of files a user relies on after a crash. A test cannot pull the power: these
/// look at the disk at the moments a crash could strike (mid-write, after a failure) and at what
/// the writer leaves the previous file. The fsyncs themselves were seen with strace.
/// </summary>
public sealed class DurableFileTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-durable-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Create_MidWrite_OwnerOnlyTemporaryBesideNothingUnderTheName()
    {
        var path = Path.Combine(_directory, "plaintext.bin");
        await using (var writer = DurableFile.Create(path, DurableFile.OwnerOnly, overwrite: false))
        {
            await writer.Stream.WriteAsync(new byte[4096]);

            var temporary = Assert.Single(Directory.GetFiles(_directory));
            Assert.NotEqual(path, temporary);
            Assert.StartsWith(".plaintext.bin.", Path.GetFileName(temporary), StringComparison.Ordinal);
            Assert.Equal(DurableFile.OwnerOnly, File.GetUnixFileMode(temporary));

            await writer.CommitAsync(default);
        }

        Assert.Equal([path], Directory.GetFiles(_directory));
        Assert.Equal(DurableFile.OwnerOnly, File.GetUnixFileMode(path));
        Assert.Equal(4096, new FileInfo(path).Length);
    }

    [Fact]
    public async Task Create_SourceThrowsMidway_PreviousFileIntactAndNothingLeftBeside()
    {
        var path = Path.Combine(_directory, "export.jsonl");
        await File.WriteAllTextAsync(path, "the previous export\n");

        var e = await Assert.ThrowsAsync<IOException>(async () =>
        {
            await using var writer = DurableFile.Create(path, DurableFile.OwnerOnly, overwrite: true);
            await using var source = new BreaksAfter(100_000);
            await source.CopyToAsync(writer.Stream);
            await writer.CommitAsync(default);
        });

        Assert.Equal("the connection broke", e.Message);
        Assert.Equal("the previous export\n", await File.ReadAllTextAsync(path));
        Assert.Equal([path], Directory.GetFiles(_directory));
    }

    [Fact]
    public async Task WriteAsync_Overwrite_PreviousFileReplacedWholeNeverRewrittenInPlace()
    {
        // A reader holding the previous file sees it unchanged: it was renamed over, not
        // truncated and rewritten (which a crash in the middle would leave torn or empty).
        var path = Path.Combine(_directory, "signing-key.pem");
        await File.WriteAllTextAsync(path, "previous\n");
        await using var held = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);

        await DurableFile.WriteAsync(path, "replacement\n"u8.ToArray(), DurableFile.Public, overwrite: true, default);

        Assert.Equal("previous\n", await new StreamReader(held).ReadToEndAsync());
        Assert.Equal("replacement\n", await File.ReadAllTextAsync(path));
        Assert.Equal([path], Directory.GetFiles(_directory));
    }

    [Fact]
    public void Write_FileExists_RefusedAndLeftAlone()
    {
        var path = Path.Combine(_directory, "share-1-bob.json");
        File.WriteAllText(path, "an earlier share");

        var e = Assert.Throws<IOException>(() => DurableFile.Write(path, "new"u8, DurableFile.OwnerOnly, overwrite: false));

        Assert.Equal($"{path} exists already", e.Message);
        Assert.Equal("an earlier share", File.ReadAllText(path));
        Assert.Equal([path], Directory.GetFiles(_directory));
    }

    [Fact]
    public void Commit_FileAppearedMeanwhile_NotReplaced()
    {
        var path = Path.Combine(_directory, "share-1-bob.json");
        using (var writer = DurableFile.Create(path, DurableFile.OwnerOnly, overwrite: false))
        {
            writer.Stream.Write("new"u8);
            File.WriteAllText(path, "written meanwhile");

            Assert.Throws<IOException>(writer.Commit);
        }

        Assert.Equal("written meanwhile", File.ReadAllText(path));
        Assert.Equal([path], Directory.GetFiles(_directory));
    }

    [Fact]
    public void Commit_TwoWritersOfTheSameNewName_ExactlyOneWins_TheOtherRefused_WinnersContentWhole()
    {
        // No overwrite must hold between two writers too: a check for the name followed by a
        // rename lets both see it free and the second replace the first's file, both told
        // "written". Rounds, because the old check-then-rename lost only when the two landed in
        // the same few microseconds; the commit itself must leave no such window.
        for (var round = 0; round < 500; round++)
        {
            var path = Path.Combine(_directory, $"share-{round}.json");
            byte[][] contents = [Enumerable.Repeat((byte)'a', 8192).ToArray(), Enumerable.Repeat((byte)'b', 8192).ToArray()];
            using var start = new Barrier(2);
            var outcomes = new Exception?[2];
            var threads = Enumerable.Range(0, 2).Select(i => new Thread(() =>
            {
                using var writer = DurableFile.Create(path, DurableFile.OwnerOnly, overwrite: false);
                writer.Stream.Write(contents[i]);
                writer.Stream.Flush(flushToDisk: false);
                start.SignalAndWait();
                try
                {
                    writer.Commit();
                }
                catch (IOException e)
                {
                    outcomes[i] = e;
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());

            var winners = Enumerable.Range(0, 2).Where(i => outcomes[i] is null).ToList();
            var winner = Assert.Single(winners);
            var refused = Assert.IsType<IOException>(outcomes[1 - winner]);
            Assert.Equal($"{path} exists already", refused.Message);
            Assert.Equal(contents[winner], File.ReadAllBytes(path));
            Assert.Equal([path], Directory.GetFiles(_directory));
            File.Delete(path);
        }
    }

    [Fact]
    public void Commit_DirectorySyncedOnceAfterTheFileIsInPlace()
    {
        var path = Path.Combine(_directory, "share-1-bob.json");
        var synced = new List<(string Directory, string[] Files)>();
        using (var writer = DurableFile.Create(path, DurableFile.OwnerOnly, overwrite: false, directory => synced.Add((directory, Directory.GetFiles(directory)))))
        {
            writer.Stream.Write("share"u8);
            writer.Commit();
        }

        // The name is what the sync makes durable: it must be there when the directory is synced.
        var (directory, files) = Assert.Single(synced);
        Assert.Equal(_directory, directory);
        Assert.Equal([path], files);
    }

    [Fact]
    public void Commit_DirectorySyncFailsForANewFile_RefusedAndTheFileRemoved()
    {
        // A file the caller is not told of must not stay: create-domain deletes the shares it
        // was told were written when a later one fails.
        var path = Path.Combine(_directory, "share-1-bob.json");
        using var writer = DurableFile.Create(path, DurableFile.OwnerOnly, overwrite: false, directory => throw new IOException($"cannot sync directory {directory} to disk: Input/output error (errno 5)"));
        writer.Stream.Write("share"u8);

        var e = Assert.Throws<IOException>(writer.Commit);

        Assert.Equal($"cannot sync directory {_directory} to disk: Input/output error (errno 5); {path} is not on disk for certain: it was removed", e.Message);
        Assert.Empty(Directory.GetFiles(_directory));
    }

    [Fact]
    public void CreateDirectory_MissingParents_EachCreatedOneSyncedIntoItsParent_AnExistingOneLeftAlone()
    {
        var path = Path.Combine(_directory, "data", "audit");
        var synced = new List<(string Directory, string Entries)>();
        void Sync(string directory) => synced.Add((directory, string.Join(',', Directory.GetFileSystemEntries(directory))));

        Assert.Equal(path, DurableFile.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, Sync));

        // The name each sync makes durable is there when its parent is synced.
        Assert.Equal([(Path.Combine(_directory, "data"), path), (_directory, Path.Combine(_directory, "data"))], synced);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(path));
        synced.Clear();
        DurableFile.CreateDirectory(path, null, Sync);
        Assert.Empty(synced);
    }

    [Fact]
    public async Task AppendAsync_NewThenExisting_OwnerOnlyAndBothRecords()
    {
        var path = Path.Combine(_directory, "checkpoints.jsonl");

        await DurableFile.AppendAsync(path, "one\n"u8.ToArray(), DurableFile.OwnerOnly, default);
        await DurableFile.AppendAsync(path, "two\n"u8.ToArray(), DurableFile.OwnerOnly, default);

        Assert.Equal("one\ntwo\n", await File.ReadAllTextAsync(path));
        Assert.Equal(DurableFile.OwnerOnly, File.GetUnixFileMode(path));
    }

    [Theory]
    [InlineData("one\n{\"checkpoint\":{\"seq\":2", "one\n")]
    [InlineData("{\"checkpoint\":{\"seq\":1", "")]
    public async Task AppendAsync_ACrashLeftTheLastLineTorn_CutOff_TheNextRecordOnALineOfItsOwn(string torn, string whole)
    {
        // A crash mid-append left the last line without its line feed; appending after it would
        // run the next record on from it, and spoil both lines for every reader.
        var path = Path.Combine(_directory, "checkpoints.jsonl");
        await File.WriteAllTextAsync(path, torn);

        var cut = await DurableFile.AppendAsync(path, "two\n"u8.ToArray(), DurableFile.OwnerOnly, default);

        Assert.Equal(whole + "two\n", await File.ReadAllTextAsync(path));
        Assert.Equal(torn.Length - whole.Length, cut);
        Assert.Equal(0, await DurableFile.AppendAsync(path, "three\n"u8.ToArray(), DurableFile.OwnerOnly, default));
        Assert.Equal(whole + "two\nthree\n", await File.ReadAllTextAsync(path));
    }

    [Theory]
    [InlineData("one\n", "{\"checkpoint\":{\"seq\":2,\"head\":\"ab}\"},\"signature\":\"c2ln\"}")]
    [InlineData("", "{\"event\":{\"seq\":1}}")]
    public void Append_ALastLineLackingOnlyItsLineFeed_KeptAndEnded_NotCut(string before, string whole)
    {
        // A record and its line feed are one write: only a torn write ends exactly between them,
        // and what it left is the whole record. Cutting it threw a whole record away.
        var path = Path.Combine(_directory, "checkpoints.jsonl");
        File.WriteAllText(path, before + whole);

        Assert.Equal(0, DurableFile.Append(path, "{\"two\":2}\n"u8, DurableFile.OwnerOnly));

        Assert.Equal(before + whole + "\n{\"two\":2}\n", File.ReadAllText(path));
    }

    [Theory]
    [InlineData("{\"checkpoint\":{\"seq\":2}")] // torn inside the record
    [InlineData("{\"checkpoint\":{\"head\":\"ab}")] // torn inside a string that holds a brace
    [InlineData("{\"a\":1}{\"b\":2}")] // two run together: not one record
    [InlineData("{\"a\":1}\0\0\0")] // the zeros a torn write can leave after a record
    [InlineData("{\"a\":1} ")]
    [InlineData("12")] // a value, but no record (and a prefix of 123)
    [InlineData("[{\"a\":1}]")]
    public void Append_ALastLineThatIsNoWholeRecord_CutOff(string torn)
    {
        var path = Path.Combine(_directory, "checkpoints.jsonl");
        File.WriteAllText(path, "{\"one\":1}\n" + torn);

        Assert.Equal(torn.Length, DurableFile.Append(path, "{\"two\":2}\n"u8, DurableFile.OwnerOnly));

        Assert.Equal("{\"one\":1}\n{\"two\":2}\n", File.ReadAllText(path));
    }

    [Fact]
    public void Append_TwoWritersOfOneFile_TakeTurns_EveryRecordWholeOnItsOwnLine()
    {
        // Two servers given one SIEM stream path (or the ceremony CLI and a server on one
        // checkpoints file): each wrote at the end it saw, the same offset, one record over the
        // other, or cut the other's line while it was being written. Separate opens, as two
        // processes have: the lock is the open file's, not the process's. A page of events a
        // line (as forwarded after an outage), so that the two writes overlap in time.
        var path = Path.Combine(_directory, "siem.jsonl");
        const int Rounds = 100;
        var padding = new string('x', 256 * 1024);
        using var start = new Barrier(2);
        var failures = new List<Exception>();
        var threads = Enumerable.Range(0, 2).Select(writer => new Thread(() =>
        {
            try
            {
                for (var round = 0; round < Rounds; round++)
                {
                    start.SignalAndWait();
                    DurableFile.Append(path, System.Text.Encoding.UTF8.GetBytes($"{{\"writer\":{writer},\"round\":{round},\"page\":\"{padding}\"}}\n"), DurableFile.OwnerOnly);
                }
            }
            catch (IOException e)
            {
                lock (failures)
                {
                    failures.Add(e);
                }

                start.RemoveParticipant();
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        Assert.Empty(failures);
        var expected = Enumerable.Range(0, 2).SelectMany(writer => Enumerable.Range(0, Rounds).Select(round => $"{writer}:{round}")).Order(StringComparer.Ordinal);
        Assert.Equal(expected, File.ReadAllLines(path).Select(Record).Order(StringComparer.Ordinal));

        static string Record(string line)
        {
            try
            {
                using var record = System.Text.Json.JsonDocument.Parse(line);
                return $"{record.RootElement.GetProperty("writer")}:{record.RootElement.GetProperty("round")}";
            }
            catch (System.Text.Json.JsonException)
            {
                return $"no record: {line[..Math.Min(line.Length, 30)]}… ({line.Length} characters)";
            }
        }
    }

    [Fact]
    public void Append_AnotherWriterHoldsTheLock_RefusedAfterTheWait_NothingWritten()
    {
        // Another writer (a separate open, as another process has) holding the lock past the wait:
        // the append is refused with what held it up, and writes nothing. The wait is the test's
        // (50 ms, not the 10 s an append waits).
        var path = Path.Combine(_directory, "siem.jsonl");
        File.WriteAllText(path, "{\"one\":1}\n");
        using (var holder = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            DurableFile.EndWithWholeLine(holder); // takes the appenders' lock until it is closed

            // Its own type (an IOException): the SIEM stream's read-back at start tells it from a file that is no log.
            var e = Assert.Throws<FileLockedException>(() => DurableFile.Append(path, "{\"two\":2}\n"u8, DurableFile.OwnerOnly, TimeSpan.FromMilliseconds(50)));

            Assert.Contains("stayed locked by another writer for 0.05 s", e.Message, StringComparison.Ordinal);
            Assert.Contains("nothing was appended", e.Message, StringComparison.Ordinal);
            Assert.Equal("{\"one\":1}\n", File.ReadAllText(path));
        }

        // Once the holder closed the file, the append goes ahead.
        DurableFile.Append(path, "{\"two\":2}\n"u8, DurableFile.OwnerOnly, TimeSpan.FromMilliseconds(50));
        Assert.Equal("{\"one\":1}\n{\"two\":2}\n", File.ReadAllText(path));
    }

    [Fact]
    public async Task EndWithWholeLine_AnotherWriterHoldsTheLock_ACancellationEndsTheWait_NothingCut()
    {
        // The SIEM stream's read-back at start waits for the lock on the stop's token: a stop asked
        // for meanwhile ends the wait (before, it was waited out first). The wait here is 10 minutes;
        // the hang guard 60 s.
        var path = Path.Combine(_directory, "siem.jsonl");
        File.WriteAllText(path, "{\"one\":1}\n{\"torn\":");
        using var holder = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        DurableFile.EndWithWholeLine(holder);
        using var stop = new CancellationTokenSource();
        var waiting = Task.Run(() =>
        {
            using var reader = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read, bufferSize: 0);
            return DurableFile.EndWithWholeLine(reader, TimeSpan.FromMinutes(10), stop.Token);
        });

        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Equal("{\"one\":1}\n", File.ReadAllText(path)); // the holder's cut, none of the waiter's
    }

    [Fact]
    public void Append_ThatThrewAfterTakingTheLock_LeftTheLockReleased()
    {
        // More without a line feed than any record is refused after the lock is taken (the last
        // line is looked at under it): the refused append must not leave the file locked.
        var path = Path.Combine(_directory, "siem.jsonl");
        File.WriteAllText(path, new string('x', LongestTornLine + 1));
        Assert.Throws<IOException>(() => DurableFile.Append(path, "{\"one\":1}\n"u8, DurableFile.OwnerOnly, TimeSpan.FromMilliseconds(50)));

        using var next = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        var e = Record.Exception(() => DurableFile.EndWithWholeLine(next, TimeSpan.FromMilliseconds(50)));

        // Not refused for the lock: refused, again, for what the file holds.
        Assert.IsType<IOException>(e);
        Assert.Contains("not a log of records", e.Message, StringComparison.Ordinal);
    }

    // DurableFile.MaxTornLine (a MiB, as the SIEM stream's read-back): written out, so these
    // tests also build against a DurableFile without it.
    private const int LongestTornLine = 1 << 20;

    [Theory]
    [InlineData("")]
    [InlineData("a log's whole line\n")]
    public void Append_AfterMoreWithoutALineFeedThanAnyRecord_Refused_NothingCutOrWritten(string before)
    {
        // No crash tears more than one record (a line far below a MiB); a file ending in more
        // without a line feed is not a log of records (Audit:StreamPath pointed at another file by
        // mistake): cutting it would throw away what someone else wrote, to its very start when it
        // holds no line feed at all. (The stream's read-back at start leaves it alone too.)
        var path = Path.Combine(_directory, "siem.jsonl");
        var content = before + new string('x', LongestTornLine + 1);
        File.WriteAllText(path, content);

        var e = Assert.Throws<IOException>(() => DurableFile.Append(path, "{\"event\":{}}\n"u8, DurableFile.OwnerOnly));

        Assert.Contains("not a log of records", e.Message, StringComparison.Ordinal);
        Assert.Equal(content, File.ReadAllText(path));
    }

    [Fact]
    public void Append_ATornLineAsLongAsAnyRecord_CutOff()
    {
        var path = Path.Combine(_directory, "siem.jsonl");
        File.WriteAllText(path, "one\n" + new string('x', LongestTornLine));

        Assert.Equal(LongestTornLine, DurableFile.Append(path, "two\n"u8, DurableFile.OwnerOnly));

        Assert.Equal("one\ntwo\n", File.ReadAllText(path));
    }

    [Fact]
    public void Append_NotWholeLines_Refused_NothingWritten()
    {
        var path = Path.Combine(_directory, "checkpoints.jsonl");
        Assert.Throws<ArgumentException>(() => DurableFile.Append(path, "no line feed"u8, DurableFile.OwnerOnly));
        Assert.False(File.Exists(path));
    }

    [Fact]
    public void DurableDirectory_Uncommitted_NothingUnderTheNameAndNothingLeft()
    {
        var path = Path.Combine(_directory, "nested", "backup");
        using (var staged = DurableDirectory.Create(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute))
        {
            DurableFile.Write(Path.Combine(staged.Staging, "manifest.json"), "{}"u8, DurableFile.OwnerOnly, overwrite: false);

            Assert.False(Directory.Exists(path));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(staged.Staging));
            Assert.Equal(Path.GetDirectoryName(path), Path.GetDirectoryName(staged.Staging));
        }

        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(_directory, "nested")));
    }

    [Fact]
    public void DurableDirectory_Committed_TheFilesUnderTheName()
    {
        var path = Path.Combine(_directory, "backup");
        using (var staged = DurableDirectory.Create(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute))
        {
            DurableFile.Write(Path.Combine(staged.Staging, "manifest.json"), "{}"u8, DurableFile.OwnerOnly, overwrite: false);
            staged.Commit();
        }

        Assert.Equal([path], Directory.GetFileSystemEntries(_directory));
        Assert.Equal("{}", File.ReadAllText(Path.Combine(path, "manifest.json")));
        Assert.Throws<IOException>(() => DurableDirectory.Create(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute));
    }

    [Fact]
    public void DurableDirectory_TwoCommittersOfOneName_ExactlyOneWins_TheOtherRefused_NeverBothToldWritten()
    {
        // The commit checked for the name and then renamed; rename(2) replaces an empty directory,
        // so of two committers that both passed the check, one whose directory was committed empty
        // (or an empty one made meanwhile) was replaced by the second, both told "committed".
        // Rounds, because the two must land between each other's check and rename.
        const UnixFileMode Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        var refusals = new List<string>();
        for (var round = 0; round < 500; round++)
        {
            var path = Path.Combine(_directory, $"backup-{round}");
            using var start = new Barrier(2);
            var outcomes = new Exception?[2];
            var threads = Enumerable.Range(0, 2).Select(i => new Thread(() =>
            {
                using var staged = DurableDirectory.Create(path, Mode);
                if (i == 1)
                {
                    DurableFile.Write(Path.Combine(staged.Staging, "manifest.json"), "{}"u8, DurableFile.OwnerOnly, overwrite: false);
                }

                start.SignalAndWait();
                try
                {
                    staged.Commit();
                }
                catch (IOException e)
                {
                    outcomes[i] = e;
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());

            var winner = Assert.Single(Enumerable.Range(0, 2), i => outcomes[i] is null);
            refusals.Add(Assert.IsType<IOException>(outcomes[1 - winner]).Message);
            Assert.Equal(winner == 1 ? [Path.Combine(path, "manifest.json")] : [], Directory.GetFileSystemEntries(path));
            Assert.Equal([path], Directory.GetFileSystemEntries(_directory));
            Directory.Delete(path, recursive: true);
        }

        Assert.All(refusals.Select((message, round) => (message, round)), r => Assert.Equal($"{Path.Combine(_directory, $"backup-{r.round}")} exists already", r.message));
    }

    [Fact]
    public void DurableDirectory_EmptyDirectoryMadeUnderTheNameMeanwhile_NotReplaced()
    {
        var path = Path.Combine(_directory, "backup");
        using var staged = DurableDirectory.Create(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        DurableFile.Write(Path.Combine(staged.Staging, "manifest.json"), "{}"u8, DurableFile.OwnerOnly, overwrite: false);
        Directory.CreateDirectory(path);

        var e = Assert.Throws<IOException>(staged.Commit);

        Assert.Equal($"{path} exists already", e.Message);
        Assert.Empty(Directory.GetFileSystemEntries(path));
    }

    [Fact]
    public void NoReplaceRename_RenameDirectory_TheFallbackWithoutRenameat2_RefusesADirectoryWithAnythingInIt()
    {
        // link(2) cannot publish a directory; plain rename(2) refuses a destination that holds
        // anything, and replaces only an empty one (documented: nothing in it is lost).
        var staging = Path.Combine(_directory, ".backup.partial");
        var path = Path.Combine(_directory, "backup");
        Directory.CreateDirectory(staging);
        File.WriteAllText(Path.Combine(staging, "manifest.json"), "new");
        Directory.CreateDirectory(path);
        File.WriteAllText(Path.Combine(path, "manifest.json"), "earlier");

        Assert.Equal(NoReplaceRename.Outcome.Exists, NoReplaceRename.RenameDirectory(staging, path));
        Assert.Equal("earlier", File.ReadAllText(Path.Combine(path, "manifest.json")));
        Assert.Equal("new", File.ReadAllText(Path.Combine(staging, "manifest.json")));

        Directory.Delete(path, recursive: true);
        Assert.Equal(NoReplaceRename.Outcome.Moved, NoReplaceRename.RenameDirectory(staging, path));
        Assert.Equal("new", File.ReadAllText(Path.Combine(path, "manifest.json")));
        Assert.Equal([path], Directory.GetFileSystemEntries(_directory));
    }

    [Fact]
    public void NoReplaceRename_Link_TheFallbackWithoutRenameat2_RefusesAnExistingName_PublishesAFreeOne()
    {
        var temporary = Path.Combine(_directory, ".share.json.partial");
        var path = Path.Combine(_directory, "share.json");
        File.WriteAllText(temporary, "new");
        File.WriteAllText(path, "earlier");

        Assert.Equal(NoReplaceRename.Outcome.Exists, NoReplaceRename.Link(temporary, path));
        Assert.Equal("earlier", File.ReadAllText(path));
        Assert.Equal("new", File.ReadAllText(temporary));

        File.Delete(path);
        Assert.Equal(NoReplaceRename.Outcome.Moved, NoReplaceRename.Link(temporary, path));
        Assert.Equal("new", File.ReadAllText(path));
        Assert.Equal([path], Directory.GetFiles(_directory));
    }

    /// <summary>A source that gives <c>limit</c> bytes, then fails as a broken connection does.</summary>
    private sealed class BreaksAfter(int limit) : Stream
    {
        private int _given;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => _given; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            if (_given >= limit)
            {
                throw new IOException("the connection broke");
            }

            var n = Math.Min(count, limit - _given);
            Array.Fill(buffer, (byte)'x', offset, n);
            _given += n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
