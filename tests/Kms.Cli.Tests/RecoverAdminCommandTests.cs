using System.Security.Cryptography;
using System.Text.Json;
using Kms.Cli.Infrastructure;
using Kms.Client.Quorum;
using Kms.Core.Quorum;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms quorum recover-admin</c>: a security officer asks for RECOVER_DEPLOYMENT_ADMIN, as for the
/// other deployment-wide requests; <c>kms officer approve</c> says which node holds the credential, and
/// <c>kms bootstrap</c> uses it, read from a file.
/// </summary>
public sealed class RecoverAdminCommandTests : IAsyncLifetime, IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob");
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private readonly string _directory = CliServerFixture.NewDirectory();
    private readonly AfterBootstrap _afterBootstrap = new();
    private KmsTestServer _server = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob"), 2));
        _server = await KmsTestServer.StartAsync(null, null, "dev", services =>
        {
            services.AddSingleton(_afterBootstrap);
            services.Configure<Grpc.AspNetCore.Server.GrpcServiceOptions>(o => o.Interceptors.Add<AfterBootstrapInterceptor>());
        }, $"--Kms:Quorum:GenesisFile={_genesisPath}", "--Kms:NodeName=cli-node");
    }

    public async Task DisposeAsync()
    {
        await _server.DisposeAsync();
        File.Delete(_genesisPath);
        Directory.Delete(_directory, recursive: true);
    }

    public void Dispose() => _officers.Dispose();

    [Fact]
    public async Task QuorumRecoverAdmin_PrintsTheRequestAndWhatOfficersSign_ApprovedItWritesTheCredential()
    {
        var variables = await CliRun.SecurityOfficerAsync(_server, _directory);

        var result = await CliRun.InProcessAsync(variables, _directory, null, "quorum", "recover-admin", "--ttl", "1h", "-o", "json");
        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.Out);
        var name = json.RootElement.GetProperty("name").GetString()!;
        Assert.StartsWith("quorumRequests/", name, StringComparison.Ordinal);
        var rendering = json.RootElement.GetProperty("rendering").GetString()!;
        Assert.Contains("\noperation: RECOVER_DEPLOYMENT_ADMIN\n", rendering, StringComparison.Ordinal);
        Assert.Contains("\nparam grants: one Bootstrap call, registering one new deployment-admin; the existing deployment admins stay\n", rendering, StringComparison.Ordinal);

        using var officer = _server.CreateClient((await File.ReadAllTextAsync(variables["KMS_TOKEN_FILE"])).Trim());
        using (var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf("alice").ExportParameters(true))))
        {
            await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, name));
        }

        // The executing approval, through the CLI, says which node holds the credential and where.
        var bobKey = Path.Combine(_directory, "bob.key");
        var passphrase = Path.Combine(_directory, "bob.passphrase");
        await File.WriteAllTextAsync(bobKey, _officers.KeyOf("bob").ExportEncryptedPkcs8PrivateKeyPem("bob's passphrase", new PbeParameters(PbeEncryptionAlgorithm.Aes256Cbc, HashAlgorithmName.SHA256, 1)));
        await File.WriteAllTextAsync(passphrase, "bob's passphrase\n");
        var credentialPath = Path.Combine(_server.DataDir, "bootstrap.token");
        var approved = await CliRun.InProcessAsync(variables, _directory, null, "officer", "approve", name, "--key", bobKey, "--key-passphrase-file", passphrase, "--yes");
        Assert.True(approved.ExitCode == 0, approved.ToString());
        Assert.Contains($"the request was executed: the recovery credential is on node cli-node in {credentialPath}", approved.Out, StringComparison.Ordinal);
        using (var shown = JsonDocument.Parse((await CliRun.InProcessAsync(variables, _directory, null, "quorum", "show", name, "-o", "json")).Out))
        {
            Assert.Equal(("cli-node", credentialPath), (shown.RootElement.GetProperty("executingNode").GetString(), shown.RootElement.GetProperty("credentialPath").GetString()));
        }

        Assert.True(File.Exists(credentialPath));
    }

    [Fact]
    public async Task Bootstrap_WithTheRecoveryCredentialFromItsFile_RegistersTheAdmin_SessionTokenInA0600File_Once()
    {
        var credentialPath = await RecoverAsync();
        var sessionPath = Path.Combine(_directory, "admin.session");
        var variables = new Dictionary<string, string> { ["KMS_ENDPOINT"] = _server.Address.ToString(), ["KMS_CA_FILE"] = _server.CaCertificatePath };

        // A token admin without a place for its session token: refused before the call, so the credential still works.
        var refused = await CliRun.InProcessAsync(variables, _directory, null, "bootstrap", "token:recovered-admin", "--credential-file", credentialPath);
        Assert.Equal(ExitCodes.Usage, refused.ExitCode);
        Assert.Contains("--session-token-out", refused.Error, StringComparison.Ordinal);

        var result = await CliRun.InProcessAsync(variables, _directory, null,
            "bootstrap", "token:recovered-admin", "--credential-file", credentialPath, "--session-token-out", sessionPath, "--display-name", "recovered", "-o", "json");
        Assert.True(result.ExitCode == 0, result.ToString());
        using (var json = JsonDocument.Parse(result.Out))
        {
            Assert.Equal(("token:recovered-admin", sessionPath), (json.RootElement.GetProperty("admin").GetString(), json.RootElement.GetProperty("session_token_file").GetString()));
        }

        var credential = (await File.ReadAllTextAsync(credentialPath)).Trim();
        var session = (await File.ReadAllTextAsync(sessionPath)).Trim();
        Assert.DoesNotContain(credential, result.Out + result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain(session, result.Out + result.Error, StringComparison.Ordinal);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(sessionPath));
        using (var admin = _server.CreateClient(session))
        {
            Assert.Contains(await admin.ListRoleBindingsAsync().ToListAsync(), b => b.Principal == "token:recovered-admin" && b.Role == "deployment-admin");
        }

        // Used up: a second run is refused by the server.
        var again = await CliRun.InProcessAsync(variables, _directory, null, "bootstrap", "token:second-admin", "--credential-file", credentialPath, "--session-token-out", Path.Combine(_directory, "second.session"));
        Assert.Equal(ExitCodes.Denied, again.ExitCode);
        Assert.False(File.Exists(Path.Combine(_directory, "second.session")));
    }

    [Theory]
    [InlineData("a directory", false)]
    [InlineData("a directory", true)]
    [InlineData("a dangling symbolic link", false)]
    public async Task Bootstrap_SessionTokenOutWhereNoFileCanGo_RefusedBeforeTheCall_TheCredentialStillWorks(string what, bool force)
    {
        // The call uses the credential up and the session token is shown once: a path the token cannot
        // be renamed to (a directory, even with --force; a link to nothing, which is a name taken) is
        // refused before it, not found out after it with the token lost.
        var credentialPath = await RecoverAsync();
        var variables = new Dictionary<string, string> { ["KMS_ENDPOINT"] = _server.Address.ToString(), ["KMS_CA_FILE"] = _server.CaCertificatePath };
        var blocked = Path.Combine(_directory, "blocked.session");
        if (what == "a directory")
        {
            Directory.CreateDirectory(blocked);
        }
        else
        {
            File.CreateSymbolicLink(blocked, Path.Combine(_directory, "nowhere"));
        }

        string[] args = ["bootstrap", "token:recovered-admin", "--credential-file", credentialPath, "--session-token-out", blocked, .. force ? new[] { "--force" } : []];
        var refused = await CliRun.InProcessAsync(variables, _directory, null, args);

        Assert.True(refused.ExitCode == ExitCodes.Usage, $"{what}: {refused}");
        Assert.Contains(blocked, refused.Error, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFiles(_directory, "*.partial", SearchOption.AllDirectories).Concat(Directory.GetFiles(_directory, ".blocked*")));
        var sessionPath = Path.Combine(_directory, "admin.session");
        var result = await CliRun.InProcessAsync(variables, _directory, null, "bootstrap", "token:recovered-admin", "--credential-file", credentialPath, "--session-token-out", sessionPath);
        Assert.True(result.ExitCode == 0, $"{what}: the credential no longer works: {result}");
    }

    [Fact]
    public async Task Bootstrap_SessionTokenFileFailsAfterTheCall_SaysTheAdminIsRegistered_TheTokenLost_AndWhatToDoNext()
    {
        // The name is taken while the call runs (the file was checked and opened before it): the
        // rename fails after the server registered the admin and used the credential up. "exit 9,
        // file exists" alone sent the operator back to a credential that no longer works.
        var credentialPath = await RecoverAsync();
        var sessionPath = Path.Combine(_directory, "admin.session");
        var variables = new Dictionary<string, string> { ["KMS_ENDPOINT"] = _server.Address.ToString(), ["KMS_CA_FILE"] = _server.CaCertificatePath };
        _afterBootstrap.Action = () => File.WriteAllText(sessionPath, "someone else's\n");

        var result = await CliRun.InProcessAsync(variables, _directory, null,
            "bootstrap", "token:recovered-admin", "--credential-file", credentialPath, "--session-token-out", sessionPath);
        _afterBootstrap.Action = null;

        Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
        Assert.StartsWith($"kms: token:recovered-admin IS registered as a deployment admin (the credential is used up), but its session token could not be written to {sessionPath} (",
            result.Error, StringComparison.Ordinal);
        Assert.Contains("the session token is lost, shown nowhere else", result.Error, StringComparison.Ordinal);
        Assert.Contains("a deployment admin whose credential works issues it a token", result.Error, StringComparison.Ordinal);
        Assert.Contains("RECOVER_DEPLOYMENT_ADMIN request (kms quorum recover-admin)", result.Error, StringComparison.Ordinal);
        Assert.Equal("someone else's\n", await File.ReadAllTextAsync(sessionPath));
        Assert.Empty(Directory.GetFiles(_directory, "*.partial", SearchOption.AllDirectories));

        // What it says is so: the admin exists, and the credential is spent.
        using (var admin = _server.CreateClient(_server.DeploymentAdminToken))
        {
            Assert.Contains(await admin.ListRoleBindingsAsync().ToListAsync(), b => b.Principal == "token:recovered-admin" && b.Role == "deployment-admin");
        }

        var again = await CliRun.InProcessAsync(variables, _directory, null, "bootstrap", "token:second-admin", "--credential-file", credentialPath, "--session-token-out", Path.Combine(_directory, "second.session"));
        Assert.Equal(ExitCodes.Denied, again.ExitCode);
    }

    [Theory]
    [InlineData("--credential", "kms_s3cretvalue")]
    [InlineData("--credential=kms_s3cretvalue")]
    public async Task Bootstrap_CredentialOnTheCommandLine_Refused_WithoutRepeatingIt(params string[] inline)
    {
        var result = await CliRun.InProcessAsync(new Dictionary<string, string>(), _directory, null, ["bootstrap", "token:x", .. inline]);
        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("--credential-file PATH or --credential-fd N", result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cretvalue", result.Out + result.Error, StringComparison.Ordinal);
    }

    // A RECOVER_DEPLOYMENT_ADMIN request approved by both officers: the path of the credential file.
    private async Task<string> RecoverAsync()
    {
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var request = await officer.RequestDeploymentAdminRecoveryAsync();
        foreach (var who in new[] { "alice", "bob" })
        {
            using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(who).ExportParameters(true)));
            await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, request.Name));
        }

        return Path.Combine(_server.DataDir, "bootstrap.token");
    }
}

/// <summary>A test's action, run on the server right after a Bootstrap call succeeded and before its answer goes out.</summary>
internal sealed class AfterBootstrap
{
    public Action? Action { get; set; }
}

/// <summary>Runs <see cref="AfterBootstrap.Action"/> after a successful Bootstrap.</summary>
internal sealed class AfterBootstrapInterceptor(AfterBootstrap hook) : Grpc.Core.Interceptors.Interceptor
{
    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, Grpc.Core.ServerCallContext context, Grpc.Core.UnaryServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        ArgumentNullException.ThrowIfNull(context);
        var response = await continuation(request, context);
        if (context.Method.EndsWith("/Bootstrap", StringComparison.Ordinal))
        {
            hook.Action?.Invoke();
        }

        return response;
    }
}
