using System.Security.Cryptography;
using System.Text;
using Kms.Core.Services;
using Kms.Hsm;
using Kms.Server.Hosting;
using Kms.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Serilog.Core;
using Serilog.Events;

namespace Kms.Server.Tests;

/// <summary>
/// A start refused by a check that runs once the application is built (the audit start checks):
/// what the build opened is closed, the logger last, and the next start on the same HSM token and
/// data directory serves.
/// </summary>
public sealed class StartRefusalTests
{
    private const string DomainKeyId = "dk-start-refusal";

    [Fact]
    public async Task AnAuditStartCheckRefuses_AfterTheApplicationIsBuilt_EverythingClosedTheLoggerLast_TheNextStartServes()
    {
        var token = SoftHsm.CreateToken();
        var dataDir = Scratch.NewPath("kms-server-");

        // This node's head record cannot be read (a directory in its place): the audit start check
        // that reads it refuses, after the application (its container, the logger's owner) is built.
        var headRecord = Directory.CreateDirectory(Path.Combine(dataDir, "audit", SeenHead.FileName)).FullName;
        var sink = new DisposableSink();
        var refusal = await Assert.ThrowsAnyAsync<Exception>(() => KmsServerApp.BuildAsync(KmsTestServer.DevArgs(token, dataDir, "dev"), logging => logging.WriteTo.Sink(sink)));
        Assert.IsNotType<OperationCanceledException>(refusal, exactMatch: false);
        Assert.Contains("it is a directory", refusal.Message, StringComparison.Ordinal);

        // Before: the HSM, the store and the lease were closed, the application was not: its
        // container (and the logger it owns, with its sinks) was left undisposed.
        Assert.True(sink.Disposed, "the logger (and its sinks) should be disposed when the start is refused");
        Assert.Equal(0, sink.EmittedAfterDisposal);

        Directory.Delete(headRecord);
        await using var next = await KmsTestServer.StartAsync(token, dataDir);
        using var client = next.CreateClient();
        await client.CreateKeyAsync("tenants/dev", "after-a-refused-start");
    }

    [Fact]
    public async Task TheProcess_AnAuditStartCheckRefuses_ExitsWithTheRefusal_TheNextStartOnTheSameTokenServes()
    {
        var token = SoftHsm.CreateToken();
        using (var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin)))
        {
            session.ImportDomainKey(RandomNumberGenerator.GetBytes(32), "kms-domain-key", DomainKeyId);
        }

        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        var headRecord = Directory.CreateDirectory(Path.Combine(dataDir, "audit", SeenHead.FileName)).FullName;
        await using (var refused = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId))
        {
            var exitCode = await refused.ExitedAsync(TimeSpan.FromSeconds(120));
            Assert.True(exitCode == 2, $"exit code {exitCode}, 2 expected:\n{refused.Output}");
            Assert.Contains("kms: cannot start:", refused.Output, StringComparison.Ordinal);
            Assert.Contains("it is a directory", refused.Output, StringComparison.Ordinal);
            Assert.DoesNotContain("Unhandled exception", refused.Output, StringComparison.Ordinal);
        }

        // The same token (its sessions closed, the module finalised by the refused process) and data
        // directory (the SQLite serving lock let go): served by the next start.
        Directory.Delete(headRecord);
        await using var next = await ServerProcess.StartAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId);
        Assert.Equal(0, await next.TerminateAsync(TimeSpan.FromSeconds(60)));
    }

    // A FIFO where the node's record of its checkpoints lies: refused, naming it, without being
    // opened (a writer that waits for a reader is still waiting when the process has ended). Before,
    // the start opened it — an open(2) for reading that waits for a writer; with one, it read what
    // it wrote and failed with an unexplained NotSupportedException (a FIFO's length).
    [Fact]
    public async Task TheProcess_CheckpointsJsonlIsAFifo_RefusedNamingIt_NeverOpened()
    {
        var token = TokenWithDomainKey();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        var fifo = Path.Combine(Directory.CreateDirectory(Path.Combine(dataDir, "audit")).FullName, "checkpoints.jsonl");
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", ["-m", "600", fifo]) ?? throw new InvalidOperationException("mkfifo did not start"))
        {
            await mkfifo.WaitForExitAsync();
            Assert.Equal(0, mkfifo.ExitCode);
        }

        var opened = false;
        var writer = Task.Run(() =>
        {
            using var stream = new FileStream(fifo, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, bufferSize: 0); // returns once a reader opened it
            Volatile.Write(ref opened, true);
        });

        await using (var refused = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId))
        {
            var exitCode = await refused.ExitedAsync(TimeSpan.FromSeconds(120));
            Assert.False(Volatile.Read(ref opened), $"the start opened the FIFO:\n{refused.Output}");
            Assert.True(exitCode == 2, $"exit code {exitCode}, 2 expected:\n{refused.Output}");
            Assert.Contains($"kms: cannot start: {fifo}, this node's record of the audit checkpoints it signed, cannot be read: it is no regular file (a FIFO, a device or a socket: not opened)", refused.Output, StringComparison.Ordinal);
            Assert.DoesNotContain("Unhandled exception", refused.Output, StringComparison.Ordinal);
        }

        // The writer let go: opened for reading here, and closed.
        await using (new FileStream(fifo, FileMode.Open, FileAccess.Read))
        {
        }

        await writer;
    }

    // A FIFO where a dev-mode token file lies ({DataDir}/tokens): refused, naming it, without being
    // opened. Before, the start read it with File.ReadAllTextAsync, whose open(2) waits for a writer:
    // the start hung there, and a stop with it.
    [Fact]
    public async Task DevMode_ATokenFileIsAFifo_RefusedNamingIt_NeverOpened()
    {
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-server-")).FullName;
        var fifo = Path.Combine(Directory.CreateDirectory(Path.Combine(dataDir, "tokens")).FullName, "developer.token");
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", ["-m", "600", fifo]) ?? throw new InvalidOperationException("mkfifo did not start"))
        {
            await mkfifo.WaitForExitAsync();
            Assert.Equal(0, mkfifo.ExitCode);
        }

        var opened = false;
        var writer = Task.Run(() =>
        {
            using var stream = new FileStream(fifo, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, bufferSize: 0); // returns once a reader opened it
            Volatile.Write(ref opened, true);
        });

        try
        {
            // On a thread of its own, the hang guard's: the open(2) the old start made blocks the thread that makes it.
            var (refusal, _) = await Task.Run(() => KmsTestServer.StartRefusedAsync(SoftHsm.CreateToken(), dataDir)).WaitAsync(TimeSpan.FromSeconds(60));
            Assert.False(Volatile.Read(ref opened), "the start opened the FIFO");
            Assert.Equal($"{fifo}, the dev-mode token file of token:developer, is no regular file (a FIFO, a device or a socket: not opened); move it aside, and the start issues a new token there", refusal.Message);
        }
        finally
        {
            // The writer let go: opened for reading here, and closed.
            await using (new FileStream(fifo, FileMode.Open, FileAccess.Read))
            {
            }

            await writer;
        }
    }

    // A port another process holds: the start is refused with one line that names the setting and
    // the port (stderr, exit code 2), logged by nobody with a stack trace, and what the build had
    // opened is closed, so the next start on the same token and data directory serves. Before, the
    // metrics listener's own host logged "Hosting failed to start" with the stack trace, and the
    // server's host logged it again.
    [Theory]
    [InlineData("--Kms:MetricsUrl=http://127.0.0.1:{0}", "Kms:MetricsUrl")]
    [InlineData("--urls=https://127.0.0.1:{0}", "--urls")]
    public async Task TheProcess_APortIsInUse_RefusedInOneLineNamingTheSettingAndThePort_NoStackTrace_TheNextStartServes(string listen, string setting)
    {
        var token = TokenWithDomainKey();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        using (var holder = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0))
        {
            holder.Start();
            var port = ((System.Net.IPEndPoint)holder.LocalEndpoint).Port;
            var args = string.Format(System.Globalization.CultureInfo.InvariantCulture, listen, port);
            await using var refused = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, args);
            var exitCode = await refused.ExitedAsync(TimeSpan.FromSeconds(120));
            var output = refused.Output;
            Assert.True(exitCode == 2, $"exit code {exitCode}, 2 expected:\n{output}");
            var lines = output.Split('\n').Where(l => l.Contains($":{port}", StringComparison.Ordinal)).ToList();
            Assert.True(lines.Count == 1, $"{lines.Count} lines name the port {port}, one expected:\n{output}");
            Assert.StartsWith("kms: cannot start: ", lines[0], StringComparison.Ordinal);
            Assert.Contains(setting, lines[0], StringComparison.Ordinal);
            Assert.Contains("in use", lines[0], StringComparison.Ordinal);
            Assert.DoesNotContain("Hosting failed to start", output, StringComparison.Ordinal);

            // The whole output when it fails: one CI-like run (2026-12-07, load ~25) found a logged
            // "A task was canceled." with a stack trace here, not reproduced in 12 runs since.
            Assert.False(output.Replace(lines[0], "", StringComparison.Ordinal).Contains(" at ", StringComparison.Ordinal), $"a stack trace in the refused start's output:\n{output}");
        }

        await using var next = await ServerProcess.StartAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, "--Kms:MetricsUrl=http://127.0.0.1:0");
        Assert.Equal(0, await next.TerminateAsync(TimeSpan.FromSeconds(60)));
    }

    // An address this host does not have (192.0.2.1, TEST-NET-1, is no host's): refused in one line
    // naming the setting and the address (stderr, exit code 2), logged by nobody with a stack trace.
    // Before, Kestrel's SocketException ("Cannot assign requested address", no address) was logged
    // as "Hosting failed to start" with its stack trace, twice for the metrics listener.
    [Theory]
    [InlineData("--urls=https://192.0.2.1:8443", "--urls", "https://192.0.2.1:8443")]
    [InlineData("--Kms:MetricsUrl=http://192.0.2.1:9464 --Kms:MetricsAllowNonLoopback=true", "Kms:MetricsUrl", "http://192.0.2.1:9464")]
    public async Task TheProcess_AnAddressNotOfThisHost_RefusedInOneLineNamingTheSettingAndTheAddress_NoStackTrace(string listen, string setting, string address)
    {
        var token = TokenWithDomainKey();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        await using var refused = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, listen.Split(' '));
        var exitCode = await refused.ExitedAsync(TimeSpan.FromSeconds(120));
        var output = refused.Output;
        Assert.True(exitCode == 2, $"exit code {exitCode}, 2 expected:\n{output}");
        var lines = output.Split('\n').Where(l => l.Contains("192.0.2.1", StringComparison.Ordinal) || l.Contains("Hosting failed", StringComparison.Ordinal)).ToList();
        Assert.True(lines.Count == 1, $"{lines.Count} lines name the address or a failed start, one expected:\n{output}");
        Assert.StartsWith("kms: cannot start: ", lines[0], StringComparison.Ordinal);
        Assert.Contains($"({setting}) cannot listen: address not available on this host: {address}", lines[0], StringComparison.Ordinal);
        Assert.DoesNotMatch(@"(?m)^\s+at ", output);
    }

    // A time span or count out of its range: refused at build, one line naming the setting, its
    // value and its range (SettingRanges). Before, each started and served, doing something
    // other than it said: a negative Hsm:CallTimeout or a zero Hsm:KeyGenerationTimeout waited for
    // the HSM without bound, a negative Hsm:RecoveryBackoff re-initialised a lost HSM on every call,
    // a zero Storage:Postgres:IdleInTransactionTimeout lets a frozen node hold the write lock, a
    // negative Kms:Audit:Retention pruned the audit log up to the future.
    [Theory]
    [InlineData("Hsm:CallTimeout", "-00:00:05", "(-00:00:05) must be at least 00:00:00 and at most 01:00:00")]
    [InlineData("Hsm:KeyGenerationTimeout", "00:00:00", "(00:00:00) must be more than 00:00:00")]
    [InlineData("Hsm:RecoveryBackoff", "-00:00:05", "(-00:00:05) must be more than 00:00:00")]
    [InlineData("Hsm:SessionPoolSize", "0", "(0) must be at least 1")]
    [InlineData("Kms:Overload:Window", "-00:00:05", "(-00:00:05) must be more than 00:00:00")]
    [InlineData("Kms:Overload:Window", "00:00:00", "(00:00:00) must be more than 00:00:00")]
    [InlineData("Kms:Alerts:Window", "00:00:00", "(00:00:00) must be more than 00:00:00")]
    [InlineData("Kms:Audit:Retention", "-1.00:00:00", "(-1.00:00:00) must be more than 00:00:00")]
    [InlineData("Storage:Sqlite:BusyTimeout", "-00:00:01", "(-00:00:01) must be more than 00:00:00")]
    [InlineData("Storage:Postgres:IdleInTransactionTimeout", "00:00:00", "(00:00:00) must be more than 00:00:00")]
    [InlineData("UsageLimits:HardBound", "8589934592", "(8589934592) must be at least 1 and at most 4294967296")]
    [InlineData("Lifecycle:JobInterval", "1.00:00:01", "(1.00:00:01) must be more than 00:00:00 and at most 1.00:00:00")]
    public Task TheProcess_ASettingOutOfItsRange_RefusedInOneLineNamingTheSettingAndTheRange(string setting, string value, string says) =>
        RefusedInOneLineAsync(setting, value, $"{setting} {says}");

    // Two settings each in range that break a rule between them: refused at build in one line
    // naming both and their values (SettingRanges' rules; SettingRangesTests has every rule). Before,
    // each started: a queue delay target past its window failed the calls once it served, a soft
    // usage bound past the hard one let keys stop encrypting instead of rotating, a default waiting
    // period below the minimum scheduled a deleted tenant's keys' destruction sooner than allowed.
    [Theory]
    [InlineData("Kms:Overload:QueueDelayTarget", "00:00:01", "Kms:Overload:Window (00:00:00.5000000) must be longer than Kms:Overload:QueueDelayTarget (00:00:01): ")]
    [InlineData("UsageLimits:SoftBound", "4294967296", "UsageLimits:SoftBound (4294967296) must be less than UsageLimits:HardBound (2147483648): ")]
    [InlineData("Lifecycle:DefaultWaitingPeriod", "1.00:00:00", "Lifecycle:DefaultWaitingPeriod (1.00:00:00) must be at least Lifecycle:MinWaitingPeriod (7.00:00:00): ")]
    public Task TheProcess_TwoSettingsThatBreakARule_RefusedInOneLineNamingBoth(string setting, string value, string says) =>
        RefusedInOneLineAsync(setting, value, says);

    // The real binary started with --setting=value: exit code 2, one line naming the setting (the
    // refusal, starting with `says`), no stack trace.
    private static async Task RefusedInOneLineAsync(string setting, string value, string says)
    {
        var token = TokenWithDomainKey();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        await using var refused = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, $"--{setting}={value}");
        var exitCode = await refused.ExitedAsync(TimeSpan.FromSeconds(120));
        var output = refused.Output;
        Assert.True(exitCode == 2, $"exit code {exitCode}, 2 expected:\n{output}");
        var lines = output.Split('\n').Where(l => l.Contains(setting, StringComparison.Ordinal)).ToList();
        Assert.True(lines.Count == 1, $"{lines.Count} lines name {setting}, one expected:\n{output}");
        Assert.StartsWith($"kms: cannot start: {says}", lines[0], StringComparison.Ordinal);
        Assert.DoesNotMatch(@"(?m)^\s+at ", output);
    }

    // A newcomer's start mistakes: each refused in one line (stderr, exit code 2) that names the
    // setting to change, with no stack trace. Before: .NET's words without the setting ("Could not
    // find file '…'", "The file '…' already exists.", "cannot load the PKCS#11 module …: Unable to
    // load library"), a binder's message that did not say what the setting takes, and a negative
    // Lifecycle:JobInterval that started, then stopped with exit code 0 and "BackgroundService
    // failed" with a stack trace.
    [Theory]
    [InlineData("certificate missing", "Kms:TlsCertificatePath", "does not exist")]
    [InlineData("certificate unreadable", "Kms:TlsCertificatePath", "cannot be read")]
    [InlineData("key missing", "Kms:TlsKeyPath", "does not exist")]
    [InlineData("key encrypted", "Kms:TlsKeyPath", "is an encrypted private key")]
    [InlineData("data directory a file", "Kms:DataDir", "is a file, not a directory")]
    [InlineData("data directory not writable", "Kms:DataDir", "cannot be written")]
    [InlineData("module missing", "Hsm:ModulePath", "names no file")]
    [InlineData("module no PKCS#11 library", "Hsm:ModulePath", "must name the HSM's PKCS#11 library")]
    [InlineData("wrong PIN", "Hsm:PinFile", "must hold the token's user PIN")]
    [InlineData("token not found", "Hsm:TokenLabel", "no token labelled 'no-such-token'")]
    [InlineData("non-numeric number", "Kms:Transport:MaxConnections", "is 'many', which is not a whole number")]
    [InlineData("non-boolean switch", "Kms:MetricsAllowNonLoopback", "is 'maybe', which is not true or false")]
    [InlineData("negative interval", "Lifecycle:JobInterval", "(-00:00:05) must be more than 00:00:00")]
    public async Task TheProcess_AStartMistake_RefusedInOneLineNamingTheSetting_NoStackTrace(string mistake, string setting, string says)
    {
        var token = TokenWithDomainKey();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        var scratch = Directory.CreateDirectory(Scratch.NewPath("kms-mistake-")).FullName;
        var wrongPin = "9" + token.UserPin;
        string[] args = mistake switch
        {
            "certificate missing" => [$"--Kms:TlsCertificatePath={Path.Combine(scratch, "missing.crt")}"],
            "certificate unreadable" => [$"--Kms:TlsCertificatePath={scratch}"], // a directory: read as root or not
            "key missing" => [$"--Kms:TlsKeyPath={Path.Combine(scratch, "missing.key")}"],
            "key encrypted" => EncryptedKeyArgs(scratch),
            "data directory a file" => [$"--Kms:DataDir={Write(scratch, "a-file", "")}"],
            "data directory not writable" => ["--Kms:DataDir=/proc/1"], // nobody writes there, root neither
            "module missing" => [$"--Hsm:ModulePath={Path.Combine(scratch, "missing.so")}"],
            "module no PKCS#11 library" => [$"--Hsm:ModulePath={Write(scratch, "not-a-module.so", "text")}"],
            "wrong PIN" => [$"--Hsm:PinFile={Write(scratch, "pin", wrongPin)}"],
            "token not found" => ["--Hsm:TokenLabel=no-such-token"],
            "non-numeric number" => ["--Kms:Transport:MaxConnections=many"],
            "non-boolean switch" => ["--Kms:MetricsAllowNonLoopback=maybe"],
            "negative interval" => ["--Lifecycle:JobInterval=-00:00:05"],
            _ => throw new ArgumentOutOfRangeException(nameof(mistake)),
        };

        await using var refused = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, args);
        var exitCode = await refused.ExitedAsync(TimeSpan.FromSeconds(120));
        var output = refused.Output;
        Assert.True(exitCode == 2, $"exit code {exitCode}, 2 expected:\n{output}");
        var lines = output.Split('\n').Where(l => l.Contains(setting, StringComparison.Ordinal)).ToList();
        Assert.True(lines.Count == 1, $"{lines.Count} lines name {setting}, one expected:\n{output}");
        Assert.StartsWith("kms: cannot start: ", lines[0], StringComparison.Ordinal);
        Assert.Contains(says, lines[0], StringComparison.Ordinal);
        Assert.DoesNotMatch(@"(?m)^\s+at ", output);
        Assert.DoesNotContain("Hosting failed to start", output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", output, StringComparison.Ordinal);
        Assert.DoesNotContain(wrongPin, output, StringComparison.Ordinal);
        Assert.DoesNotContain(token.UserPin, output, StringComparison.Ordinal);
    }

    // A PIN the HSM refuses at start: the refusal line is the first the operator reads of it. Before,
    // Kms.Hsm logged event 2006 (Critical, "The HSM refused the PIN") as the open failed, and the
    // refusal line that says which setting to correct came after it; 2006 is for a login while
    // serving (a recovery's), which no refusal line follows.
    [Fact]
    public async Task TheProcess_APinTheHsmRefuses_TheRefusalLineIsTheFirstToSayIt_No2006()
    {
        var token = TokenWithDomainKey();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        var scratch = Directory.CreateDirectory(Scratch.NewPath("kms-mistake-")).FullName;
        await using var refused = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, $"--Hsm:PinFile={Write(scratch, "pin", "9" + token.UserPin)}");
        var exitCode = await refused.ExitedAsync(TimeSpan.FromSeconds(120));
        var output = refused.Output;
        Assert.True(exitCode == 2, $"exit code {exitCode}, 2 expected:\n{output}");
        var first = output.Split('\n').FirstOrDefault(l => l.Contains("PIN", StringComparison.Ordinal));
        Assert.True(first is not null && first.StartsWith("kms: cannot start: ", StringComparison.Ordinal), $"the first line about the PIN is not the refusal:\n{output}");
        Assert.DoesNotContain("The HSM refused the PIN", output, StringComparison.Ordinal); // event 2006's words
    }

    // A close that fails after a refusal (a fault injected into the application's disposal): logged
    // as 1329 by its type alone, and the refusal (its type and message) is what the build throws.
    // Before, the refusal came back as an InvalidOperationException whose message ended with the
    // close failure's type and message.
    [Fact]
    public async Task AStartRefusal_ClosingFailsToo_TheRefusalSurvives_TheCloseFailureLogged1329ByTypeOnly()
    {
        var token = SoftHsm.CreateToken();
        var dataDir = Scratch.NewPath("kms-server-");
        var headRecord = Directory.CreateDirectory(Path.Combine(dataDir, "audit", SeenHead.FileName)).FullName;
        var events = new List<LogEvent>();
        var refusal = await Assert.ThrowsAnyAsync<Exception>(() => KmsServerApp.BuildAsync(
            KmsTestServer.DevArgs(token, dataDir, "dev"),
            logging => logging.WriteTo.Sink(new CollectingSink(events)),
            services => services.AddSingleton<TimeProvider>(_ => new TimeFailingToClose())));

        Assert.IsType<Kms.Core.Errors.KmsException>(refusal);
        Assert.Contains("it is a directory", refusal.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(TimeFailingToClose.Detail, refusal.Message, StringComparison.Ordinal);
        lock (events)
        {
            var closeFailed = Assert.Single(events, e => e.Properties.TryGetValue("EventId", out var id) && id.ToString().Contains("1329", StringComparison.Ordinal));
            Assert.Equal(LogEventLevel.Error, closeFailed.Level);
            Assert.Equal(typeof(IOException).FullName, Assert.IsType<ScalarValue>(closeFailed.Properties["ExceptionType"]).Value);
            Assert.DoesNotContain(events, e => e.RenderMessage(System.Globalization.CultureInfo.InvariantCulture).Contains(TimeFailingToClose.Detail, StringComparison.Ordinal));
        }

        Directory.Delete(headRecord);
    }

    private static string Write(string directory, string name, string content)
    {
        var path = Path.Combine(directory, name);
        File.WriteAllText(path, content);
        return path;
    }

    // A certificate whose key file is encrypted (PKCS#8 with a password): a key nobody gave the server the password of.
    private static string[] EncryptedKeyArgs(string directory)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=kms-encrypted-key", key, HashAlgorithmName.SHA256);
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        var certificatePath = Write(directory, "server.crt", certificate.ExportCertificatePem());
        var keyPath = Write(directory, "server.key", key.ExportEncryptedPkcs8PrivateKeyPem("a password".AsSpan(), new PbeParameters(PbeEncryptionAlgorithm.Aes256Cbc, HashAlgorithmName.SHA256, 100_000)));
        return [$"--Kms:TlsCertificatePath={certificatePath}", $"--Kms:TlsKeyPath={keyPath}"];
    }

    private static TestToken TokenWithDomainKey()
    {
        var token = SoftHsm.CreateToken();
        using var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin));
        session.ImportDomainKey(RandomNumberGenerator.GetBytes(32), "kms-domain-key", DomainKeyId);
        return token;
    }

    private sealed class CollectingSink(List<LogEvent> events) : ILogEventSink
    {
        public void Emit(LogEvent logEvent)
        {
            lock (events)
            {
                events.Add(logEvent);
            }
        }
    }

    // The application's container disposes it (it made it, from the factory), and that fails.
    private sealed class TimeFailingToClose : TimeProvider, IAsyncDisposable
    {
        public const string Detail = "injected-close-failure-7f3c";

        public ValueTask DisposeAsync() => throw new IOException($"the close failed ({Detail})");
    }

    // A sink that says whether the logger disposed it, and whether anything was written to it after.
    private sealed class DisposableSink : ILogEventSink, IDisposable
    {
        private int _disposed;
        private int _emittedAfterDisposal;

        public bool Disposed => Volatile.Read(ref _disposed) != 0;

        public int EmittedAfterDisposal => Volatile.Read(ref _emittedAfterDisposal);

        public void Emit(LogEvent logEvent)
        {
            if (Disposed)
            {
                Interlocked.Increment(ref _emittedAfterDisposal);
            }
        }

        public void Dispose() => Interlocked.Exchange(ref _disposed, 1);
    }
}
