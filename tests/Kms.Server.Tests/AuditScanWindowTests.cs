using Kms.Contracts.V1;
using Kms.Core.Audit;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// A ListAuditEvents page examines a bounded window of the log (here lowered to
/// <see cref="Window"/> sequence numbers): a filter that matches few events gets short or empty
/// pages with a token to go on, and paging on reaches its events, rather than one page reading
/// from the cursor to the end of the log. Before, the first page read the whole log and held the
/// event.
/// </summary>
public sealed class AuditScanWindowTests : IAsyncLifetime
{
    private const long Window = 50;
    private static readonly DateTimeOffset T0 = new(2026, 12, 1, 0, 0, 0, TimeSpan.Zero);

    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _officer = null!;
    private long _rare;
    private long _old;
    private long _head;

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync(null, null, "dev", KmsTestServer.AuditScanWindow(Window));
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("window-officer", null, "security-officer"));

        // Three windows of filler; one event of a rare operation near the end, one of a rare
        // outcome near the start.
        var store = _server.Services.GetRequiredService<IAuditStore>();
        var written = await store.AppendAuditAsync(
            [.. Enumerable.Range(0, (int)(3 * Window)).Select(i => new AuditEntry
            {
                Time = T0.AddSeconds(i),
                RequestId = $"filler-{i}",
                Principal = i == 3 * Window - 12 ? "token:rare" : "token:busy",
                Operation = i == 3 * Window - 10 ? "/kms.v1.AuditService/RareOperation" : "/kms.v1.KeyManagementService/GetKey",
                Outcome = i == 5 ? "DATA_LOSS" : "OK",
            })],
            default);
        _rare = written[(int)(3 * Window) - 10].Sequence;
        _old = written[5].Sequence;
        _head = written[^1].Sequence;
    }

    public async Task DisposeAsync()
    {
        _officer.Dispose();
        await _server.DisposeAsync();
    }

    [Fact]
    public async Task ListAuditEvents_ASparseFilter_EmptyPagesWithATokenEachAWindowOn_UntilTheEvent()
    {
        var request = new ListAuditEventsRequest { Operation = "RareOperation", PageSize = 10 };
        var first = await _officer.Audit.ListAuditEventsAsync(request);
        Assert.Empty(first.Events);
        Assert.NotEmpty(first.NextPageToken);

        var (events, pages) = await PageAsync(request);
        Assert.Equal([_rare], events);
        // The log's events (the server's own, then the filler) over windows of 50: each page one window.
        Assert.True(pages >= _rare / Window, $"{pages} pages reached sequence {_rare}");

        // The SDK pages on through the empty pages.
        Assert.Equal([_rare], (await _officer.ListAuditEventsAsync(request).ToListAsync()).Select(e => e.Sequence));
    }

    [Fact]
    public async Task ListAuditEvents_NewestFirst_ASparseFilter_EmptyPagesBackwards_UntilTheEvent()
    {
        var request = new ListAuditEventsRequest { Outcome = "DATA_LOSS", PageSize = 10, NewestFirst = true };
        var first = await _officer.Audit.ListAuditEventsAsync(request);
        Assert.Empty(first.Events);
        Assert.NotEmpty(first.NextPageToken);

        var (events, pages) = await PageAsync(request);
        Assert.Equal([_old], events);
        Assert.True(pages >= (_head - _old) / Window, $"{pages} pages reached sequence {_old} from {_head}");
        Assert.Equal([_old], (await _officer.ListAuditEventsAsync(request).ToListAsync()).Select(e => e.Sequence));
    }

    [Fact]
    public async Task ListAuditEvents_APrincipal_StartsTheWalkAtItsFirstEvent_OnePage()
    {
        // The (principal, seq) index gives the principal's first event: no empty windows before it,
        // and none after its last.
        var page = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Principal = "token:rare", PageSize = 10 });
        Assert.Equal([_rare - 2], page.Events.Select(e => e.Sequence));
        Assert.Empty(page.NextPageToken);

        var newest = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Principal = "token:rare", PageSize = 10, NewestFirst = true });
        Assert.Equal([_rare - 2], newest.Events.Select(e => e.Sequence));
        Assert.Empty(newest.NextPageToken);
    }

    [Fact]
    public async Task ListAuditEvents_NoFilter_FullPagesAsBefore_ThePageSizeNotTheWindow()
    {
        // Every event matches: a page fills well inside its window, and its token is its last event's.
        var page = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 20 });
        Assert.Equal(Enumerable.Range(1, 20).Select(i => (long)i), page.Events.Select(e => e.Sequence));
        var next = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 20, PageToken = page.NextPageToken });
        Assert.Equal(Enumerable.Range(21, 20).Select(i => (long)i), next.Events.Select(e => e.Sequence));
    }

    private async Task<(List<long> Events, int Pages)> PageAsync(ListAuditEventsRequest request)
    {
        var events = new List<long>();
        var pages = 0;
        var token = "";
        do
        {
            var page = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest(request) { PageToken = token });
            events.AddRange(page.Events.Select(e => e.Sequence));
            token = page.NextPageToken;
            pages++;
            Assert.True(pages < 1000, "hang guard: the listing never ended");
        }
        while (token.Length > 0);
        return (events, pages);
    }
}
