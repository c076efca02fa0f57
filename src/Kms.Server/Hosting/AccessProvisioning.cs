using Kms.Core.Access;
using Kms.Core.Files;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;

namespace Kms.Server.Hosting;

/// <summary>
/// First credentials, at start-up. Dev mode: the dev tenant, a deployment admin, a developer
/// (every tenant role in dev) and a key-user service, each with a token in
/// <c>{DataDir}/tokens/</c> (mode 0600), re-issued when missing or within a day of expiry. Production: while no deployment admin exists, a
/// fresh one-time bootstrap credential in <see cref="KmsServerOptions.BootstrapTokenPath"/>.
/// </summary>
internal static partial class AccessProvisioning
{
    /// <summary>Dev-mode principals and the files their tokens go to.</summary>
    public static readonly IReadOnlyList<(PrincipalName Principal, string File, Role[] Roles, ApiTokenKind Kind)> DevPrincipals =
    [
        (PrincipalName.Token("dev-admin"), "deployment-admin.token", [Role.DeploymentAdmin], ApiTokenKind.Session),
        (PrincipalName.Token("developer"), "developer.token", [Role.Admin, Role.KeyManager, Role.KeyImporter, Role.KeyUser, Role.Auditor], ApiTokenKind.Session),
        (PrincipalName.Token("dev-app"), "key-user.token", [Role.KeyUser], ApiTokenKind.Service),
    ];

    /// <summary>Dev tokens live this long (dev mode only; production sessions are 15 minutes).</summary>
    public static readonly TimeSpan DevTokenLifetime = TimeSpan.FromDays(30);

    public static async Task RunAsync(IServiceProvider services, KmsServerOptions options, ILogger logger, CancellationToken cancellationToken)
    {
        var access = services.GetRequiredService<AccessService>();
        var store = services.GetRequiredService<IAccessStore>();
        if (options.DevMode)
        {
            await ProvisionDevAsync(services, access, store, options, logger, cancellationToken);
            return;
        }

        var text = await access.RenewBootstrapTokenAsync(cancellationToken);
        if (text is not null)
        {
            LogBootstrap(logger, WriteBootstrapCredential(options, text));
        }
    }

    /// <summary>Writes a one-time credential to <see cref="KmsServerOptions.BootstrapTokenPath"/> (mode 0600, replacing any file there); returns the path.</summary>
    public static string WriteBootstrapCredential(KmsServerOptions options, string text)
    {
        var path = BootstrapCredentialPath(options);
        SecretFiles.Write(path, text + "\n");
        return path;
    }

    /// <summary>The full path of the bootstrap-credential file: <see cref="KmsServerOptions.BootstrapTokenPath"/>, default <c>{DataDir}/bootstrap.token</c>.</summary>
    public static string BootstrapCredentialPath(KmsServerOptions options) =>
        Path.GetFullPath(options.BootstrapTokenPath ?? Path.Combine(options.DataDir, "bootstrap.token"));

    /// <summary>
    /// An executed RECOVER_DEPLOYMENT_ADMIN request's credential, written where the start-up one goes;
    /// false (logged with the path and the error, never the credential) when the file cannot be
    /// written: the caller then revokes the credential.
    /// </summary>
    public static bool TryWriteRecoveryCredential(KmsServerOptions options, RecoveryCredential credential, string request, ILogger logger)
    {
        try
        {
            LogRecovery(logger, request, WriteBootstrapCredential(options, credential.Text));
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            LogRecoveryNotWritten(logger, request, BootstrapCredentialPath(options), e.Message);
            return false;
        }
    }

    private static async Task ProvisionDevAsync(IServiceProvider services, AccessService access, IAccessStore store, KmsServerOptions options, ILogger logger, CancellationToken cancellationToken)
    {
        var authenticator = services.GetRequiredService<Authenticator>();
        var time = services.GetRequiredService<TimeProvider>();
        var tokens = Path.GetFullPath(Path.Combine(options.DataDir, "tokens"));
        var tenant = TenantId.Parse(options.Tenant, "Kms:Tenant");
        var existing = await store.GetTenantAsync(tenant, cancellationToken);
        if (existing is null)
        {
            await access.CreateTenantAsync(tenant, "dev mode", cancellationToken);
        }

        // A dev tenant being deleted gets no new principal, binding or token (the store refuses
        // them): its principals are left as they are, the deployment admin's token still issued.
        var deleting = existing is { State: TenantState.Deleting };
        if (deleting)
        {
            LogDevTenantDeleting(logger, tenant.ResourceName);
        }

        // First run, a lost file, or a token about to expire: issue a fresh one.
        foreach (var (principal, file, roles, kind) in DevPrincipals)
        {
            var path = Path.Combine(tokens, file);

            // Looked at before it is opened: open(2) for reading waits, on a FIFO, until something
            // opens it for writing, and a device reads without end. Before, a FIFO there held the
            // start in File.ReadAllTextAsync for good (a stop too: the wait is in native code).
            if (FileKind.IsSpecial(path))
            {
                throw new InvalidOperationException($"{path}, the dev-mode token file of {principal}, is no regular file (a FIFO, a device or a socket: not opened); move it aside, and the start issues a new token there");
            }

            var current = File.Exists(path) ? await authenticator.AuthenticateTokenAsync((await File.ReadAllTextAsync(path, cancellationToken)).Trim(), cancellationToken) : null;
            if (current?.ValidUntil is { } until && until > time.GetUtcNow().AddDays(1))
            {
                continue;
            }

            var home = roles.All(Roles.IsDeploymentRole) ? (TenantId?)null : tenant;
            if (deleting && home is not null)
            {
                continue;
            }

            // A deleted principal gets nothing new (the store refuses it), nor is its name taken again.
            if (await store.GetPrincipalAsync(principal, cancellationToken) is { Deleted: true })
            {
                LogDevPrincipalDeleted(logger, principal.ToString(), file);
                continue;
            }

            var text = await access.ProvisionAsync(principal, home, roles, kind, DevTokenLifetime, cancellationToken);
            SecretFiles.Write(path, text + "\n");
        }

        LogDevTokens(logger, tokens);
    }

    [LoggerMessage(EventId = 1010, Level = LogLevel.Warning,
        Message = "No deployment admin yet: a one-time bootstrap credential is in {Path} (mode 0600). Call AccessManagementService.Bootstrap with it; it is invalid after that first use.")]
    private static partial void LogBootstrap(ILogger logger, string path);

    [LoggerMessage(EventId = 1014, Level = LogLevel.Warning,
        Message = "Quorum request {Request} (RECOVER_DEPLOYMENT_ADMIN) executed: a one-time recovery credential, valid 15 minutes, is in {Path} (mode 0600). Call AccessManagementService.Bootstrap with it to register a new deployment admin; it is invalid after that first use.")]
    private static partial void LogRecovery(ILogger logger, string request, string path);

    [LoggerMessage(EventId = 1015, Level = LogLevel.Error,
        Message = "Quorum request {Request} (RECOVER_DEPLOYMENT_ADMIN) executed, but its recovery credential could not be written to {Path}: {Error}. The credential is revoked (event 1016 if that fails too); create a new request")]
    private static partial void LogRecoveryNotWritten(ILogger logger, string request, string path, string error);

    [LoggerMessage(EventId = 1012, Level = LogLevel.Warning,
        Message = "Dev mode: {Tenant} is being deleted, so its developer and key-user tokens are not issued again; use another --Kms:Tenant or a fresh data directory")]
    private static partial void LogDevTenantDeleting(ILogger logger, string tenant);

    [LoggerMessage(EventId = 1013, Level = LogLevel.Warning,
        Message = "Dev mode: {Principal} was deleted, so {File} is not issued again; use a fresh data directory to have it back")]
    private static partial void LogDevPrincipalDeleted(ILogger logger, string principal, string file);

    [LoggerMessage(EventId = 1011, Level = LogLevel.Information,
        Message = "Dev mode API tokens (mode 0600) are in {Directory}: developer.token (every role in the dev tenant), key-user.token, deployment-admin.token")]
    private static partial void LogDevTokens(ILogger logger, string directory);
}
