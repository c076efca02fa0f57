using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Server.Audit;
using Kms.Server.Hosting;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The audit's steps at stop (AuditWorker.StopAsync over a real SQLite store, a fake HSM and a
/// fake clock, so no housekeeping pass runs but the stop's own): each runs whatever the one before
/// it threw.
/// </summary>
public sealed class AuditWorkerStopTests : IAsyncLifetime, IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-audit-stop-").FullName;
    private readonly FakeHsm _hsm = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 12, 7, 12, 0, 0, TimeSpan.Zero));
    private readonly LogCapture _capture = new();
    private Serilog.Extensions.Logging.SerilogLoggerFactory _factory = null!;
    private SqliteStore _store = null!;

    private string DatabasePath => Path.Combine(_directory, "kms.db");

    private string StreamPath => Path.Combine(_directory, "siem.jsonl");

    public async Task InitializeAsync()
    {
        _store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath }, default);
        _factory = new Serilog.Extensions.Logging.SerilogLoggerFactory(new Serilog.LoggerConfiguration().WriteTo.Sink(_capture).CreateLogger(), dispose: true);
    }

    public async Task DisposeAsync() => await _store.DisposeAsync();

    public void Dispose()
    {
        _factory.Dispose();
        _hsm.Dispose();
        SqliteConnection.ClearAllPools();
        Directory.Delete(_directory, recursive: true);
    }

    // The refusals counted since the last pass cannot be written at stop (the database refuses
    // every new audit event): said, and the SIEM stream still gets the last events, the final
    // checkpoint is still signed (in the database and checkpoints.jsonl), the head still recorded.
    // Before, the refusal flush's exception skipped the stream's last pass and the checkpoint,
    // and was logged as 1303, "the final audit checkpoint could not be written".
    [Fact]
    public async Task StopAsync_TheRefusalCountsCannotBeWritten_TheStreamCheckpointAndHeadRecordStillFollow()
    {
        var log = new AuditLog(_store, _store, _hsm, _time, new AuditOptions());
        using var worker = new AuditWorker(log, new AuditHostOptions { StreamPath = StreamPath }, Microsoft.Extensions.Options.Options.Create(new KmsServerOptions { DataDir = _directory }),
            new Microsoft.Extensions.Logging.Logger<AuditWorker>(_factory), _time);
        await worker.InitializeAsync(default);
        await worker.StartAsync(default);

        await log.AppendAsync(Entry("OK"), default);
        await log.RefusedAsync(Entry("PERMISSION_DENIED"), default); // the window's first: written
        await log.RefusedAsync(Entry("PERMISSION_DENIED"), default); // counted, written when the window closes
        Assert.Equal("2", Scalar("SELECT max(seq) FROM audit_events"));
        RawSqlite.Execute(DatabasePath, "CREATE TRIGGER refuse_events BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'refused by the test'); END");

        await worker.StopAsync(default);

        Assert.Equal("2", Scalar("SELECT max(seq) FROM audit_checkpoints"));
        Assert.Contains("\"seq\":2", File.ReadAllText(Path.Combine(_directory, "audit", "checkpoints.jsonl")), StringComparison.Ordinal);
        Assert.Equal(2, AuditWorker.LastStreamed(StreamPath)?.Sequence);
        Assert.Equal(2, SeenHead.Parse(File.ReadAllBytes(Path.Combine(_directory, "audit", SeenHead.FileName)))?.Head.Sequence);
        Assert.Contains(_capture.Events, e => e.Contains("the audit's stop step \"refusal counts\" failed", StringComparison.Ordinal));
        Assert.DoesNotContain(_capture.Events, e => e.Contains("the final audit checkpoint could not be written", StringComparison.Ordinal));
    }

    private AuditEntry Entry(string outcome) => new()
    {
        Time = _time.GetUtcNow(),
        RequestId = CallIds.New(),
        Principal = "token:app",
        Operation = "/kms.v1.KeyManagementService/Encrypt",
        Outcome = outcome,
    };

    private string Scalar(string sql) => RawSqlite.Scalar(DatabasePath, sql);
}
