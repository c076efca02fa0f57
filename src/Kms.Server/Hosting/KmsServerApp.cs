using System.Net.Security;
using System.Security.Authentication;
using Kms.Core.Audit;
using Kms.Core.Ports;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Hsm;
using Kms.Server.Audit;
using Kms.Server.Grpc;
using Kms.Server.Health;
using Kms.Server.Observability;
using Kms.Server.Security;
using Kms.Server.Tls;
using Kms.Storage;
using Kms.Storage.Postgres;
using Kms.Storage.Sqlite;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.Options;
using Serilog;
using Serilog.Events;

namespace Kms.Server.Hosting;

/// <summary>
/// Builds the server: configuration, logging, TLS 1.3 listener, HSM, store, gRPC services.
/// Used by <c>Program</c> and, in-process, by the tests.
/// </summary>
public static partial class KmsServerApp
{
    /// <summary>Builds a server ready to start. HSM and database are opened (and verified) here.</summary>
    /// <param name="args">Command-line arguments; <c>--dev</c> turns on dev mode, <c>--urls</c> sets the listen addresses.</param>
    /// <param name="configureLogging">Extra Serilog configuration (tests add a capturing sink).</param>
    /// <param name="configureServices">Last word on services (tests replace the <see cref="TimeProvider"/>).</param>
    /// <param name="cancellationToken">
    /// A stop asked for while the server is built (<see cref="StartupStopSignals.Token"/>): the build
    /// ends with <see cref="OperationCanceledException"/>, logged (event 1320), what it had opened closed.
    /// </param>
    public static async Task<WebApplication> BuildAsync(
        string[] args,
        Action<LoggerConfiguration>? configureLogging = null,
        Action<IServiceCollection>? configureServices = null,
        CancellationToken cancellationToken = default)
    {
        var console = new ConsoleLogOutput();
        var logger = CreateLogger(console, configureLogging);
        var opened = new OpenedWhileBuilt();
        try
        {
            return await BuildWithLoggerAsync(args, logger, console, opened, configureServices, cancellationToken);
        }
        catch (Exception e) when (cancellationToken.IsCancellationRequested)
        {
            // Whatever the stop interrupted (a connect to the database ended with an exception of
            // its own, the audit checks), it is a stop, not a refusal to start: said, then what the
            // build had opened closed (the logger last).
            ServerLog.StoppedWhileStarting(ServerLogger(logger));
            await CloseAsync(opened, logger);
            throw new OperationCanceledException("a stop was asked for while the server was built", e, cancellationToken);
        }
        catch (Exception e)
        {
            // A refusal (Program prints its message): what the build had opened closed, the logger
            // last. Before, a check that refused once the application was built (the audit start
            // checks, the access provisioning, the quorum's) closed the HSM, the store and the lease
            // but not the application, whose container and the logger it owns stayed undisposed.
            // A close that fails too is logged (1329), and the refusal stays what the process
            // reports: before, the refusal was wrapped in an InvalidOperationException whose type
            // hid the refusal's, and whose message carried the close failure's.
            await CloseAsync(opened, logger);
            if (ConfigurationValues.Explain(e) is { } explained)
            {
                throw explained;
            }

            throw;
        }
    }

    // What the build had opened closed, then the logger; each close that failed logged (1329) by
    // its exception's type alone: its message may carry what the closed resource held (a
    // connection string, the module's words about a session).
    private static async Task CloseAsync(OpenedWhileBuilt opened, Serilog.Core.Logger logger)
    {
        var unclosed = await opened.CloseAsync();
        var log = ServerLogger(logger);
        foreach (var failure in unclosed)
        {
            ServerLog.StartCloseFailed(log, failure.GetType().FullName!);
        }

        await logger.DisposeAsync();
    }

    private static Microsoft.Extensions.Logging.ILogger ServerLogger(Serilog.Core.Logger logger) =>
        new Serilog.Extensions.Logging.SerilogLoggerFactory(logger).CreateLogger(typeof(KmsServerApp).Assembly.GetName().Name!);

    // What the build has opened so far, closed in the reverse order when the build does not end in
    // a server (a refusal, a stop asked for): the application built (its container: the audit log,
    // the services resolved by the start checks), then the HSM (its sessions closed, then the
    // module released: C_Finalize with the last user), the store (the audit writer's connection,
    // the serving lock), the lease. The container disposes the HSM, store and lease it resolved
    // itself (once per registration): disposing them again does nothing more. One step that throws
    // does not keep the next open.
    private sealed class OpenedWhileBuilt
    {
        public SqlStore? Store { get; set; }

        public ILeaderLease? Lease { get; set; }

        public Pkcs11Hsm? Hsm { get; set; }

        public WebApplication? App { get; set; }

        // Every step runs, whatever one before it threw; what each threw is returned.
        public async Task<IReadOnlyList<Exception>> CloseAsync()
        {
            var failures = new List<Exception>();
            foreach (var close in (Func<ValueTask>[])
            [
                () => App?.DisposeAsync() ?? ValueTask.CompletedTask,
                () => Hsm?.DisposeAsync() ?? ValueTask.CompletedTask,
                () => Store?.DisposeAsync() ?? ValueTask.CompletedTask,
                () => Lease is IAsyncDisposable lease ? lease.DisposeAsync() : ValueTask.CompletedTask,
            ])
            {
                try
                {
                    await close();
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    failures.Add(e);
                }
            }

            (App, Hsm, Store, Lease) = (null, null, null, null);
            return failures;
        }
    }

    private static async Task<WebApplication> BuildWithLoggerAsync(
        string[] args,
        Serilog.Core.Logger logger,
        ConsoleLogOutput console,
        OpenedWhileBuilt opened,
        Action<IServiceCollection>? configureServices,
        CancellationToken cancellationToken)
    {
        var devSwitch = args.Contains("--dev");
        var builder = WebApplication.CreateBuilder(args.Where(a => a != "--dev").ToArray());
        if (devSwitch)
        {
            builder.Configuration.AddInMemoryCollection([new("Kms:DevMode", "true")]);
        }

        var serverOptions = builder.Configuration.GetSection("Kms").Get<KmsServerOptions>() ?? new KmsServerOptions();
        builder.Services.Configure<KmsServerOptions>(builder.Configuration.GetSection("Kms"));
        if (devSwitch)
        {
            builder.Services.PostConfigure<KmsServerOptions>(o => o.DevMode = true);
        }

        builder.Services.AddSerilog(logger, dispose: true);

        // The SIEM stream on stdout: the logs go to stderr (ConsoleLogOutput says why).
        if (builder.Configuration["Kms:Audit:StreamPath"] == "-")
        {
            console.MoveToStandardError();
        }

        // Kestrel binds its own configuration section too, and an endpoint there would override
        // --urls unchecked (cleartext HTTP/2, other TLS versions): listeners come from --urls only.
        // Compared without case, as Kestrel reads them (KESTREL__ENDPOINTS__… is the same section).
        string[] refused = ["Endpoints", "EndpointDefaults", "Certificates"];
        var kestrelSection = builder.Configuration.GetSection("Kestrel").GetChildren().ToList();
        if (kestrelSection.Any(c => refused.Contains(c.Key, StringComparer.OrdinalIgnoreCase)))
        {
            throw new InvalidOperationException("Kestrel:Endpoints, Kestrel:EndpointDefaults and Kestrel:Certificates are not supported: listen addresses are set with --urls (https only, TLS 1.3) and the certificate with Kms:TlsCertificatePath");
        }

        // The rest of Kestrel's section (Kestrel:Limits and the like, as Microsoft's docs show
        // them) is never read by this host: refused, so that an operator's limit is not silently
        // without effect. The transport's limits are Kms:Transport:* (docs/deployment.md).
        if (kestrelSection.FirstOrDefault() is { } ignored)
        {
            throw new InvalidOperationException($"Kestrel:{ignored.Key} is not read by the server, so it would have no effect: the transport's limits are set with Kms:Transport:* (MaxConnections, MaxConnectionsPerClientAddress, TlsHandshakeTimeout, KeepAliveTimeout, RequestHeadersTimeout, MaxStreamsPerConnection; docs/deployment.md, \"Transport limits\")");
        }

        var urls = ListenAddresses.Validate(builder.Configuration["urls"]);
        var metricsUrl = ListenAddresses.ValidateMetrics(serverOptions.MetricsUrl, serverOptions.MetricsAllowNonLoopback);

        // Every time span and number, each by its range, then the rules between two settings
        // (SettingRanges; docs/deployment.md, "Setting ranges"). Lifecycle:JobInterval among them:
        // -5 s was refused by the worker's timer once the host had started, "BackgroundService
        // failed" with a stack trace, exit code 0.
        SettingRanges.Check(builder.Configuration);

        // Workload identity: every issuer complete and each key set file usable, or no start.
        serverOptions.Jwt.Validate();

        // The genesis file lies where the ceremony wrote it, the data directory (beside a SQLite
        // database, the officer-head record): nothing there can vouch for it, so whoever can write
        // there could swap in a genesis of their own officers before the first start, or with the
        // database's chain after it. The hash from the ceremony transcript, in the configuration,
        // is what pins it; a production server that uses quorum needs it (docs/quorum.md).
        if (!serverOptions.DevMode && serverOptions.Quorum.GenesisFile is { Length: > 0 } genesisFile && serverOptions.Quorum.GenesisSha256 is not { Length: > 0 })
        {
            throw new InvalidOperationException(
                $"Kms:Quorum:GenesisFile is set ({genesisFile}) but Kms:Quorum:GenesisSha256 is not: set it to the genesis hash in the create-domain transcript (kms ceremony create-domain prints it with the server configuration), so that a genesis file swapped in is refused; only dev mode goes without it");
        }

        // The reverse is a pin that pins nothing: without the file no genesis is loaded (nothing
        // else holds one: the database's officer chain is verified back to the file's set, and
        // no file refuses every quorum operation), so the server would start as if no genesis
        // were configured and the operator's hash would check nothing. Dev mode too: no mode
        // reads the hash without the file.
        if (serverOptions.Quorum.GenesisSha256 is { Length: > 0 } && serverOptions.Quorum.GenesisFile is not { Length: > 0 })
        {
            throw new InvalidOperationException(
                "Kms:Quorum:GenesisSha256 is set but Kms:Quorum:GenesisFile is not: the hash pins the genesis file and nothing else, so without the file it would check nothing and every quorum operation would be refused; set Kms:Quorum:GenesisFile to the genesis file the key ceremony wrote (kms ceremony create-domain prints both), or remove the hash");
        }

        var feedOptions = builder.Configuration.GetSection("Storage:ChangeFeed").Get<ChangeFeedOptions>() ?? new ChangeFeedOptions();

        // Recorded in the quorum requests this node executes, and shown to the officers: a name, not free text.
        if (serverOptions.NodeName is null || !NodeNamePattern().IsMatch(serverOptions.NodeName))
        {
            throw new InvalidOperationException($"Kms:NodeName must be 1 to 64 of [A-Za-z0-9._-] (it names this node in the quorum requests it executes); set it explicitly if the host name is not");
        }

        var transport = serverOptions.Transport;
        builder.WebHost.UseUrls([.. urls]);
        CheckDataDirectory(serverOptions.DataDir);
        var (certificatePath, keyPath) = ResolveTls(serverOptions);
        var tlsLogger = new Serilog.Extensions.Logging.SerilogLoggerFactory(logger).CreateLogger("Kms.Server.Tls");
        var serverCertificate = new ReloadingFile<SslStreamCertificateContext>(
            () => ServerCertificateChain.Load(certificatePath, keyPath),
            TimeProvider.System,
            e => ServerLog.TlsCertificateNotReloaded(tlsLogger, certificatePath, e.Message),
            certificatePath,
            keyPath);
        _ = serverCertificate.Value;
        BoundedDrainServer.Register(builder.Services, transport.ShutdownDrainTimeout, builder.Configuration);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;

            // Reachable without a credential: each bound explicit, each an operator's setting (Kms:Transport).
            kestrel.Limits.MaxConcurrentConnections = transport.MaxConnections;
            kestrel.Limits.KeepAliveTimeout = transport.KeepAliveTimeout;
            kestrel.Limits.RequestHeadersTimeout = transport.RequestHeadersTimeout;
            kestrel.Limits.Http2.MaxStreamsPerConnection = transport.MaxStreamsPerConnection;

            // What a request's headers may make the server decode and hold: a call's metadata is small.
            kestrel.Limits.MaxRequestHeadersTotalSize = RequestHeaderLimits.TotalBytes;
            kestrel.Limits.MaxRequestHeaderCount = RequestHeaderLimits.Count;
            kestrel.Limits.Http2.MaxRequestHeaderFieldSize = RequestHeaderLimits.FieldBytes;
            kestrel.Limits.Http2.HeaderTableSize = RequestHeaderLimits.HeaderTableBytes;
            var connectionLimit = new Overload.ClientAddressConnectionLimit(
                transport.MaxConnectionsPerClientAddress,
                new Serilog.Extensions.Logging.SerilogLoggerFactory(logger).CreateLogger("Kms.Server.Transport"));
            kestrel.ConfigureEndpointDefaults(listen =>
            {
                listen.Protocols = HttpProtocols.Http2;

                // Added before the endpoint's TLS: a connection over the bound is closed before its handshake.
                listen.Use(connectionLimit.Middleware);
            });
            kestrel.ConfigureHttpsDefaults(https =>
            {
                https.HandshakeTimeout = transport.TlsHandshakeTimeout;
                // Read per handshake (the files are checked at most once a second): a renewed
                // certificate and chain are served without a restart. Kestrel's selector hands
                // SslStream a lone certificate, whose chain SslStream builds from the system
                // stores, without the file's intermediates: each handshake is given the whole
                // context instead (OnAuthenticate runs after Kestrel's own settings). The selector
                // stays because Kestrel refuses an https endpoint without a certificate or one.
                https.ServerCertificateSelector = (_, _) => serverCertificate.Value.TargetCertificate;
                https.OnAuthenticate = (_, ssl) =>
                {
                    ssl.ServerCertificateSelectionCallback = null;
                    ssl.ServerCertificate = null;
                    ssl.ServerCertificateContext = serverCertificate.Value;
                };
                https.SslProtocols = SslProtocols.Tls13;
                if (serverOptions.ClientCaPath is { Length: > 0 })
                {
                    // HTTP/2 cannot renegotiate, so the certificate is asked for at the handshake.
                    // Any certificate is let through here and verified per call (CallerAuthentication),
                    // so that a bad one is a clear UNAUTHENTICATED instead of a failed handshake.
                    https.ClientCertificateMode = ClientCertificateMode.AllowCertificate;
                    https.ClientCertificateValidation = (_, _, _) => true;
                }
            });
        });

        var hsmOptions = builder.Configuration.GetSection("Hsm").Get<HsmOptions>() ?? new HsmOptions();
        var sqliteOptions = builder.Configuration.GetSection("Storage:Sqlite").Get<SqliteOptions>() ?? new SqliteOptions();
        // One switch for dev mode: Hsm:DevMode cannot turn it on behind the server's back.
        hsmOptions.DevMode = serverOptions.DevMode;
        if (serverOptions.DevMode)
        {
            ApplyDevDefaults(serverOptions, builder.Configuration, hsmOptions, sqliteOptions);
        }

        // The database lives with the rest of the state (README's configuration table), in
        // production too — not in whatever directory the process was started from.
        if (builder.Configuration["Storage:Sqlite:DatabasePath"] is null)
        {
            sqliteOptions.DatabasePath = Path.Combine(Path.GetFullPath(serverOptions.DataDir), "kms.db");
        }

        var (store, lease) = await OpenStoreAsync(builder.Configuration, sqliteOptions, serverOptions.NodeName, cancellationToken);
        (opened.Store, opened.Lease) = (store, lease);
        store.MetadataCacheCapacity = builder.Configuration.GetValue("Storage:MetadataCacheCapacity", SqlStore.DefaultMetadataCacheCapacity);
        var loggerFactory = new Serilog.Extensions.Logging.SerilogLoggerFactory(logger);
        var hsm = await OpenHsmAsync(hsmOptions, loggerFactory.CreateLogger("Kms.Hsm"), cancellationToken);
        opened.Hsm = hsm;
        cancellationToken.ThrowIfCancellationRequested();
        await DomainKeyGuard.VerifyAsync(hsm, store, serverOptions.DevMode, cancellationToken);
        builder.Services.AddSingleton(LoadQuorumOptions(serverOptions.Quorum) with
        {
            HeadRecord = new OfficerHeadFile(Path.Combine(serverOptions.DataDir, "quorum", "officer-head"), loggerFactory.CreateLogger("Kms.Quorum")),
            NodeName = serverOptions.NodeName,
            CredentialPath = AccessProvisioning.BootstrapCredentialPath(serverOptions),
            BackupExportUnsupported = store is SqliteStore
                ? null
                : $"backups through the API are SQLite snapshots; a {store.Provider} database is backed up with its own tools (docs/deployment.md)",
        });
        builder.Services.AddSingleton(_ => lease); // a factory: the container disposes it (closing the lease's session) at shutdown
        var app = Build(builder, hsm, store, serverOptions, feedOptions, metricsUrl, logger, configureServices);
        opened.App = app;

        // Before the first call: a node whose clock was set back (or a VM restored) accepts no
        // credential that expired by the time this deployment recorded as seen.
        await app.Services.GetRequiredService<TrustedTime>().RefreshAsync(cancellationToken);
        await app.Services.GetRequiredService<AuditWorker>().InitializeAsync(cancellationToken);
        await AccessProvisioning.RunAsync(app.Services, serverOptions, loggerFactory.CreateLogger("Kms.Access"), cancellationToken);
        await InitializeQuorumAsync(app.Services, serverOptions.Quorum, loggerFactory.CreateLogger("Kms.Quorum"), cancellationToken);
        return app;
    }

    // The HSM's open (the module's load, C_Initialize, the logins) takes no token and may hang in
    // native code: a network HSM's library that waits for its server, a module file on a mount that
    // does not answer. A stop asked for meanwhile ends the build all the same (event 1320): the
    // open is left to its thread, and what it opens if it ever ends is closed then. Before, the
    // first SIGTERM did nothing until the open ended, and only a second one (the runtime's
    // default) ended the process, with nothing logged.
    private static async Task<Pkcs11Hsm> OpenHsmAsync(HsmOptions options, Microsoft.Extensions.Logging.ILogger logger, CancellationToken cancellationToken)
    {
        var opening = Task.Run(() => Pkcs11Hsm.Open(options, logger), CancellationToken.None);
        try
        {
            return await opening.WaitAsync(cancellationToken);
        }
        catch (HsmConfigurationException e) when (HsmNextStep(e.Failure, options) is { Length: > 0 } step)
        {
            throw new HsmConfigurationException(e.Message + step, e) { Failure = e.Failure };
        }
        catch (OperationCanceledException)
        {
            // Also an open that ended as the stop came: closed here, as the build no longer takes it.
            _ = opening.ContinueWith(
                static async abandoned =>
                {
                    if (abandoned.IsCompletedSuccessfully)
                    {
                        await abandoned.Result.DisposeAsync();
                    }
                    else
                    {
                        _ = abandoned.Exception; // observed: the build has ended with the stop
                    }
                },
                CancellationToken.None,
                TaskContinuationOptions.None,
                TaskScheduler.Default).Unwrap();
            throw;
        }
    }

    // What the operator does about an HSM that cannot be opened, with the settings that say which
    // (Kms.Hsm's messages name the module, the token and the return value; the CLI adds its own
    // flags in the same way). Never the PIN.
    private static string HsmNextStep(HsmFailure failure, HsmOptions options) => failure switch
    {
        HsmFailure.ModuleNotLoaded when !File.Exists(options.ModulePath) =>
            " — Hsm:ModulePath names no file: set it to the HSM's PKCS#11 library (a .so file, e.g. /usr/lib/softhsm/libsofthsm2.so)",
        HsmFailure.ModuleNotLoaded =>
            " — Hsm:ModulePath must name the HSM's PKCS#11 library (a .so file exporting C_GetFunctionList), and Hsm:ModuleEnvironment what it reads at load",
        HsmFailure.TokenNotFound =>
            " — check Hsm:TokenLabel, and the token directory the module reads (Hsm:ModuleEnvironment, e.g. SOFTHSM2_CONF)",
        HsmFailure.PinRefused =>
            $" — {(string.IsNullOrEmpty(options.PinFile) ? "Hsm:Pin" : $"Hsm:PinFile {options.PinFile}")} must hold the token's user PIN; correct it before starting again: a real HSM locks the token after a few wrong tries",
        _ => "",
    };

    // The data directory holds the database (SQLite), the audit records, the quorum's head record and
    // dev mode's TLS files: a file there, or a directory the process cannot write, was refused by
    // whichever step first wrote in it, with .NET's words ("The file '…' already exists.", "Access
    // to the path '…/kms.db' is denied.") and no setting's name.
    private static void CheckDataDirectory(string dataDir)
    {
        var path = Path.GetFullPath(dataDir);
        if (File.Exists(path))
        {
            throw new InvalidOperationException($"Kms:DataDir {path} is a file, not a directory: set Kms:DataDir to a directory the server's user can write (it holds the database, the audit records and the quorum's head record)");
        }

        try
        {
            Kms.Core.Files.DurableFile.CreateDirectory(path);
            using var probe = new FileStream(Path.Combine(path, $".write-check-{Environment.ProcessId}"), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"Kms:DataDir {path} cannot be written ({e.Message}): give the server's user write access to it, or set Kms:DataDir to a directory it can write (it holds the database, the audit records and the quorum's head record)", e);
        }
    }

    // Storage:Provider chooses the backend: sqlite (one node, the default) or postgres (any
    // number of nodes sharing the database; the deployment's once-only jobs follow a lease in it).
    private static async Task<(SqlStore Store, ILeaderLease Lease)> OpenStoreAsync(ConfigurationManager configuration, SqliteOptions sqliteOptions, string nodeName, CancellationToken cancellationToken)
    {
        switch (configuration["Storage:Provider"] ?? "sqlite")
        {
            case "sqlite":
                var embedded = await SqliteStore.OpenAsync(sqliteOptions, cancellationToken);
                bool held;
                try
                {
                    held = await embedded.TryHoldServingLockAsync(cancellationToken);
                }
                catch (IOException e)
                {
                    await embedded.DisposeAsync();
                    throw new InvalidOperationException($"the serving lock beside the SQLite database cannot be taken: {e.Message}", e);
                }
                catch
                {
                    // A stop asked for meanwhile (OperationCanceledException): the database closed all the same.
                    await embedded.DisposeAsync();
                    throw;
                }

                if (!held)
                {
                    await embedded.DisposeAsync();
                    throw new InvalidOperationException(
                        "an offline maintenance (kms ceremony rotate-domain) holds this SQLite database; start the server when it has finished");
                }

                return (embedded, new SingleNodeLease());
            case "postgres":
                var options = configuration.GetSection("Storage:Postgres").Get<PostgresOptions>() ?? new PostgresOptions();
                if (configuration["Storage:Postgres:ConnectionStringFile"] is { Length: > 0 } file)
                {
                    // The password stays out of configuration dumps and the process environment.
                    options.ConnectionString = File.Exists(file)
                        ? File.ReadAllText(file).Trim()
                        : throw new InvalidOperationException($"Storage:Postgres:ConnectionStringFile {file} does not exist");
                }

                var store = await PostgresStore.OpenAsync(options, cancellationToken);
                try
                {
                    // WaitAsync: a connect that Npgsql does not cancel is abandoned (PostgresStore.OpenAsync says why).
                    if (!await store.TryHoldServingLockAsync(cancellationToken).WaitAsync(cancellationToken))
                    {
                        throw new InvalidOperationException(
                            "an offline maintenance (kms ceremony rotate-domain) holds this PostgreSQL database; start the node when it has finished");
                    }

                    await HoldNodeNameAsync(store, nodeName, options.NodeNameWait, cancellationToken).WaitAsync(cancellationToken);
                }
                catch
                {
                    // A refusal, or a stop asked for meanwhile (OperationCanceledException): the store closed all the same.
                    await store.DisposeAsync();
                    throw;
                }

                return (store, new PostgresLeaderLease(options, TimeProvider.System));
            case var other:
                throw new InvalidOperationException($"Storage:Provider is '{other}'; it must be sqlite or postgres");
        }
    }

    // Quorum requests record the node that executed them by Kms:NodeName, so officers know whose data
    // directory holds a recovery credential or a backup: two live nodes with one name (two containers
    // with one host name) would make that ambiguous. A name still held may be a node that vanished
    // (PostgreSQL lets its session go within about 25 s): waited for up to `wait`, then refused.
    private static async Task HoldNodeNameAsync(PostgresStore store, string nodeName, TimeSpan wait, CancellationToken cancellationToken)
    {
        var started = TimeProvider.System.GetTimestamp();
        while (await store.TryHoldNodeNameAsync(nodeName, cancellationToken) is { } holder)
        {
            if (TimeProvider.System.GetElapsedTime(started) >= wait)
            {
                throw new InvalidOperationException(
                    $"Kms:NodeName {nodeName} is held by another live node of this PostgreSQL database ({holder}; waited {wait.TotalSeconds:0} s): "
                    + "the quorum requests a node executes name it, so names must be distinct. Give this node its own Kms:NodeName "
                    + "(the default, the host name, may be shared by containers); if that node is gone, start again once PostgreSQL has let its session go");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(500), cancellationToken);
        }
    }

    private static WebApplication Build(
        WebApplicationBuilder builder,
        Pkcs11Hsm hsm,
        SqlStore store,
        KmsServerOptions serverOptions,
        ChangeFeedOptions feedOptions,
        string? metricsUrl,
        Serilog.ILogger logger,
        Action<IServiceCollection>? configureServices)
    {
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton(builder.Configuration.GetSection("Lifecycle").Get<LifecycleOptions>() ?? new LifecycleOptions());
        builder.Services.AddSingleton(builder.Configuration.GetSection("UsageLimits").Get<UsageLimitOptions>() ?? new UsageLimitOptions());
        builder.Services.AddSingleton(new LifecycleWorkerOptions(builder.Configuration.GetValue("Lifecycle:JobInterval", LifecycleWorkerOptions.DefaultInterval)));

        // Registered through factories so the container owns them (a server built and never
        // started disposes them with it). The HSM is drained and finalised by the host's stop, as
        // its last step (HsmStop, the first hosted service: stopped after every other), within
        // what is left of the host's stop time; the container's disposal then finds it stopped.
        builder.Services.AddSingleton(_ => hsm);
        builder.Services.AddSingleton<IHsm>(services => services.GetRequiredService<Pkcs11Hsm>());
        builder.Services.AddHostedService(services => new HsmStop(services.GetRequiredService<Pkcs11Hsm>()));
        builder.Services.AddSingleton<IKeyStore>(_ => store);
        builder.Services.AddSingleton<IAccessStore>(_ => store);
        builder.Services.AddSingleton<IAuditStore>(_ => store);
        builder.Services.AddSingleton<IQuorumStore>(_ => store);
        builder.Services.AddSingleton<IChangeFeed>(_ => store);
        builder.Services.AddSingleton<IMetadataCoherence>(_ => store);
        builder.Services.AddSingleton(feedOptions);
        builder.Services.AddSingleton<ClusterCoherenceWorker>();
        builder.Services.AddHostedService(services => services.GetRequiredService<ClusterCoherenceWorker>());
        var auditHost = builder.Configuration.GetSection("Kms:Audit").Get<AuditHostOptions>() ?? new AuditHostOptions();
        if (!auditHost.Enabled && !serverOptions.DevMode)
        {
            throw new InvalidOperationException("Kms:Audit:Enabled=false is for benchmarks in dev mode only; a production server always audits");
        }

        builder.Services.AddSingleton(auditHost);
        builder.Services.AddSingleton(builder.Configuration.GetSection("Kms:Audit").Get<AuditOptions>() ?? new AuditOptions());
        builder.Services.AddSingleton(builder.Configuration.GetSection("Kms:Alerts").Get<SecurityAlertOptions>() ?? new SecurityAlertOptions());
        builder.Services.AddSingleton<AuditLog>();
        builder.Services.AddSingleton<Kms.Server.Grpc.ListPageTokens>();
        builder.Services.AddSingleton<SecurityAlerts>();
        builder.Services.AddSingleton<AuditWorker>();
        builder.Services.AddHostedService(services => services.GetRequiredService<AuditWorker>());
        builder.Services.AddSingleton<AuditInterceptor>();
        builder.Services.AddSingleton<UsageCounter>();
        builder.Services.AddSingleton<KeyService>();
        builder.Services.AddSingleton<KeyAccessService>();
        builder.Services.AddSingleton<CryptoService>();
        builder.Services.AddSingleton<SigningService>();
        builder.Services.AddSingleton<AttestationService>();
        builder.Services.AddSingleton<AliasService>();
        builder.Services.AddSingleton<AccessService>();
        builder.Services.AddSingleton<QuorumService>();
        builder.Services.AddSingleton(services => new Kms.Server.Backup.BackupExporter(
            store, services.GetRequiredService<AuditLog>(), hsm, services.GetRequiredService<TimeProvider>(), Path.Combine(Path.GetFullPath(serverOptions.DataDir), "backups"),
            services.GetRequiredService<ILoggerFactory>().CreateLogger("Kms.Server.Backup")));
        builder.Services.AddSingleton<TrustedTime>();
        builder.Services.AddSingleton<Authenticator>();
        builder.Services.AddSingleton<LifecycleClock>();
        builder.Services.AddSingleton<LifecycleWorker>();
        builder.Services.AddHostedService(services => services.GetRequiredService<LifecycleWorker>());
        builder.Services.AddSingleton(services => new CallerAuthentication(
            services.GetRequiredService<Authenticator>(),
            services.GetRequiredService<IOptions<KmsServerOptions>>(),
            services.GetRequiredService<TrustedTime>(),
            services.GetRequiredService<TimeProvider>(),
            serverOptions.ClientCaPath is { Length: > 0 } ca
                ? new ClientCertificateValidator(
                    ca,
                    serverOptions.ClientCrlPath is { Length: > 0 } crl ? crl : null,
                    services.GetRequiredService<TrustedTime>(),
                    services.GetRequiredService<TimeProvider>(),
                    services.GetRequiredService<ILogger<ClientCertificateValidator>>())
                : null,
            serverOptions.Jwt.Issuers.Count > 0
                ? new JwtValidator(serverOptions.Jwt.Issuers, services.GetRequiredService<TimeProvider>(), services.GetRequiredService<ILogger<JwtValidator>>())
                : null,
            serverOptions.MaxFailedAuthenticationsPerClientAddress > 0
                ? new FailedAuthenticationLimit(serverOptions.MaxFailedAuthenticationsPerClientAddress, services.GetRequiredService<TimeProvider>())
                : null,
            services.GetRequiredService<ILogger<CallerAuthentication>>()));
        builder.Services.AddSingleton<TenantQuotas>();
        builder.Services.AddSingleton<Overload.QueueDelayMonitor>();
        builder.Services.AddSingleton(new Overload.RequestBytesInFlight(serverOptions.MaxRequestBytesInFlightPerTenant));
        builder.Services.AddSingleton<AuthorizationInterceptor>();
        builder.Services.AddSingleton<MetricsInterceptor>();
        builder.Services.AddSingleton<ErrorInterceptor>(); // one refusal-log throttle per server
        if (metricsUrl is not null)
        {
            MetricsEndpoint.AddServices(builder.Services, metricsUrl, logger);
        }

        builder.Services.AddGrpc(grpc =>
        {
            // Outermost first: metrics see every call with the status its caller gets (the audit's
            // UNAVAILABLE included); the audit records every call with its final status; errors
            // are mapped for everything below, including refusals.
            grpc.Interceptors.Add<MetricsInterceptor>();
            if (auditHost.Enabled)
            {
                grpc.Interceptors.Add<AuditInterceptor>();
            }

            grpc.Interceptors.Add<ErrorInterceptor>();
            grpc.Interceptors.Add<AuthorizationInterceptor>();
            grpc.MaxReceiveMessageSize = serverOptions.MaxRequestBytes;
            grpc.EnableDetailedErrors = false;
        });
        builder.Services.AddGrpcReflection();
        // Singletons, so that concurrent checks share one probe (SingleFlightHealthCheck).
        builder.Services.AddSingleton<HsmHealthCheck>();
        builder.Services.AddSingleton<StoreHealthCheck>();
        builder.Services.AddSingleton<AuditWriteHealthCheck>();
        builder.Services.AddSingleton<Microsoft.Extensions.Diagnostics.HealthChecks.IHealthCheckPublisher, HealthTransitionPublisher>();
        builder.Services.Configure<Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckPublisherOptions>(o =>
        {
            o.Delay = TimeSpan.FromSeconds(1);
            o.Period = HealthTransitionPublisher.Period;
        });
        builder.Services.AddSingleton<AuditSigningHealthCheck>();
        builder.Services.AddGrpcHealthChecks(o =>
            {
                o.UseHealthChecksCache = false;

                // The node's status is every check but those of a service of their own: a node
                // refusing to sign audit checkpoints still serves (AuditSigningHealthCheck).
                o.Services.Map("", r => !r.Tags.Contains(AuditSigningHealthCheck.NotInOverall));
                o.Services.Map(AuditSigningHealthCheck.Service, r => r.Name == AuditSigningHealthCheck.Service);
            })
            .AddCheck<HsmHealthCheck>("hsm")
            .AddCheck<StoreHealthCheck>("store")
            .AddCheck<AuditWriteHealthCheck>("audit")
            .AddCheck<AuditSigningHealthCheck>(AuditSigningHealthCheck.Service, tags: [AuditSigningHealthCheck.NotInOverall]);

        // Every service's methods bound by ParseCheckedMethodProvider instead of grpc-dotnet's
        // binder: a malformed request body is the caller's INVALID_ARGUMENT, refused by the
        // AuthorizationInterceptor after authentication (counted and audited as a refusal), not
        // UNKNOWN and an Error with a stack trace per request before any interceptor.
        var grpcBinder = builder.Services.Single(d => d.ServiceType == typeof(global::Grpc.AspNetCore.Server.Model.IServiceMethodProvider<>)
            && d.ImplementationType?.Name == "BinderServiceMethodProvider`1");
        builder.Services.Remove(grpcBinder);
        builder.Services.AddSingleton(typeof(global::Grpc.AspNetCore.Server.Model.IServiceMethodProvider<>), typeof(Kms.Server.Grpc.ParseCheckedMethodProvider<>));
        configureServices?.Invoke(builder.Services);

        var app = builder.Build();
        UnservedCallMetrics.Use(app);
        Kms.Server.Grpc.GrpcFramingCheck.Use(app, serverOptions.MaxRequestBytes);
        app.MapGrpcService<KeyManagementGrpcService>();
        app.MapGrpcService<AccessManagementGrpcService>();
        app.MapGrpcService<AuditGrpcService>();
        app.MapGrpcService<QuorumGrpcService>();
        app.MapGrpcReflectionService();
        app.MapGrpcHealthChecksService();

        // Resolve now so the container takes ownership even if the app never handles a request.
        app.Services.GetRequiredService<Pkcs11Hsm>();
        return app;
    }

    /// <summary>
    /// Starts the server built by <see cref="BuildAsync"/>; false when a stop was asked for (SIGTERM,
    /// <see cref="IHostApplicationLifetime.StopApplication"/>) before it was serving — logged (event
    /// 1320), and what had started stopped again — instead of the host's
    /// <see cref="OperationCanceledException"/>.
    /// </summary>
    /// <remarks>
    /// The host's start runs on a token that a stop cancels (the process's SIGTERM handler is set
    /// when the start begins): a stop while a hosted service starts (the listeners bound, the
    /// workers' first passes) ends the start with <see cref="OperationCanceledException"/>, which
    /// Program let escape as an unhandled exception, with a stack trace and an abort's exit code.
    /// </remarks>
    public static async Task<bool> StartUnlessStoppedAsync(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        try
        {
            await app.StartAsync();
            return true;
        }
        catch (OperationCanceledException) when (app.Lifetime.ApplicationStopping.IsCancellationRequested)
        {
            ServerLog.StoppedWhileStarting(app.Logger);
            await app.StopAsync();
            return false;
        }
    }

    /// <summary>The gRPC addresses the started server listens on (the real port when 0 was asked for).</summary>
    public static IReadOnlyList<Uri> BoundAddresses(WebApplication app) =>
        app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Select(a => new Uri(a)).ToList();

    /// <summary>Where the started server serves Prometheus metrics (<c>http://…/metrics</c>), or null when it has no metrics listener.</summary>
    public static Uri? BoundMetricsUrl(WebApplication app) =>
        app.Services.GetService<MetricsEndpoint.MetricsServer>()?.Address is { } address ? new Uri(address, MetricsEndpoint.Path) : null;

    // The genesis is pinned outside the database: a file the ceremony wrote, checked against the
    // hash in the ceremony transcript (required outside dev mode, BuildAsync). A configured file
    // that cannot be read or does not match refuses to start (a configuration error); no file
    // refuses quorum operations.
    private static QuorumOptions LoadQuorumOptions(QuorumHostOptions options)
    {
        if (options.GenesisFile is not { Length: > 0 } path)
        {
            return new QuorumOptions { MaxSignTimeSkew = options.MaxSignTimeSkew };
        }

        OfficerSet genesis;
        try
        {
            genesis = GenesisFile.Read(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or Kms.Core.Errors.KmsException)
        {
            throw new InvalidOperationException($"Kms:Quorum:GenesisFile {path}: {e.Message}", e);
        }

        if (options.GenesisSha256 is { Length: > 0 } pinned && !string.Equals(pinned, genesis.Hash, StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidOperationException($"Kms:Quorum:GenesisFile {path} holds the officer set {genesis.Hash}, not the pinned Kms:Quorum:GenesisSha256 {pinned}");
        }

        return new QuorumOptions { Genesis = genesis, MaxSignTimeSkew = options.MaxSignTimeSkew };
    }

    // A stored chain that does not verify does not stop the server (keys keep being served);
    // it refuses every quorum operation, and says so here and in each refusal.
    private static async Task InitializeQuorumAsync(IServiceProvider services, QuorumHostOptions options, Microsoft.Extensions.Logging.ILogger logger, CancellationToken cancellationToken)
    {
        try
        {
            var head = await services.GetRequiredService<QuorumService>().InitializeAsync(cancellationToken);
            if (head is null)
            {
                ServerLog.QuorumNotConfigured(logger);
            }
            else
            {
                ServerLog.QuorumReady(logger, head.Sequence, head.Hash, head.Threshold, head.Officers.Count, options.GenesisFile!);
                if (services.GetRequiredService<QuorumOptions>().Genesis is { } genesis && genesis.PreviousHash == OfficerSet.NoPrevious)
                {
                    ServerLog.QuorumGenesisShared(logger, genesis.Hash, options.GenesisFile!);
                }
            }
        }
        catch (Kms.Core.Errors.KmsException e) when (e.Code == Kms.Core.Errors.KmsErrorCode.FailedPrecondition)
        {
            ServerLog.QuorumChainBroken(logger, e.Message);
        }
    }

    private static (string CertificatePath, string KeyPath) ResolveTls(KmsServerOptions options)
    {
        if (options.TlsCertificatePath is { Length: > 0 } certificate && options.TlsKeyPath is { Length: > 0 } key)
        {
            return (certificate, key);
        }

        if (!options.DevMode)
        {
            throw new InvalidOperationException("set Kms:TlsCertificatePath and Kms:TlsKeyPath (PEM), or start in dev mode (--dev)");
        }

        return DevCertificates.Ensure(Path.Combine(options.DataDir, "tls"), TimeProvider.System);
    }

    // Dev mode keeps everything under the data directory; explicit configuration still wins.
    private static void ApplyDevDefaults(KmsServerOptions options, ConfigurationManager configuration, HsmOptions hsm, SqliteOptions sqlite)
    {
        var dataDir = Path.GetFullPath(options.DataDir);
        if (configuration["Hsm:TokenLabel"] is null)
        {
            hsm.TokenLabel = "kms-dev";
        }

        if (configuration["Hsm:PinFile"] is null && configuration["Hsm:Pin"] is null)
        {
            hsm.PinFile = Path.Combine(dataDir, "hsm", "user.pin");
        }

        // The SoftHSM token dev.sh made under the data directory, unless told otherwise.
        var softHsmConfig = Path.Combine(dataDir, "hsm", "softhsm2.conf");
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("SOFTHSM2_CONF"))
            && !hsm.ModuleEnvironment.ContainsKey("SOFTHSM2_CONF")
            && File.Exists(softHsmConfig))
        {
            hsm.ModuleEnvironment["SOFTHSM2_CONF"] = softHsmConfig;
        }
    }

    // One logger per server instance (not Serilog's static one), so that in-process test
    // servers each capture their own events.
    private static Serilog.Core.Logger CreateLogger(ConsoleLogOutput console, Action<LoggerConfiguration>? configureLogging)
    {
        var configuration = new LoggerConfiguration()
            .MinimumLevel.Information()
            .MinimumLevel.Override("Microsoft.AspNetCore", LogEventLevel.Warning)
            .MinimumLevel.Override("Microsoft.Hosting.Lifetime", LogEventLevel.Information)
            .MinimumLevel.Override("Grpc", LogEventLevel.Warning)
            .MinimumLevel.Override("Microsoft.Extensions.Diagnostics.HealthChecks", LogEventLevel.Fatal) // 1140/1141 instead
            .Enrich.FromLogContext()

            // A listener that cannot bind (a port in use, an address not of this host) fails the
            // start of the host that binds it, and of the server's host when that is the metrics
            // listener's: each logged "Hosting failed to start" with the stack
            // trace, before Program's one line said the same.
            .Filter.ByExcluding(CannotListenException.IsRefusalLoggedByProgram);
        configuration.WriteTo.Sink(console);

        configureLogging?.Invoke(configuration);
        return configuration.CreateLogger();
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"\A[A-Za-z0-9._-]{1,64}\z")]
    private static partial System.Text.RegularExpressions.Regex NodeNamePattern();
}
