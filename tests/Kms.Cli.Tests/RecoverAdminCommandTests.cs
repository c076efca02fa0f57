using System.Security.Cryptography;
using System.Text.Json;
using Kms.Client.Quorum;
using Kms.Core.Quorum;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary><c>kms quorum recover-admin</c>: a security officer asks for RECOVER_DEPLOYMENT_ADMIN, as for the other deployment-wide requests.</summary>
public sealed class RecoverAdminCommandTests : IAsyncLifetime, IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob");
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private readonly string _directory = CliServerFixture.NewDirectory();
    private KmsTestServer _server = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob"), 2));
        _server = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}");
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
        var officerToken = Path.Combine(_directory, "officer.token");
        await File.WriteAllTextAsync(officerToken, await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer") + "\n");
        var variables = new Dictionary<string, string>
        {
            ["KMS_ENDPOINT"] = _server.Address.ToString(),
            ["KMS_CA_FILE"] = _server.CaCertificatePath,
            ["KMS_TOKEN_FILE"] = officerToken,
        };

        var result = await CliRun.InProcessAsync(variables, _directory, null, "quorum", "recover-admin", "--ttl", "1h", "-o", "json");
        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.Out);
        var name = json.RootElement.GetProperty("name").GetString()!;
        Assert.StartsWith("quorumRequests/", name, StringComparison.Ordinal);
        var rendering = json.RootElement.GetProperty("rendering").GetString()!;
        Assert.Contains("\noperation: RECOVER_DEPLOYMENT_ADMIN\n", rendering, StringComparison.Ordinal);
        Assert.Contains("\nparam grants: one Bootstrap call, registering one new deployment-admin; the existing deployment admins stay\n", rendering, StringComparison.Ordinal);

        using var officer = _server.CreateClient((await File.ReadAllTextAsync(officerToken)).Trim());
        foreach (var who in new[] { "alice", "bob" })
        {
            using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(who).ExportParameters(true)));
            await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, name));
        }

        Assert.True(File.Exists(Path.Combine(_server.DataDir, "bootstrap.token")));
    }
}
