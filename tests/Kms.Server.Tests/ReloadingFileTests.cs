using Kms.Server.Security;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>Certificates, CA bundles and CRLs read again when their files change, also behind symbolic links.</summary>
public sealed class ReloadingFileTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-reload-").FullName;
    private readonly FakeTimeProvider _time = new(DateTimeOffset.UtcNow);

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void PlainFile_Rewritten_ReadAgainAfterTheNextCheck()
    {
        var path = Path.Combine(_directory, "crl.pem");
        File.WriteAllText(path, "first");
        var file = new ReloadingFile<string>(() => File.ReadAllText(path), _time, null, path);
        Assert.Equal("first", file.Value);

        File.WriteAllText(path, "second");
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(1));
        Assert.Equal("first", file.Value); // checked at most once a second
        _time.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal("second", file.Value);
    }

    [Fact]
    public void WallClockSetBack_FileStillReadAgainAfterASecond()
    {
        // The clock ran an hour ahead and is put right (NTP, a VM restored): the once-a-second
        // check is counted on the monotonic clock, so a replaced CRL, CA bundle or key set is still
        // read within a second, not once the wall clock has come back to where it had been.
        var clock = new Kms.Testing.Fakes.SplitClock(DateTimeOffset.UtcNow);
        var path = Path.Combine(_directory, "crl.pem");
        File.WriteAllText(path, "first");
        var file = new ReloadingFile<string>(() => File.ReadAllText(path), clock, null, path);
        Assert.Equal("first", file.Value);

        clock.Step(-TimeSpan.FromHours(1));
        File.WriteAllText(path, "second");
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(1));
        clock.Pass(TimeSpan.FromSeconds(2));
        Assert.Equal("second", file.Value);
    }

    [Fact]
    public void KubernetesSecretLayout_DataLinkSwapped_ReadAgain()
    {
        // A mounted secret: crl.pem -> ..data/crl.pem, ..data -> ..v1; a renewal writes ..v2 and
        // swaps ..data. The link crl.pem itself never changes.
        var path = Path.Combine(_directory, "crl.pem");
        var data = Path.Combine(_directory, "..data");
        WriteVersion("..v1", "crl version one");
        Directory.CreateSymbolicLink(data, "..v1");
        File.CreateSymbolicLink(path, Path.Combine("..data", "crl.pem"));
        var file = new ReloadingFile<string>(() => File.ReadAllText(path), _time, null, path);
        Assert.Equal("crl version one", file.Value);

        WriteVersion("..v2", "crl version two");
        Directory.Delete(data);
        Directory.CreateSymbolicLink(data, "..v2");
        _time.Advance(TimeSpan.FromSeconds(2));

        Assert.Equal("crl version two", file.Value);
    }

    [Fact]
    public void FileBeingReplaced_FailedLoad_KeepsTheLastGoodValue_ReportedOnce()
    {
        var path = Path.Combine(_directory, "tls.crt");
        File.WriteAllText(path, "good");
        var failures = 0;
        var file = new ReloadingFile<string>(
            () => File.ReadAllText(path) is var text && text.StartsWith("good", StringComparison.Ordinal) ? text : throw new InvalidDataException("half-written"),
            _time,
            _ => failures++,
            path);
        Assert.Equal("good", file.Value);

        File.WriteAllText(path, "-----BEGIN");
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(1));
        for (var i = 0; i < 3; i++)
        {
            _time.Advance(TimeSpan.FromSeconds(2));
            Assert.Equal("good", file.Value);
        }

        Assert.Equal(1, failures);
    }

    private void WriteVersion(string version, string content)
    {
        Directory.CreateDirectory(Path.Combine(_directory, version));
        var file = Path.Combine(_directory, version, "crl.pem");
        File.WriteAllText(file, content);

        // The same time and size as every other version: only the links tell them apart.
        File.SetLastWriteTimeUtc(file, new DateTime(2026, 12, 1, 0, 0, 0, DateTimeKind.Utc));
    }
}
