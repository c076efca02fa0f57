using Google.Rpc;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A principal of no tenant — a deployment admin, a security officer, a deployment-wide auditor —
/// has a call rate of its own (SECURITY.md claim 125): <c>Kms:Quotas:PrincipalsWithoutTenant</c>,
/// every call counted. Before, the quota metered only a tenant's crypto, so a leaked security
/// officer's token could page the whole audit (ListAuditEvents, ExportAudit) as fast as the node answered.
/// </summary>
public sealed class PrincipalRateTests
{
    [Fact]
    public async Task SecurityOfficer_PastItsCallRate_AuditReadsRefusedResourceExhausted_OthersServed_ServedAgainOnceRefilled()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)),
            "--Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond=1", "--Kms:Quotas:PrincipalsWithoutTenant:Burst=3");
        var officerToken = await server.CreatePrincipalWithTokenAsync("officer", null, "security-officer");
        time.Advance(TimeSpan.FromSeconds(10)); // the admin's setup calls spent its bucket: full again

        using var officer = server.CreateClient(officerToken);
        for (var i = 0; i < 3; i++)
        {
            await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1 });
        }

        var refused = await Assert.ThrowsAsync<RpcException>(() => officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1 }).ResponseAsync);
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Equal("the call rate of token:officer, a principal of no tenant, is used up (Kms:Quotas:PrincipalsWithoutTenant); retry after 1000 ms", refused.Status.Detail);
        Assert.Equal(TimeSpan.FromSeconds(1), refused.GetRpcStatus()!.GetDetail<RetryInfo>().RetryDelay.ToTimeSpan());
        Assert.Contains(server.Logs.Events, line => line.Contains("Kms:Quotas:PrincipalsWithoutTenant", StringComparison.Ordinal) && line.Contains("token:officer", StringComparison.Ordinal));

        // A stream is a call too: ExportAudit is refused before it sends anything.
        using (var export = officer.Audit.ExportAudit(new ExportAuditRequest()))
        {
            var streamRefused = await Assert.ThrowsAsync<RpcException>(() => export.ResponseStream.MoveNext(CancellationToken.None));
            Assert.Equal(StatusCode.ResourceExhausted, streamRefused.StatusCode);
        }

        // Another principal of no tenant has its own bucket; a tenant's principal is not metered by it.
        using (var admin = server.DeploymentAdmin())
        {
            await admin.Access.ListTenantsAsync(new ListTenantsRequest());
        }

        using (var developer = server.CreateClient())
        {
            for (var i = 0; i < 10; i++)
            {
                await developer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1 });
            }
        }

        // A second later (the fake clock) the officer has one call again.
        time.Advance(TimeSpan.FromSeconds(1));
        await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1 });
        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(() => officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1 }).ResponseAsync)).StatusCode);
    }
}
