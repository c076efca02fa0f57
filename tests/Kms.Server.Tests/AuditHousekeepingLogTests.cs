using System.Diagnostics.Metrics;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Services;
using Kms.Server.Audit;
using Kms.Server.Hosting;
using Kms.Server.Observability;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// What a failing audit housekeeping leaves in the log (AuditWorker, a fake clock, a captured
/// sink): housekeeping retries every second, but a failure is logged when it starts, then at
/// most every few minutes with the retries not logged, and once when it ends.
/// </summary>
public sealed class AuditHousekeepingLogTests : IAsyncLifetime, IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-housekeeping-log-").FullName;
    private readonly FakeHsm _hsm = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 12, 6, 12, 0, 0, TimeSpan.Zero));
    private readonly LogCapture _capture = new();
    private Serilog.Extensions.Logging.SerilogLoggerFactory _factory = null!;
    private SqliteStore _store = null!;
    private AuditLog _log = null!;

    private string DatabasePath => Path.Combine(_directory, "kms.db");

    public async Task InitializeAsync()
    {
        _store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath }, default);
        _log = new AuditLog(_store, _store, _hsm, _time, new AuditOptions { CheckpointInterval = TimeSpan.FromSeconds(1) });
        _factory = new Serilog.Extensions.Logging.SerilogLoggerFactory(new Serilog.LoggerConfiguration().WriteTo.Sink(_capture).CreateLogger(), dispose: true);
        var worker = new AuditWorker(_log, new AuditHostOptions(), Microsoft.Extensions.Options.Options.Create(new KmsServerOptions { DataDir = _directory }),
            new Microsoft.Extensions.Logging.Logger<AuditWorker>(_factory), _time);
        await worker.InitializeAsync(default);
        worker.Dispose();
    }

    public async Task DisposeAsync() => await _store.DisposeAsync();

    public void Dispose()
    {
        _factory.Dispose();
        _hsm.Dispose();
        SqliteConnection.ClearAllPools();
        Directory.Delete(_directory, recursive: true);
    }

    // An hour of an unavailable HSM: 3,600 failed passes, a dozen lines that say how many
    // were not logged; back, one line; after that, nothing.
    [Fact]
    public async Task HsmUnavailableAnHour_FirstFailureThenAReminderEveryFiveMinutesWithTheCount_RecoveryOnce()
    {
        await AppendAsync(1);
        _hsm.BeforeSignEcdsa = () => throw KmsErrors.Unavailable("the HSM is not answering");
        await PassesAsync(3600);

        var failures = Lines("audit housekeeping");
        Assert.Equal(12, failures.Count); // the first, and one every five minutes
        Assert.Single(failures, l => l.StartsWith("Error audit housekeeping (refusal counts, SIEM stream, checkpoint) failed (KmsException Unavailable: the HSM is not answering)", StringComparison.Ordinal));
        var reminders = failures.Where(l => l.StartsWith("Error audit housekeeping still failing (KmsException Unavailable)", StringComparison.Ordinal)).ToList();
        Assert.Equal(11, reminders.Count); // at 5, 10, … 55 minutes
        Assert.Contains("after 5 min; 299 failed retries not logged since the last line", reminders[0], StringComparison.Ordinal);
        Assert.Equal(1 + reminders.Count, failures.Count);

        _hsm.BeforeSignEcdsa = null;
        await PassesAsync(600);
        Assert.Single(Lines("audit housekeeping recovered: KmsException Unavailable ended after 3600 s and 3600 failures"), l => l.StartsWith("Information ", StringComparison.Ordinal));
        Assert.Equal(1 + reminders.Count + 1, Lines("audit housekeeping").Count);
    }

    // The chain rewritten under the running server: checkpoints refused, each pass (an hour of
    // them here; before, 3,600 lines of 1304, 86,400 a day). One Error
    // that says why and what to do, a reminder every five minutes, the gauge at 1; the rewrite
    // undone (the database put back), a checkpoint is signed and that is logged once.
    [Fact]
    public async Task CheckpointRefusedAnHour_ABoundedNumberOfLines_GaugeShowsIt_EndLoggedOnce()
    {
        await AppendAsync(5);
        await PassesAsync(1); // checkpoint 5
        Assert.Equal("5", Scalar("SELECT max(seq) FROM audit_checkpoints"));
        await AppendAsync(3);
        var body = Scalar("SELECT body FROM audit_events WHERE seq = 5");
        Sql("UPDATE audit_events SET body = replace(body, '\"principal\":\"token:app\"', '\"principal\":\"token:mallory\"') WHERE seq = 5");

        await PassesAsync(3600);
        Assert.NotNull(_log.CheckpointRefusedSince);
        Assert.True(RefusedGauge() >= 1);
        var lines = Lines("audit");
        Assert.Equal(12, lines.Count);
        // Through checkpoint 5, or the head this node recorded (event 5, head.json): whichever check comes first.
        Assert.Single(lines, l => l.StartsWith("Error audit checkpoints are not signed: the audit chain in the database (head 8) no longer passes through ", StringComparison.Ordinal)
            && (l.Contains("through checkpoint 5", StringComparison.Ordinal) || l.Contains("through event 5, the audit head this node recorded", StringComparison.Ordinal)));
        var reminders = lines.Count(l => l.StartsWith("Error audit housekeeping still failing (checkpoint refused) after ", StringComparison.Ordinal));
        Assert.Equal(11, reminders);
        Assert.Equal(1 + reminders, lines.Count);
        Assert.Contains(lines, l => l.Contains("after 55 min; 299 failed retries not logged since the last line: the audit chain", StringComparison.Ordinal));

        Sql($"UPDATE audit_events SET body = '{body.Replace("'", "''", StringComparison.Ordinal)}' WHERE seq = 5");
        await PassesAsync(10);
        Assert.Null(_log.CheckpointRefusedSince);
        Assert.Equal("8", Scalar("SELECT max(seq) FROM audit_checkpoints"));
        Assert.Single(Lines("audit housekeeping recovered: checkpoint refused ended after 3600 s and 3600 failures"));
        Assert.Equal(1 + reminders + 1, Lines("audit").Count);
    }

    [Fact]
    public void KindOf_TheRefusalOnlyWhileRefusing_ElseTypeAndCode()
    {
        var precondition = KmsErrors.FailedPrecondition("x");
        Assert.Equal(HousekeepingFailureLog.CheckpointRefused, HousekeepingFailureLog.KindOf(precondition, checkpointRefused: true));
        Assert.Equal("KmsException FailedPrecondition", HousekeepingFailureLog.KindOf(precondition, checkpointRefused: false));
        Assert.Equal("KmsException Unavailable", HousekeepingFailureLog.KindOf(KmsErrors.Unavailable("x"), checkpointRefused: true));
        Assert.Equal("IOException", HousekeepingFailureLog.KindOf(new IOException("disk full"), checkpointRefused: false));
    }

    // The captured lines (level, message: Serilog quotes strings, unquoted here) whose message
    // starts with the prefix, but for the signing key published at start and the checkpoints
    // signed (1302).
    private List<string> Lines(string prefix) =>
        [.. _capture.Events.Select(e => e.Replace("\"", "", StringComparison.Ordinal))
            .Where(e => e[(e.IndexOf(' ', StringComparison.Ordinal) + 1)..] is var text && text.StartsWith(prefix, StringComparison.Ordinal)
                && !text.StartsWith("audit signing key", StringComparison.Ordinal) && !text.StartsWith("audit checkpoint ", StringComparison.Ordinal))];

    private async Task PassesAsync(int count)
    {
        for (var i = 0; i < count; i++)
        {
            _time.Advance(TimeSpan.FromSeconds(1));
            await _log.RunHousekeepingAsync(default);
        }
    }

    private async Task AppendAsync(int count)
    {
        for (var i = 0; i < count; i++)
        {
            await _store.AppendAuditAsync(
            [
                new AuditEntry
                {
                    Time = _time.GetUtcNow(),
                    RequestId = CallIds.New(),
                    Principal = "token:app",
                    Operation = "/kms.v1.KeyManagementService/Encrypt",
                    Outcome = "OK",
                },
            ], default);
        }
    }

    private static long RefusedGauge()
    {
        long value = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument == KmsMetrics.AuditCheckpointSigningRefused)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, measurement, _, _) => value += measurement);
        listener.Start();
        listener.RecordObservableInstruments();
        return value;
    }

    private void Sql(string sql) => RawSqlite.Execute(DatabasePath, sql);

    private string Scalar(string sql) => RawSqlite.Scalar(DatabasePath, sql);
}
