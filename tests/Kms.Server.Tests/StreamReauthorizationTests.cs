using System.Security.Cryptography;
using Grpc.Core;
using Grpc.Reflection;
using Grpc.Reflection.V1Alpha;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Audit;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// A stream is authorized again before each message, not only at its start: a long export or
/// backup download whose caller loses its token or its role while it runs is ended with that
/// refusal's status, before the rest is sent, and audited with it.
/// </summary>
public sealed class StreamReauthorizationTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob", "carol");
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _admin = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2));
        _server = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}");
        _admin = _server.DeploymentAdmin();
    }

    public async Task DisposeAsync()
    {
        _admin.Dispose();
        await _server.DisposeAsync();
        File.Delete(_genesisPath);
    }

    public void Dispose() => _officers.Dispose();

    [Fact]
    public async Task ExportAudit_TokenRevokedWhileItStreams_EndsUnauthenticated_BeforeTheWholeLog_Audited()
    {
        await FillAuditAsync();
        var whole = await CountExportMessagesAsync(await _server.CreatePrincipalWithTokenAsync("counter", null, "security-officer"));
        var secret = await _server.CreatePrincipalWithTokenAsync("exporter", null, "security-officer");
        using var exporter = _server.CreateClient(secret);

        using var export = exporter.Audit.ExportAudit(new ExportAuditRequest());
        Assert.True(await export.ResponseStream.MoveNext(default));

        // Revoked while the export streams; the client reads on. It used to get the whole log.
        await _admin.RevokeApiTokenAsync(secret[4..20]);
        var (more, status) = await ReadToTheEndAsync(export.ResponseStream);
        var received = 1 + more;

        output.WriteLine($"{received} of {whole} messages arrived; then {status}");
        Assert.Equal(StatusCode.Unauthenticated, status);
        Assert.True(received < whole, $"{received} of {whole} messages arrived after the token was revoked");
        Assert.Contains(_server.Logs.Events, l => l.Contains("ExportAudit", StringComparison.Ordinal) && l.Contains("the stream's caller, checked again before its next message, was refused (Unauthenticated)", StringComparison.Ordinal));
        Assert.Equal(["STARTED", "UNAUTHENTICATED"], await OutcomesAsync("token:exporter", "ExportAudit"));
    }

    [Fact]
    public async Task DownloadBackup_RoleBindingRemovedWhileItStreams_EndsPermissionDenied_BeforeTheWholeSnapshot_Audited()
    {
        await FillAuditAsync();
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var request = await officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
        await ApproveAsync(officer, "alice", request.Name);
        Assert.True((await ApproveAsync(officer, "bob", request.Name)).Executed);
        var size = new FileInfo(Path.Combine(_server.DataDir, "backups", request.Id, Kms.Core.Backup.BackupManifest.SnapshotFile)).Length;

        using var downloader = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("downloader", null, "security-officer"));
        using var download = downloader.Quorum.DownloadBackup(new DownloadBackupRequest { Name = request.Name });
        Assert.True(await download.ResponseStream.MoveNext(default));
        Assert.NotNull(download.ResponseStream.Current.Manifest);

        // The role taken away while the snapshot streams: the rest of the snapshot is not sent.
        await _admin.DeleteRoleBindingAsync("token:downloader", "security-officer");
        long bytes = 0;
        StatusCode? status = null;
        try
        {
            while (await download.ResponseStream.MoveNext(default))
            {
                bytes += download.ResponseStream.Current.SnapshotChunk.Length;
            }
        }
        catch (RpcException e)
        {
            status = e.StatusCode;
        }

        output.WriteLine($"{bytes} of {size} bytes arrived; then {status}");
        Assert.Equal(StatusCode.PermissionDenied, status);
        Assert.True(bytes < size, $"{bytes} of the snapshot's {size} bytes arrived after the role was removed");
        Assert.Equal(["PERMISSION_DENIED"], await OutcomesAsync("token:downloader", "DownloadBackup"));
    }

    [Fact]
    public async Task Reflection_TokenRevokedWhileTheStreamIsOpen_TheNextRequestIsRefusedUnauthenticated()
    {
        // The duplex stream's requests are checked as they arrive: an open reflection stream does
        // not outlive its caller's token.
        var secret = await _server.CreatePrincipalWithTokenAsync("reflector", "dev", "key-user");
        using var channel = _server.CreateChannel();
        using var call = new ServerReflection.ServerReflectionClient(channel).ServerReflectionInfo(KmsTestServer.Bearer(secret));
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        Assert.True(await call.ResponseStream.MoveNext(default));

        await _admin.RevokeApiTokenAsync(secret[4..20]);
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(default));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
    }

    [Fact]
    public async Task Reflection_TokenRevokedAfterTheRequestPassedItsCheck_TheAnswerIsNotSent_EndsUnauthenticated()
    {
        // The writer's check, on its own: the reflection handler's request reader (inside the
        // authorization wrapper) revokes the caller's token right after the second request was
        // read and authorized, before the handler answers it. The answer must not be sent: the
        // request's check cannot stop it (it passed), only the check before each response can.
        string? secret = null;
        Kms.Client.KmsClient? admin = null;
        var revokedBetween = 0;
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services =>
        {
            var original = services.Single(d => d.ServiceType == typeof(ReflectionServiceImpl));
            services.Remove(original);
            services.AddSingleton<ReflectionServiceImpl>(provider => new RevokingReflection(
                (ReflectionServiceImpl)original.ImplementationFactory!(provider),
                async read =>
                {
                    if (read == 2)
                    {
                        await admin!.RevokeApiTokenAsync(secret![4..20]);
                        Interlocked.Increment(ref revokedBetween);
                    }
                }));
        });
        admin = server.DeploymentAdmin();
        using var _ = admin;
        secret = await server.CreatePrincipalWithTokenAsync("reflector", "dev", "key-user");
        using var channel = server.CreateChannel();
        using var call = new ServerReflection.ServerReflectionClient(channel).ServerReflectionInfo(KmsTestServer.Bearer(secret));
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        Assert.True(await call.ResponseStream.MoveNext(default));
        Assert.NotEmpty(call.ResponseStream.Current.ListServicesResponse.Service);

        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            var answered = await call.ResponseStream.MoveNext(default);
            output.WriteLine($"after the revocation: {(answered ? "a second answer: " + call.ResponseStream.Current : "the stream ended OK")}");
        });

        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        Assert.Equal(1, revokedBetween); // the second request was read and passed its check: the writer's check refused
    }

    // ReflectionServiceImpl as registered, its requests read through a reader that runs `afterRead`
    // (with the request's number) once each request has arrived and passed the reader's check.
    private sealed class RevokingReflection(ReflectionServiceImpl inner, Func<int, Task> afterRead)
        : ReflectionServiceImpl(Array.Empty<Google.Protobuf.Reflection.ServiceDescriptor>())
    {
        public override Task ServerReflectionInfo(IAsyncStreamReader<ServerReflectionRequest> requestStream, IServerStreamWriter<ServerReflectionResponse> responseStream, ServerCallContext context) =>
            inner.ServerReflectionInfo(new HookedReader(requestStream, afterRead), responseStream, context);

        private sealed class HookedReader(IAsyncStreamReader<ServerReflectionRequest> reader, Func<int, Task> afterRead) : IAsyncStreamReader<ServerReflectionRequest>
        {
            private int _read;

            public ServerReflectionRequest Current => reader.Current;

            public async Task<bool> MoveNext(CancellationToken cancellationToken)
            {
                if (!await reader.MoveNext(cancellationToken))
                {
                    return false;
                }

                await afterRead(++_read);
                return true;
            }
        }
    }

    // About 9 MB of export (3,000 events of ~3 kB): many 512 kB messages, far more than the
    // transport buffers while the client does not read.
    private Task FillAuditAsync() => FillAuditAsync(_server.Services.GetRequiredService<AuditLog>());

    /// <summary>About 9 MB of export in <paramref name="audit"/>'s chain (also MultiNodeTests' two-node export).</summary>
    internal static async Task FillAuditAsync(AuditLog audit)
    {
        var context = Enumerable.Range(0, 32).Select(i => KeyValuePair.Create($"key{i:D2}", new string('a', 64))).ToList();
        for (var batch = 0; batch < 6; batch++)
        {
            await Task.WhenAll(Enumerable.Range(0, 500).Select(i => audit.AppendAsync(new AuditEntry
            {
                Time = DateTimeOffset.UtcNow,
                RequestId = Guid.NewGuid().ToString("N"),
                Principal = "token:filler",
                Operation = "/kms.v1.KeyManagementService/Encrypt",
                Resource = "tenants/dev/keys/" + new string('k', 480),
                Outcome = "OK",
                Context = context,
            }, default)));
        }
    }

    private async Task<int> CountExportMessagesAsync(string token)
    {
        using var client = _server.CreateClient(token);
        using var export = client.Audit.ExportAudit(new ExportAuditRequest());
        var (count, status) = await ReadToTheEndAsync(export.ResponseStream);
        Assert.Null(status);
        Assert.True(count >= 10, $"the whole export is {count} messages");
        return count;
    }

    private static async Task<(int Count, StatusCode? Status)> ReadToTheEndAsync(IAsyncStreamReader<ExportAuditResponse> stream)
    {
        var count = 0;
        try
        {
            while (await stream.MoveNext(default))
            {
                count++;
            }
        }
        catch (RpcException e)
        {
            return (count, e.StatusCode);
        }

        return (count, null);
    }

    private async Task<List<string>> OutcomesAsync(string principal, string operation)
    {
        using var reader = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("reader-" + Guid.NewGuid().ToString("N")[..8], null, "security-officer"));
        var events = await reader.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Principal = principal, Operation = operation, PageSize = 1000 });
        return [.. events.Events.Select(e => e.Outcome)];
    }

    private async Task<ApproveQuorumRequestResponse> ApproveAsync(Kms.Client.KmsClient officer, string name, string request)
    {
        using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(name).ExportParameters(true)));
        var pending = await approver.PrepareAsync(officer, request);
        return await approver.ApproveAsync(officer, pending);
    }
}
