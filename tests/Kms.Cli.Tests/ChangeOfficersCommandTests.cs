using System.Security.Cryptography;
using System.Text.Json;
using Kms.Cli.Infrastructure;
using Kms.Core.Quorum;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms quorum change-officers</c> checks a new officer's name as <c>kms ceremony create-domain</c>
/// checks the genesis (claim 98): a bad one is a usage error and no request is created, not the
/// server's INVALID_ARGUMENT after the call. A name the same key has in the current set (from a
/// deployment made before the rule) may still be kept.
/// </summary>
public sealed class ChangeOfficersCommandTests : IAsyncLifetime, IDisposable
{
    // "olga " is a name of the genesis, written before the rule (CreateGenesis does not check it).
    private readonly TestOfficers _officers = new("olga ", "bob", "carol", "dave");
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private readonly string _directory = CliServerFixture.NewDirectory();
    private KmsTestServer _server = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("olga ", "bob", "carol"), 2));
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
    public async Task ChangeOfficers_NewNameWithSpacesOrReadingLikeAnother_UsageError_NoRequestCreated_AKeptNameAccepted()
    {
        var variables = await CliRun.SecurityOfficerAsync(_server, _directory);
        string Pub(string name)
        {
            var path = Path.Combine(_directory, name.Trim() + ".pub");
            File.WriteAllText(path, _officers.KeyOf(name).ExportSubjectPublicKeyInfoPem());
            return path;
        }

        var kept = $"olga ={Pub("olga ")}";
        var bob = $"bob={Pub("bob")}";
        foreach (var (dave, error) in new[]
        {
            ("dave ", "officers[2].name: the officer name \"dave \" has a space at its start or end, or two in a row: it would read as \"dave\""),
            ("d  ave", "officers[2].name: the officer name \"d  ave\" has a space at its start or end, or two in a row: it would read as \"d ave\""),
            ("BOB", "officers[2].name: the officer name \"BOB\" reads like the name of officer"),
            ("olga", "officers[2].name: the officer name \"olga\" reads like the name of officer"),
            ("dave#", "an officer name is 1 to 64 of [A-Za-z0-9 ._@-]"),
        })
        {
            var result = await CliRun.InProcessAsync(variables, _directory, null, "quorum", "change-officers",
                "--officer", kept, "--officer", bob, "--officer", $"{dave}={Pub("dave")}", "--threshold", "2", "--ttl", "1h");
            Assert.True(result.ExitCode == ExitCodes.Usage, $"{dave}: {result}");
            Assert.Contains(error, result.Error, StringComparison.Ordinal);
            Assert.DoesNotContain("INVALID_ARGUMENT", result.Error, StringComparison.Ordinal);
        }

        using (var officer = _server.CreateClient((await File.ReadAllTextAsync(variables["KMS_TOKEN_FILE"])).Trim()))
        {
            await foreach (var request in officer.ListQuorumRequestsAsync())
            {
                Assert.Fail($"a request was created: {request.Name}");
            }
        }

        // The same key keeping "olga " (the name it has in the current set) is no new name: accepted.
        var accepted = await CliRun.InProcessAsync(variables, _directory, null, "quorum", "change-officers",
            "--officer", kept, "--officer", bob, "--officer", $"dave={Pub("dave")}", "--threshold", "2", "--ttl", "1h", "-o", "json");
        Assert.True(accepted.ExitCode == ExitCodes.Ok, accepted.ToString());
        using var json = JsonDocument.Parse(accepted.Out);
        Assert.Equal("QUORUM_OPERATION_CHANGE_OFFICERS", json.RootElement.GetProperty("operation").GetString());
    }
}
