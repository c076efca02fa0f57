using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Kms.Client;

namespace Kms.Testing;

/// <summary>
/// The real server as a child process (<c>dotnet Kms.Server.dll</c>, built beside src/Kms.Server):
/// for tests whose HSM tokens are made by other processes (SoftHSM shows a process only the
/// tokens that existed when it loaded the module), and for tests of what a process does.
/// Production mode: TLS from the dev CA generator under <c>{dataDir}/tls</c>.
/// </summary>
public sealed class ServerProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly List<(string Text, TaskCompletionSource Written)> _awaited = [];

    private ServerProcess(Process process, Uri address, string dataDir, bool readStandardOutput = true)
    {
        _process = process;
        Address = address;
        DataDir = dataDir;
        process.OutputDataReceived += (_, e) => Append(e.Data);
        process.ErrorDataReceived += (_, e) => Append(e.Data);
        if (readStandardOutput)
        {
            process.BeginOutputReadLine();
        }

        process.BeginErrorReadLine();
    }

    /// <summary>
    /// Starts the server as <see cref="StartAsync"/> does, but nothing reads its stdout (a pipe of
    /// 64 KiB, which fills) until <see cref="ReadStandardOutput"/>; its stderr is read.
    /// </summary>
    public static async Task<ServerProcess> StartWithStandardOutputUnreadAsync(string dataDir, string softHsmConf, string tokenLabel, string pinFile, string domainKeyId, params string[] extraArgs)
    {
        var server = Launch(dataDir, softHsmConf, tokenLabel, pinFile, domainKeyId, readStandardOutput: false, extraArgs);
        return await server.HealthyWithinAsync(dataDir);
    }

    /// <summary>
    /// Starts the server as <see cref="StartAsync"/> does with its stdout a Unix stream socket (as
    /// systemd's <c>StandardOutput=journal</c> gives it) whose other end, returned, nobody reads
    /// until the test does; its stderr is read. The socket is blocking, as the journal's is.
    /// </summary>
    public static async Task<(ServerProcess Server, Socket Reader)> StartWithStandardOutputOnSocketAsync(string dataDir, string softHsmConf, string tokenLabel, string pinFile, string domainKeyId, params string[] extraArgs)
    {
        var (reader, writer) = UnixSocketPair.Create();
        ServerProcess server;
        try
        {
            // Inheritable only while the child starts: a shell gives it to the server as its stdout.
            var inherited = UnixSocketPair.Inheritable(writer);
            try
            {
                server = Launch(dataDir, softHsmConf, tokenLabel, pinFile, domainKeyId, readStandardOutput: false, extraArgs, standardOutput: inherited);
            }
            finally
            {
                UnixSocketPair.Close(inherited);
            }
        }
        catch
        {
            reader.Dispose();
            throw;
        }
        finally
        {
            UnixSocketPair.Close(writer);
        }

        var socket = new Socket(reader);
        try
        {
            return (await server.HealthyWithinAsync(dataDir), socket);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>From now on, the process's stdout is read (all it wrote meanwhile first) into <see cref="Output"/>.</summary>
    public void ReadStandardOutput() => _process.BeginOutputReadLine();

    public Uri Address { get; }

    /// <summary>The server process's id (its descriptors are under <c>/proc/ID/fd</c>).</summary>
    public int ProcessId => _process.Id;

    public string DataDir { get; }

    public string CaCertificatePath => Path.Combine(DataDir, "tls", "ca.crt");

    /// <summary>Everything the process wrote so far (stdout and stderr).</summary>
    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    /// <summary>
    /// Starts a production-mode server on token <paramref name="tokenLabel"/> of the SoftHSM
    /// configuration <paramref name="softHsmConf"/> and waits until it answers health checks.
    /// </summary>
    public static async Task<ServerProcess> StartAsync(string dataDir, string softHsmConf, string tokenLabel, string pinFile, string domainKeyId, params string[] extraArgs)
    {
        var server = Launch(dataDir, softHsmConf, tokenLabel, pinFile, domainKeyId, extraArgs);
        return await server.HealthyWithinAsync(dataDir);
    }

    private async Task<ServerProcess> HealthyWithinAsync(string dataDir)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"the server exited with {_process.ExitCode}:\n{Output}");
            }

            if (File.Exists(Path.Combine(dataDir, "tls", "ca.crt")) && await HealthyAsync())
            {
                return this;
            }

            await Task.Delay(200);
        }

        await DisposeAsync();
        throw new TimeoutException($"the server did not become healthy within 60 s:\n{Output}");
    }

    /// <summary>
    /// Starts the server process as <see cref="StartAsync"/> does, without waiting for anything: for
    /// tests of what it does while it starts.
    /// </summary>
    public static ServerProcess Launch(string dataDir, string softHsmConf, string tokenLabel, string pinFile, string domainKeyId, params string[] extraArgs) =>
        Launch(dataDir, softHsmConf, tokenLabel, pinFile, domainKeyId, readStandardOutput: true, extraArgs);

    // standardOutput: a descriptor of this process, not close-on-exec, that the server gets as its
    // stdout (through bash, which execs it: the same process id) instead of a redirected pipe.
    private static ServerProcess Launch(string dataDir, string softHsmConf, string tokenLabel, string pinFile, string domainKeyId, bool readStandardOutput, string[] extraArgs, int? standardOutput = null)
    {
        var (certificate, key) = Kms.Server.Tls.DevCertificates.Ensure(Path.Combine(dataDir, "tls"), TimeProvider.System);
        var port = FreePort();
        var start = new ProcessStartInfo(standardOutput is null ? "dotnet" : "/bin/bash")
        {
            RedirectStandardOutput = standardOutput is null,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = dataDir,
        };
        if (standardOutput is { } descriptor)
        {
            foreach (var arg in (string[])["-c", $"exec \"$0\" \"$@\" >&{descriptor} {descriptor}>&-", "dotnet"])
            {
                start.ArgumentList.Add(arg);
            }
        }

        foreach (var arg in (string[])
        [
            ServerDll,
            $"--urls=https://127.0.0.1:{port}",
            $"--Kms:DataDir={dataDir}",
            $"--Kms:TlsCertificatePath={certificate}",
            $"--Kms:TlsKeyPath={key}",
            $"--Hsm:TokenLabel={tokenLabel}",
            $"--Hsm:PinFile={pinFile}",
            $"--Hsm:DomainKeyId={domainKeyId}",
            "--Hsm:SessionPoolSize=2",
            $"--Hsm:ModuleEnvironment:SOFTHSM2_CONF={softHsmConf}",

            // Distinct per data directory (so per node, and the same when a node restarts on it): nodes
            // sharing a PostgreSQL database may not share a name. A test's own --Kms:NodeName comes later and wins.
            $"--Kms:NodeName={Path.GetFileName(Path.TrimEndingDirectorySeparator(dataDir))}",
            .. extraArgs,
        ])
        {
            start.ArgumentList.Add(arg);
        }

        foreach (var name in start.Environment.Keys.Where(k => k.StartsWith("KMS_", StringComparison.Ordinal) || k == "SOFTHSM2_CONF").ToList())
        {
            start.Environment.Remove(name);
        }

        var process = Process.Start(start) ?? throw new InvalidOperationException("dotnet did not start");
        return new ServerProcess(process, new Uri($"https://127.0.0.1:{port}"), dataDir, readStandardOutput && standardOutput is null);
    }

    /// <summary>A client of this server with <paramref name="apiToken"/>.</summary>
    public KmsClient CreateClient(string? apiToken) =>
        new(new KmsClientOptions { Endpoint = Address, CaCertificatePath = CaCertificatePath, ApiToken = apiToken });

    /// <summary>
    /// First start only: uses the one-time bootstrap credential to create a deployment admin, the
    /// tenant, a developer (every tenant role) and a security officer; returns their session tokens.
    /// </summary>
    public async Task<(string Developer, string SecurityOfficer)> BootstrapAsync(string tenant)
    {
        var bootstrap = Path.Combine(DataDir, "bootstrap.token");
        string adminToken;
        using (var client = CreateClient((await File.ReadAllTextAsync(bootstrap)).Trim()))
        {
            adminToken = (await client.BootstrapAsync("token:test-admin")).SessionToken;
        }

        File.Delete(bootstrap);
        using var admin = CreateClient(adminToken);
        await admin.CreateTenantAsync(tenant);
        await admin.CreatePrincipalAsync("token:developer", $"tenants/{tenant}");
        foreach (var role in new[] { "admin", "key-manager", "key-importer", "key-user", "auditor" })
        {
            await admin.SetRoleBindingAsync("token:developer", role, $"tenants/{tenant}");
        }

        await admin.CreatePrincipalAsync("token:officer");
        await admin.SetRoleBindingAsync("token:officer", "security-officer");
        return ((await admin.CreateApiTokenAsync("token:developer", "SESSION", TimeSpan.FromHours(2))).Secret,
            (await admin.CreateApiTokenAsync("token:officer", "SESSION", TimeSpan.FromHours(2))).Secret);
    }

    private int _disposed;

    /// <summary>
    /// Sends SIGTERM, as an operator's stop does, and waits for the process to end (at most
    /// <paramref name="within"/>, then it is killed and this throws); returns its exit code, once
    /// everything it wrote is in <see cref="Output"/>.
    /// </summary>
    public async Task<int> TerminateAsync(TimeSpan within)
    {
        await SignalTermAsync();
        return await ExitedWithinAsync(within, "within {0} s of SIGTERM");
    }

    /// <summary>
    /// Waits for the process to end by itself (a refused start), at most <paramref name="within"/>
    /// (then it is killed and this throws); returns its exit code, once everything it wrote is in
    /// <see cref="Output"/>.
    /// </summary>
    public Task<int> ExitedAsync(TimeSpan within) => ExitedWithinAsync(within, "by itself within {0} s");

    // The exit code once the process has ended (WaitForExitAsync waits for the end of the
    // redirected output too); killed, and a TimeoutException naming how it was waited for, if it
    // has not within the time.
    private async Task<int> ExitedWithinAsync(TimeSpan within, string how)
    {
        using var timeout = new CancellationTokenSource(within);
        try
        {
            await _process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
            var waited = string.Format(System.Globalization.CultureInfo.InvariantCulture, how, within.TotalSeconds.ToString("0", System.Globalization.CultureInfo.InvariantCulture));
            throw new TimeoutException($"the server did not end {waited}:\n{Output}");
        }

        return _process.ExitCode;
    }

    /// <summary>
    /// Waits until the process writes a line that contains <paramref name="text"/> (at once if it
    /// already has), at most <paramref name="within"/>, then throws with what it wrote.
    /// </summary>
    public async Task WaitForOutputAsync(string text, TimeSpan within)
    {
        var written = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_output)
        {
            if (_output.ToString().Contains(text, StringComparison.Ordinal))
            {
                return;
            }

            _awaited.Add((text, written));
        }

        try
        {
            await written.Task.WaitAsync(within);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"the server wrote no line with \"{text}\" within {within.TotalSeconds:0} s:\n{Output}");
        }
    }

    /// <summary>Kills the process at once (SIGKILL): no drain, no shutdown, open connections reset — a node lost mid-request.</summary>
    public void Kill()
    {
        _process.Kill(entireProcessTree: true);
        _process.WaitForExit();
    }

    /// <summary>Stops the server as an operator would (SIGTERM), killing it if it does not exit within 20 s.</summary>
    /// <remarks>
    /// Once only: a test that disposed the server and then failed disposes it again in its
    /// <c>finally</c>, and a second disposal throwing there would replace the test's failure.
    /// </remarks>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        if (!_process.HasExited)
        {
            await SignalTermAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            try
            {
                await _process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }
        }

        _process.Dispose();
    }

    /// <summary>Sends SIGTERM and returns, without waiting for anything.</summary>
    public Task SignalAsync() => SignalTermAsync();

    private async Task SignalTermAsync()
    {
        using var kill = Process.Start("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])
            ?? throw new InvalidOperationException("kill did not start");
        await kill.WaitForExitAsync();
    }

    private static string ServerDll
    {
        get
        {
            var framework = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            var path = RepositoryPaths.Of("src", "Kms.Server", "bin", framework.Parent!.Name, framework.Name, "Kms.Server.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException($"the server is not built at {path}", path);
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private async Task<bool> HealthyAsync()
    {
        try
        {
            var ca = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(await File.ReadAllTextAsync(CaCertificatePath));
            using var handler = new SocketsHttpHandler();
            handler.SslOptions.CertificateChainPolicy = new System.Security.Cryptography.X509Certificates.X509ChainPolicy
            {
                TrustMode = System.Security.Cryptography.X509Certificates.X509ChainTrustMode.CustomRootTrust,
                RevocationMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck,
                CustomTrustStore = { ca },
            };
            using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(Address, new Grpc.Net.Client.GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = false });
            var reply = await new Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new Grpc.Health.V1.HealthCheckRequest(), deadline: DateTime.UtcNow.AddSeconds(5));
            return reply.Status == Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus.Serving;
        }
        catch (Exception e) when (e is Grpc.Core.RpcException or HttpRequestException or OperationCanceledException or IOException)
        {
            return false;
        }
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_output)
        {
            _output.Append(line).Append('\n');
            foreach (var awaited in _awaited.Where(a => line.Contains(a.Text, StringComparison.Ordinal)).ToList())
            {
                _awaited.Remove(awaited);
                awaited.Written.TrySetResult();
            }
        }
    }
}
