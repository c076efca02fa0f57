using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Kms.Cli.Infrastructure;
using Kms.Core.Access;
using Kms.Core.Names;
using Kms.Core.Ports;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Cli.Tests;

/// <summary><c>kms tenants|principals|tokens|roles</c> against the real server, as its deployment admin.</summary>
public sealed class AccessCommandTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Onboarding_TenantPrincipalRoleToken_ThenOffboardingAndItsUndo()
    {
        var id = $"t{Guid.NewGuid():N}"[..20];
        var tenant = $"tenants/{id}";
        Assert.Equal(("ACTIVE", "Payments"), Pair(await AdminJsonAsync("tenants", "create", id, "--display-name", "Payments"), "state", "displayName"));
        Assert.Equal("ACTIVE", (await AdminJsonAsync("tenants", "get", tenant)).GetProperty("state").GetString());
        Assert.Contains((await AdminJsonAsync("tenants", "list")).GetProperty("tenants").EnumerateArray(), t => t.GetProperty("name").GetString() == tenant);

        var principal = $"token:{id}-app";
        Assert.Equal(tenant, (await AdminJsonAsync("principals", "create", principal, "--tenant", id)).GetProperty("tenant").GetString());
        Assert.Equal("key-manager", (await AdminJsonAsync("roles", "bind", principal, "key-manager", "--tenant", id)).GetProperty("role").GetString());
        Assert.Contains((await AdminJsonAsync("roles", "list", "--tenant", id)).GetProperty("bindings").EnumerateArray(), b => b.GetProperty("principal").GetString() == principal);

        // The token's secret goes to its file (0600) and nowhere else.
        var issued = await AdminAsync("tokens", "create", principal, "--kind", "service", "--lifetime", "7d", "--out", "app.token", "-o", "json");
        Assert.True(issued.ExitCode == 0, issued.ToString());
        var tokenFile = Path.Combine(_directory, "app.token");
        var secret = (await File.ReadAllTextAsync(tokenFile)).Trim();
        Assert.StartsWith("kms_", secret, StringComparison.Ordinal);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(tokenFile));
        Assert.DoesNotContain(secret, issued.Out + issued.Error, StringComparison.Ordinal);
        var tokenId = JsonDocument.Parse(issued.Out).RootElement.GetProperty("id").GetString()!;
        Assert.Equal(tokenFile, JsonDocument.Parse(issued.Out).RootElement.GetProperty("token_file").GetString());

        var app = Variables(tokenFile, id);
        Assert.True((await CliRun.InProcessAsync(app, _directory, null, "keys", "create", "orders")).ExitCode == 0);

        // Offboarding needs the id repeated; a wrong one changes nothing.
        var unconfirmed = await AdminAsync("tenants", "delete", id, "--confirm", "other");
        Assert.Equal(ExitCodes.Usage, unconfirmed.ExitCode);
        Assert.Equal("ACTIVE", (await AdminJsonAsync("tenants", "get", id)).GetProperty("state").GetString());
        Assert.Equal("DELETING", (await AdminJsonAsync("tenants", "delete", id, "--confirm", id, "--days", "7")).GetProperty("state").GetString());
        var refused = await CliRun.InProcessAsync(app, _directory, null, "keys", "get", "orders");
        Assert.Contains("is being deleted", refused.Error, StringComparison.Ordinal);

        // Undone: the tenant is ACTIVE, its key still scheduled until its manager cancels it.
        var undo = await AdminAsync("tenants", "cancel-deletion", id, "-o", "json");
        Assert.True(undo.ExitCode == 0, undo.ToString());
        var undone = JsonDocument.Parse(undo.Out).RootElement;
        Assert.Equal(("ACTIVE", 1), (undone.GetProperty("tenant").GetProperty("state").GetString(), undone.GetProperty("scheduledKeys").GetInt32()));
        Assert.Contains("kms keys cancel-deletion KEY", undo.Error, StringComparison.Ordinal);
        var cancelled = await CliRun.InProcessAsync(app, _directory, null, "keys", "cancel-deletion", "orders", "-o", "json");
        Assert.True(cancelled.ExitCode == 0, cancelled.ToString());
        Assert.Equal("KEY_STATE_DISABLED", JsonDocument.Parse(cancelled.Out).RootElement.GetProperty("state").GetString());

        // Revoked, the token no longer authenticates; the principal is offboarded.
        Assert.Single((await AdminJsonAsync("tokens", "list", principal)).GetProperty("tokens").EnumerateArray());
        Assert.Equal(tokenId, (await AdminJsonAsync("tokens", "revoke", tokenId)).GetProperty("revoked").GetString());
        Assert.Equal(ExitCodes.Denied, (await CliRun.InProcessAsync(app, _directory, null, "keys", "get", "orders")).ExitCode);
        Assert.True((await AdminJsonAsync("roles", "unbind", principal, "key-manager", "--tenant", id)).GetProperty("removed").GetBoolean());
        Assert.Equal("DELETED", (await AdminJsonAsync("principals", "delete", principal)).GetProperty("state").GetString());
        Assert.Empty((await AdminJsonAsync("principals", "list", "--tenant", id)).GetProperty("principals").EnumerateArray());
    }

    [Fact]
    public async Task TokensCreate_ToStandardOutputOrOverAnExistingFile_RefusedBeforeATokenIsIssued()
    {
        var principal = $"token:cli-{Guid.NewGuid():N}"[..30];
        await AdminJsonAsync("principals", "create", principal, "--tenant", "dev");
        await File.WriteAllTextAsync(Path.Combine(_directory, "taken"), "keep me");

        var dash = await AdminAsync("tokens", "create", principal, "--kind", "service", "--out", "-");
        var existing = await AdminAsync("tokens", "create", principal, "--kind", "service", "--out", "taken");
        var kind = await AdminAsync("tokens", "create", principal, "--kind", "bootstrap", "--out", "other");

        Assert.Equal((ExitCodes.Usage, ExitCodes.Usage, ExitCodes.Usage), (dash.ExitCode, existing.ExitCode, kind.ExitCode));
        Assert.Contains("not standard output", dash.Error, StringComparison.Ordinal);
        Assert.Equal("keep me", await File.ReadAllTextAsync(Path.Combine(_directory, "taken")));
        Assert.Empty((await AdminJsonAsync("tokens", "list", principal)).GetProperty("tokens").EnumerateArray());
    }

    [Fact]
    public async Task TokensListAndRolesList_MoreThanAPage_EveryPageFetched()
    {
        // More than the server's default (and largest) page of 1000: the CLI pages through them
        // all, rather than showing the first page as if it were the whole list.
        var id = $"p{Guid.NewGuid():N}"[..20];
        var principal = $"token:{id}";
        await AdminJsonAsync("tenants", "create", id);
        await AdminJsonAsync("principals", "create", principal, "--tenant", id);
        var store = fixture.Server.Services.GetRequiredService<IAccessStore>();
        var name = PrincipalName.Parse(principal, "principal");
        var tenant = TenantId.Parse(id);
        var created = DateTimeOffset.UnixEpoch.AddYears(50);
        var idBase = RandomNumberGenerator.GetInt32(1 << 24) * 4096L;
        var tokens = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < 1050; i++)
        {
            var tokenId = (idBase + i).ToString("x16", CultureInfo.InvariantCulture);
            await store.CreateApiTokenAsync(new ApiToken(tokenId, name, ApiTokenKind.Service, RandomNumberGenerator.GetBytes(32), created.AddSeconds(i / 2), created.AddDays(1)), default);
            if (i % 3 == 0)
            {
                await store.RevokeApiTokenAsync(tokenId, created.AddHours(1), default);
            }

            tokens.Add(tokenId);
        }

        for (var i = 0; i < 505; i++)
        {
            foreach (var role in new[] { Role.KeyUser, Role.Auditor })
            {
                await store.SetRoleBindingAsync(new RoleBinding(PrincipalName.Token($"{id}-{i:D3}"), role, tenant, created), default);
            }
        }

        var listed = (await AdminJsonAsync("tokens", "list", principal)).GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("id").GetString()!).ToList();
        Assert.Equal(1050, listed.Count);
        Assert.True(tokens.SetEquals(listed));
        var bindings = (await AdminJsonAsync("roles", "list", "--tenant", id)).GetProperty("bindings").EnumerateArray()
            .Select(b => (b.GetProperty("principal").GetString(), b.GetProperty("role").GetString())).ToList();
        Assert.Equal(1010, bindings.Distinct().Count());
        Assert.Equal(1010, bindings.Count);
    }

    [Fact]
    public async Task DeveloperToken_TenantsCreate_Exits4()
    {
        var result = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "tenants", "create", $"x{Guid.NewGuid():N}"[..12]);

        Assert.Equal(ExitCodes.Denied, result.ExitCode);
        Assert.StartsWith("kms: PERMISSION_DENIED", result.Error, StringComparison.Ordinal);
    }

    private static (string?, string?) Pair(JsonElement element, string first, string second) =>
        (element.GetProperty(first).GetString(), element.GetProperty(second).GetString());

    private Dictionary<string, string> Variables(string tokenFile, string tenant)
    {
        var variables = fixture.Variables;
        variables["KMS_TOKEN_FILE"] = tokenFile;
        variables["KMS_TENANT"] = tenant;
        return variables;
    }

    private Task<CliResult> AdminAsync(params string[] args) =>
        CliRun.InProcessAsync(Variables(Path.Combine(fixture.Server.DataDir, "tokens", "deployment-admin.token"), "dev"), _directory, null, args);

    private async Task<JsonElement> AdminJsonAsync(params string[] args)
    {
        var result = await AdminAsync([.. args, "-o", "json"]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return JsonDocument.Parse(result.Out).RootElement.Clone();
    }
}
