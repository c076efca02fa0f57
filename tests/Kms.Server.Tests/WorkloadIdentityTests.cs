using System.Security.Cryptography;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// Workload identity on the real server (TLS, SoftHSM, SQLite): a JWT of a configured issuer,
/// sent as <c>Authorization: Bearer</c>, authenticates <c>jwt:&lt;issuer&gt;:&lt;sub&gt;</c>, which
/// must be registered and bound like any principal; the key set file is re-read without a restart.
/// </summary>
public sealed class WorkloadIdentityTests : IAsyncLifetime, IDisposable
{
    private const string Principal = "jwt:k8s:" + TestJwt.Subject;
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-jwt-server-").FullName;
    private readonly ECDsa _key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    private readonly RSA _nextKey = RSA.Create(2048);
    private KmsTestServer _server = null!;
    private string _keyName = null!;

    private string JwksPath => Path.Combine(_dir, "jwks.json");

    public async Task InitializeAsync()
    {
        File.WriteAllText(JwksPath, TestJwt.Jwks(TestJwt.Jwk(_key)));

        // The longest credential cache: a remembered caller is forgotten on a key set change by the
        // trust version, not by the cache time running out.
        _server = await KmsTestServer.StartAsync(null, null, "dev", (Action<Microsoft.Extensions.DependencyInjection.IServiceCollection>?)null,
            [.. TestJwt.ServerArguments(JwksPath), "--Kms:CredentialCacheTime=00:05:00"]);
        using var admin = _server.DeploymentAdmin();
        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = Principal, Tenant = "tenants/dev" });
        await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = Principal, Role = "key-user", Tenant = "tenants/dev" });
        using var developer = _server.CreateClient();
        _keyName = (await developer.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("jwt"))).Name;
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    public void Dispose()
    {
        _key.Dispose();
        _nextKey.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task RegisteredJwtPrincipal_KeyUser_GeneratesAndDecryptsADataKey_AuditedAsItsPrincipal_NeverTheToken()
    {
        var token = Token();
        using var client = _server.CreateClient(token);
        using var dataKey = await client.GenerateDataKeyAsync(_keyName);
        using var decrypted = await client.DecryptAsync(dataKey.Ciphertext);
        Assert.Equal(dataKey.Plaintext.ToArray(), decrypted.Plaintext.ToArray());

        // The audit names the principal; neither the audit table nor the logs hold the token or its signature.
        var audit = await AuditTextAsync();
        Assert.Contains(Principal, audit, StringComparison.Ordinal);
        var signature = token[(token.LastIndexOf('.') + 1)..];
        foreach (var secret in new[] { token, signature })
        {
            Assert.DoesNotContain(secret, audit, StringComparison.Ordinal);
            Assert.DoesNotContain(secret, _server.Logs.AllText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task UnregisteredJwtPrincipal_Authenticated_ButPermissionDenied()
    {
        using var client = _server.CreateClient(Token(c => c["sub"] = "system:serviceaccount:payments:other"));
        var denied = await Assert.ThrowsAsync<RpcException>(() => client.GenerateDataKeyAsync(_keyName));
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
    }

    [Fact]
    public async Task TokenForAnotherAudience_Unauthenticated_OneMessageThatShowsNothingOfIt()
    {
        var token = Token(c => c["aud"] = "vault");
        using var client = _server.CreateClient(token);
        var refused = await Assert.ThrowsAsync<RpcException>(() => client.GenerateDataKeyAsync(_keyName));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        Assert.DoesNotContain("vault", refused.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(TestJwt.Subject, refused.Status.Detail, StringComparison.Ordinal);

        // Refused the same way as a token whose signature is wrong.
        using var forged = _server.CreateClient(Token()[..^4] + "AAAA");
        var alsoRefused = await Assert.ThrowsAsync<RpcException>(() => forged.GenerateDataKeyAsync(_keyName));
        Assert.Equal((refused.StatusCode, refused.Status.Detail), (alsoRefused.StatusCode, alsoRefused.Status.Detail));
    }

    [Fact]
    public async Task KeySetFileReplacedWithANewKey_OldTokenRefusedAfterTheFileCheck_NewAccepted_DespiteTheCache()
    {
        var old = Token();
        using var oldClient = _server.CreateClient(old);
        using (await oldClient.GenerateDataKeyAsync(_keyName))
        {
        }

        File.WriteAllText(JwksPath, TestJwt.Jwks(TestJwt.Jwk(_nextKey, "k2")));
        using var nextClient = _server.CreateClient(TestJwt.Sign(TestJwt.Claims(DateTimeOffset.UtcNow), _nextKey, "RS256", kid: "k2"));

        // The file is looked at, at most once a second; the old token's caller is remembered for 5 minutes.
        var status = StatusCode.OK;
        for (var i = 0; i < 30 && status == StatusCode.OK; i++)
        {
            await Task.Delay(200);
            status = await StatusOfAsync(oldClient);
        }

        Assert.Equal(StatusCode.Unauthenticated, status);
        Assert.Equal(StatusCode.OK, await StatusOfAsync(nextClient));

        // A replacement that cannot be read keeps the keys in force, and says so.
        File.WriteAllText(JwksPath, "{\"keys\":[");
        await Task.Delay(1500);
        Assert.Equal(StatusCode.OK, await StatusOfAsync(nextClient));
        Assert.Contains("JWT key set of issuer \"k8s\" could not be reloaded", _server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AdministrativeRoleBoundToAJwtPrincipal_NotCarried()
    {
        const string boss = "jwt:k8s:system:serviceaccount:kms:operator";
        using (var admin = _server.DeploymentAdmin())
        {
            await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = boss, Tenant = "tenants/dev" });
            await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = boss, Role = "key-manager", Tenant = "tenants/dev" });

            // Refused at the binding (it would grant nothing yet count as an admin) ...
            var refused = await Assert.ThrowsAsync<RpcException>(async () =>
                await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = boss, Role = "admin", Tenant = "tenants/dev" }));
            Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);
            Assert.Contains("never carries", refused.Status.Detail, StringComparison.Ordinal);
        }

        // ... and not carried if a binding is in the store all the same (written there directly).
        await _server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().SetRoleBindingAsync(
            new Kms.Core.Access.RoleBinding(Kms.Core.Access.PrincipalName.Parse(boss, "principal"), Kms.Core.Access.Role.Admin, Kms.Core.Names.TenantId.Parse("dev"), DateTimeOffset.UtcNow), default);

        using var client = _server.CreateClient(Token(c => c["sub"] = "system:serviceaccount:kms:operator"));

        // key-manager is carried; admin (reading and managing the tenant's role bindings) is not.
        Assert.NotNull(await client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("jwt-boss")));
        var denied = await Assert.ThrowsAsync<RpcException>(() => client.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/dev" }).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
    }

    [Fact]
    public async Task ApiTokensStillWork_AndAThreePartTokenIsNeverLookedUpAsOne()
    {
        using var keyUser = _server.CreateClient(_server.KeyUserToken);
        Assert.Equal(StatusCode.OK, await StatusOfAsync(keyUser));
        using var garbage = _server.CreateClient("a.b.c");
        Assert.Equal(StatusCode.Unauthenticated, await StatusOfAsync(garbage));

        // Valid JSON whose alg is no string (an escaped unpaired surrogate), unsigned: anyone can send it.
        using var noText = _server.CreateClient($"{TestJwt.Base64Url("{\"alg\":\"\\ud800\"}")}.{TestJwt.Base64Url(TestJwt.Claims(DateTimeOffset.UtcNow))}.AAAA");
        Assert.Equal(StatusCode.Unauthenticated, await StatusOfAsync(noText));
    }

    [Theory]
    [InlineData("Audience", "", "Kms:Jwt:Issuers:0:Audience must be set")]
    [InlineData("JwksPath", "weak", "Kms:Jwt:Issuers:0:JwksPath")]
    [InlineData("Name", "K8S", "Kms:Jwt:Issuers:0:Name must be 1 to 32 of [a-z0-9-]")]
    public async Task Build_IssuerConfigurationThatCannotBeUsed_RefusedBeforeTouchingTheHsm(string option, string value, string message)
    {
        using var weak = RSA.Create(1024);
        var weakPath = Path.Combine(_dir, "weak.json");
        File.WriteAllText(weakPath, TestJwt.Jwks(TestJwt.Jwk(weak)));
        var options = new Dictionary<string, string>
        {
            ["Name"] = "k8s",
            ["Issuer"] = TestJwt.Issuer,
            ["Audience"] = TestJwt.Audience,
            ["JwksPath"] = JwksPath,
        };
        options[option] = value == "weak" ? weakPath : value;
        var dataDir = Path.Combine(_dir, "never");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Kms.Server.Hosting.KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:DataDir={dataDir}", .. options.Select(o => $"--Kms:Jwt:Issuers:0:{o.Key}={o.Value}")]));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataDir));
    }

    private string Token(Action<Dictionary<string, object?>>? change = null) =>
        TestJwt.Sign(TestJwt.Claims(DateTimeOffset.UtcNow, change), _key, "ES256");

    private async Task<StatusCode> StatusOfAsync(Kms.Client.KmsClient client)
    {
        try
        {
            using var dataKey = await client.GenerateDataKeyAsync(_keyName);
            return StatusCode.OK;
        }
        catch (RpcException e)
        {
            return e.StatusCode;
        }
    }

    private async Task<string> AuditTextAsync()
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={_server.DatabasePath};Mode=ReadOnly");
        await connection.OpenAsync();
        await using var select = connection.CreateCommand();
        select.CommandText = "SELECT * FROM audit_events";
        await using var reader = await select.ExecuteReaderAsync();
        var text = new System.Text.StringBuilder();
        while (await reader.ReadAsync())
        {
            for (var i = 0; i < reader.FieldCount; i++)
            {
                text.Append(reader.GetValue(i) switch
                {
                    byte[] bytes => System.Text.Encoding.UTF8.GetString(bytes),
                    var value => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture),
                }).Append('\t');
            }

            text.AppendLine();
        }

        return text.ToString();
    }
}
