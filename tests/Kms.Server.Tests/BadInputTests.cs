using System.Diagnostics.Metrics;
using System.Security.Cryptography;
using Google.Protobuf;
using Google.Rpc;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Server.Grpc;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// Bad input through a real channel: a clear status naming the field, nothing changed, the
/// server still serving, and every undecryptable blob the same opaque answer.
/// </summary>
public sealed class BadInputTests(ServerFixture fixture) : IClassFixture<ServerFixture>, IAsyncLifetime
{
    private Key _key = null!;
    private Key _otherKey = null!;

    private KeyManagementService.KeyManagementServiceClient Stub => fixture.Client.Raw;

    public async Task InitializeAsync()
    {
        _key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("bad"));
        _otherKey = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("other"));
    }

    public Task DisposeAsync() => Task.CompletedTask;

    private const string GetKey = "/kms.v1.KeyManagementService/GetKey";
    private const string MalformedDetail = ParseCheckedMethodProvider<KeyManagementGrpcService>.Detail;

    private static readonly Marshaller<byte[]> Raw = Marshallers.Create<byte[]>(b => b, b => b);

    [Theory]
    [InlineData("0A05616263")] // field 1, length 5, three bytes: truncated
    [InlineData("0AFFFFFFFFFF")] // a length that does not end
    [InlineData("0A02C328")] // a string that is not UTF-8
    [InlineData("FF")] // a tag of field 0's group
    public async Task MalformedBody_AuthenticatedInvalidArgument_AnonymousUnauthenticatedAsAValidBody_NoErrorLogged(string hex)
    {
        // grpc-dotnet answered these UNKNOWN and logged each at Error with its stack trace,
        // before authentication; then INVALID_ARGUMENT to anyone, before authentication
        // (ParseCheckedMethodProvider, MalformedRequest).
        using var channel = fixture.Server.CreateChannel();
        var errorsBefore = fixture.Server.Logs.Events.Count(e => e.StartsWith("Error", StringComparison.Ordinal));
        var authenticated = await Assert.ThrowsAsync<RpcException>(() => CallGetKey(channel, KmsTestServer.Bearer(fixture.Server.DeveloperToken), hex));
        Assert.Equal((StatusCode.InvalidArgument, MalformedDetail), (authenticated.StatusCode, authenticated.Status.Detail));

        var anonymous = await Assert.ThrowsAsync<RpcException>(() => CallGetKey(channel, new Metadata(), hex));
        var anonymousValid = await Assert.ThrowsAsync<RpcException>(() => CallGetKey(channel, new Metadata(), Convert.ToHexString(new GetKeyRequest { Name = _key.Name }.ToByteArray())));
        Assert.Equal((StatusCode.Unauthenticated, anonymousValid.Status.Detail), (anonymous.StatusCode, anonymous.Status.Detail));

        Assert.Equal(errorsBefore, fixture.Server.Logs.Events.Count(e => e.StartsWith("Error", StringComparison.Ordinal)));

        // A well-formed request on the same path is served as before.
        Assert.Equal(_key.Name, (await Stub.GetKeyAsync(new GetKeyRequest { Name = _key.Name })).Key.Name);
    }

    [Fact]
    public async Task MalformedBody_AuditedAsAnAggregatedRefusal_CountedByMethodAndStatus_NothingOfTheBodyKept()
    {
        // Such a request reached no interceptor: no audit event, no metric.
        const int Calls = 5;
        using var channel = fixture.Server.CreateChannel();
        using var officer = await OfficerAsync();
        Task<List<AuditEventInfo>> EventsAsync(string principal, string outcome) => MalformedEventsAsync(officer, principal, GetKey, outcome);

        // A body naming a resource, then cut short: the name must not reach the audit event.
        var body = Convert.ToHexString(new GetKeyRequest { Name = _key.Name }.ToByteArray()[..^1]);
        var authenticatedBefore = (await EventsAsync("token:developer", "INVALID_ARGUMENT")).Sum(e => e.Count);
        var anonymousBefore = (await EventsAsync("anonymous", "UNAUTHENTICATED")).Sum(e => e.Count);
        using var requests = new RequestCounter(GetKey);
        var requestIds = new List<string?>();
        for (var i = 0; i < Calls; i++)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => CallGetKey(channel, KmsTestServer.Bearer(fixture.Server.DeveloperToken), body));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            requestIds.Add(e.Trailers.GetValue("x-request-id"));
        }

        Assert.True(requests.Count("InvalidArgument") >= Calls); // the meter is process-wide: at least ours

        // Refusals: the first of a window written at once, the rest counted in one event.
        var authenticated = await EventsAsync("token:developer", "INVALID_ARGUMENT");
        Assert.Equal(authenticatedBefore + Calls, authenticated.Sum(e => e.Count));
        Assert.Contains(authenticated, e => e.Count > 1);
        Assert.Contains(authenticated, e => e.RequestId == requestIds[0]);
        Assert.All(authenticated, e => Assert.Equal("dev", e.Tenant));

        // An anonymous caller gets what it gets for a valid body, counted and audited the same.
        for (var i = 0; i < Calls; i++)
        {
            Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => CallGetKey(channel, new Metadata(), body))).StatusCode);
        }

        Assert.True(requests.Count("Unauthenticated") >= Calls);
        var anonymous = await EventsAsync("anonymous", "UNAUTHENTICATED");
        Assert.Equal(anonymousBefore + Calls, anonymous.Sum(e => e.Count));
        Assert.Contains(anonymous, e => e.Count > 1);
        Assert.All(authenticated.Concat(anonymous), e => Assert.DoesNotContain(_key.Name, e.ToString(), StringComparison.Ordinal));
    }

    [Fact]
    public async Task MalformedBody_ToHealthReflectionAndServerStreams_RefusedLikeAnyCall_NoHandlerGivenAnEmptyRequest()
    {
        // Every service is bound by ParseCheckedMethodProvider and passes the same interceptors:
        // health (public) is refused INVALID_ARGUMENT, not answered SERVING for an empty request;
        // the server streams authenticate first; reflection's messages are read in its handler.
        using var channel = fixture.Server.CreateChannel();
        var invoker = channel.CreateCallInvoker();
        var developer = new CallOptions(KmsTestServer.Bearer(fixture.Server.DeveloperToken));
        var malformed = Convert.FromHexString("0A05616263");
        var errorsBefore = fixture.Server.Logs.Events.Count(e => e.StartsWith("Error", StringComparison.Ordinal));
        using var officer = await OfficerAsync();
        const string Reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        var reflectionBefore = (await MalformedEventsAsync(officer, "token:developer", Reflection, "INVALID_ARGUMENT")).Sum(e => e.Count);

        async Task<StatusCode> ServerStreamAsync(string service, string method, CallOptions options)
        {
            using var call = invoker.AsyncServerStreamingCall(new Method<byte[], byte[]>(MethodType.ServerStreaming, service, method, Raw, Raw), null, options, malformed);
            var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
            return e.StatusCode;
        }

        async Task<StatusCode> DuplexAsync(string service, CallOptions options)
        {
            using var call = invoker.AsyncDuplexStreamingCall(new Method<byte[], byte[]>(MethodType.DuplexStreaming, service, "ServerReflectionInfo", Raw, Raw), null, options);
            RpcException e;
            try
            {
                await call.RequestStream.WriteAsync(malformed);
                await call.RequestStream.CompleteAsync();
                e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
            }
            catch (RpcException early)
            {
                // The server may answer (an unauthenticated call is refused before its messages are
                // read) before the client has written: the write then throws the call's status.
                e = early;
            }

            Assert.True(e.StatusCode != StatusCode.InvalidArgument || e.Status.Detail == MalformedDetail);
            return e.StatusCode;
        }

        var check = await Assert.ThrowsAsync<RpcException>(() => invoker.AsyncUnaryCall(new Method<byte[], byte[]>(MethodType.Unary, "grpc.health.v1.Health", "Check", Raw, Raw), null, default, malformed).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, MalformedDetail), (check.StatusCode, check.Status.Detail));

        Assert.Equal(StatusCode.InvalidArgument, await ServerStreamAsync("grpc.health.v1.Health", "Watch", default));
        Assert.Equal(StatusCode.InvalidArgument, await ServerStreamAsync(AuditService.Descriptor.FullName, "ExportAudit", developer));
        Assert.Equal(StatusCode.Unauthenticated, await ServerStreamAsync(AuditService.Descriptor.FullName, "ExportAudit", default));
        Assert.Equal(StatusCode.InvalidArgument, await ServerStreamAsync(QuorumService.Descriptor.FullName, "DownloadBackup", developer));
        Assert.Equal(StatusCode.Unauthenticated, await ServerStreamAsync(QuorumService.Descriptor.FullName, "DownloadBackup", default));
        foreach (var reflection in new[] { "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection" })
        {
            Assert.Equal(StatusCode.InvalidArgument, await DuplexAsync(reflection, developer));
            Assert.Equal(StatusCode.Unauthenticated, await DuplexAsync(reflection, default));
        }

        // A malformed streamed message is a refusal too: aggregated.
        Assert.Equal(StatusCode.InvalidArgument, await DuplexAsync("grpc.reflection.v1.ServerReflection", developer));
        Assert.Equal(StatusCode.InvalidArgument, await DuplexAsync("grpc.reflection.v1.ServerReflection", developer));
        var reflectionEvents = await MalformedEventsAsync(officer, "token:developer", Reflection, "INVALID_ARGUMENT");
        Assert.Equal(reflectionBefore + 3, reflectionEvents.Sum(e => e.Count));
        Assert.Contains(reflectionEvents, e => e.Count > 1);

        Assert.Equal(errorsBefore, fixture.Server.Logs.Events.Count(e => e.StartsWith("Error", StringComparison.Ordinal)));
    }

    private async Task<Kms.Client.KmsClient> OfficerAsync() =>
        fixture.Server.CreateClient(await fixture.Server.CreatePrincipalWithTokenAsync(ServerFixture.NewKeyId("officer"), null, "security-officer"));

    // The events of malformed calls, refusal windows closed first (a valid body's have a resource).
    private async Task<List<AuditEventInfo>> MalformedEventsAsync(Kms.Client.KmsClient officer, string principal, string operation, string outcome)
    {
        await fixture.Server.Services.GetRequiredService<Kms.Core.Services.AuditLog>().FlushRefusalsAsync(default);
        var request = new ListAuditEventsRequest { Principal = principal, Operation = operation, Outcome = outcome, PageSize = 1000 };
        return [.. (await officer.Audit.ListAuditEventsAsync(request)).Events.Where(e => e.Resource.Length == 0)];
    }

    private static Task<byte[]> CallGetKey(global::Grpc.Net.Client.GrpcChannel channel, Metadata headers, string hex) =>
        channel.CreateCallInvoker().AsyncUnaryCall(
            new Method<byte[], byte[]>(MethodType.Unary, KeyManagementService.Descriptor.FullName, "GetKey", Raw, Raw), null, new CallOptions(headers), Convert.FromHexString(hex)).ResponseAsync;

    /// <summary>Counts <c>kms_grpc_requests_total</c> of one method by code while it lives (the meter is process-wide).</summary>
    private sealed class RequestCounter : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> _byCode = new(StringComparer.Ordinal);

        public RequestCounter(string method)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == Kms.Server.Observability.KmsMetrics.MeterName && instrument.Name == "grpc_requests_total")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
            {
                string? tagMethod = null;
                string? code = null;
                foreach (var tag in tags)
                {
                    _ = tag.Key switch
                    {
                        "method" => tagMethod = (string?)tag.Value,
                        "code" => code = (string?)tag.Value,
                        _ => null,
                    };
                }

                if (tagMethod == method && code is not null)
                {
                    _byCode.AddOrUpdate(code, (int)value, (_, sum) => sum + (int)value);
                }
            });
            _listener.Start();
        }

        public int Count(string code) => _byCode.GetValueOrDefault(code);

        public void Dispose() => _listener.Dispose();
    }

    [Theory]
    [InlineData("principal", "dev\0admin")]
    [InlineData("operation", "Get\0Key")]
    [InlineData("resource", "tenants/dev/keys/a\nb")]
    [InlineData("outcome", "OK\0")]
    [InlineData("operation", null)]
    public async Task ListAuditEvents_AFilterWithAControlCharacterOrTooLong_InvalidArgumentNamingIt(string field, string? value)
    {
        // On PostgreSQL a NUL reached the query, which refused it: "the database is unavailable".
        value ??= new string('x', 4097);
        var request = new ListAuditEventsRequest { Tenant = "tenants/dev" };
        _ = field switch
        {
            "principal" => request.Principal = value,
            "operation" => request.Operation = value,
            "resource" => request.Resource = value,
            _ => request.Outcome = value,
        };
        var e = await Assert.ThrowsAsync<RpcException>(async () => await fixture.Client.Audit.ListAuditEventsAsync(request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith(field + ":", e.Status.Detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("start_time")]
    [InlineData("end_time")]
    public async Task ListAuditEvents_TimestampOutOfRange_InvalidArgumentNamingTheField_NotInternal(string field)
    {
        var bad = new Google.Protobuf.WellKnownTypes.Timestamp { Seconds = -1_000_000_000_000 };
        var request = new ListAuditEventsRequest { Tenant = "tenants/dev" };
        if (field == "start_time")
        {
            request.StartTime = bad;
        }
        else
        {
            request.EndTime = bad;
        }

        var e = await Assert.ThrowsAsync<RpcException>(async () => await fixture.Client.Audit.ListAuditEventsAsync(request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith(field, e.Status.Detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(-1, "", "page_size")]
    [InlineData(1001, "", "page_size")]
    [InlineData(0, "garbage", "page_token")]
    public async Task ListAuditEvents_BadPaging_InvalidArgumentNamingTheFieldOnce(int pageSize, string token, string field)
    {
        // It said "page_size: page_size must be between 1 and 1000", and 0 is the default.
        var request = new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = pageSize, PageToken = token };
        var e = await Assert.ThrowsAsync<RpcException>(async () => await fixture.Client.Audit.ListAuditEventsAsync(request));

        AssertInvalidArgument(e, field);
        Assert.DoesNotContain(field, e.Status.Detail[(field.Length + 1)..], StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("ExportAudit", "from_sequence")]
    [InlineData("ListAuditEvents end before start", "end_time")]
    [InlineData("ListAuditEvents end at start", "end_time")]
    public async Task Audit_AnArgumentOutOfRange_InvalidArgumentNamingTheField(string call, string field)
    {
        // ExportAudit answered "from_sequence must not be negative" without the field's prefix or a
        // BadRequest; a window ending before it starts was answered with no events.
        using var officer = await OfficerAsync();
        var now = DateTimeOffset.UtcNow;
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            if (call == "ExportAudit")
            {
                using var export = officer.Audit.ExportAudit(new ExportAuditRequest { FromSequence = -1 });
                await export.ResponseStream.MoveNext(default);
                return;
            }

            var end = call.EndsWith("at start", StringComparison.Ordinal) ? now : now.AddHours(-1);
            await fixture.Client.Audit.ListAuditEventsAsync(new ListAuditEventsRequest
            {
                Tenant = "tenants/dev",
                StartTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(now),
                EndTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(end),
            });
        });
        AssertInvalidArgument(e, field);
    }

    [Theory]
    [InlineData("ListPrincipals", "tenants/never-was")]
    [InlineData("ListApiTokens", "token:never-was")]
    [InlineData("ListRoleBindings", "tenants/never-was")]
    public async Task AccessLists_OfATenantOrPrincipalThatDoesNotExist_NotFound_NotAnEmptyList(string call, string name)
    {
        // ListPrincipals and ListApiTokens answered an empty list, as for a tenant with no
        // principal or a principal with no token; ListRoleBindings (and every list of a tenant's
        // resources) says NOT_FOUND, and is held to it here too.
        using var admin = fixture.Server.DeploymentAdmin();
        var e = await Assert.ThrowsAsync<RpcException>(async () => _ = call switch
        {
            "ListPrincipals" => (object)await admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = name }),
            "ListRoleBindings" => await admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = name }),
            _ => await admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = name }),
        });
        Assert.Equal((StatusCode.NotFound, $"{name} not found"), (e.StatusCode, e.Status.Detail));

        // token:bootstrap is not registered, but holds the bootstrap and recovery credentials.
        _ = await admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:bootstrap" });
    }

    [Theory]
    [InlineData("Encrypt")]
    [InlineData("GenerateDataKey")]
    [InlineData("BatchEncrypt")]
    public async Task EncryptionCalls_OnAKeyOfAnotherPurpose_FailedPreconditionNamingThePurposeAsTheApiDoes(string call)
    {
        // It said "has purpose Mac" (the C# name): the API, and every other such answer, says MAC.
        var mac = (await Stub.CreateKeyAsync(new CreateKeyRequest
        {
            Parent = "tenants/dev",
            KeyId = ServerFixture.NewKeyId("mac"),
            Key = new Key { Purpose = KeyPurpose.Mac, Algorithm = KeyAlgorithm.HmacSha256 },
        })).Key;
        var (code, detail) = call switch
        {
            "Encrypt" => await StatusOfAsync(async () => await Stub.EncryptAsync(new EncryptRequest { Name = mac.Name, Plaintext = ByteString.CopyFrom(1) })),
            "GenerateDataKey" => await StatusOfAsync(async () => await Stub.GenerateDataKeyAsync(new GenerateDataKeyRequest { Name = mac.Name })),
            _ => (await Stub.BatchEncryptAsync(new BatchEncryptRequest { Requests = { new EncryptRequest { Name = mac.Name, Plaintext = ByteString.CopyFrom(1) } } })).Results.Select(r => ((StatusCode)r.Status.Code, r.Status.Message)).Single(),
        };
        Assert.Equal((StatusCode.FailedPrecondition, $"key {mac.Name} has purpose MAC, not ENCRYPT_DECRYPT"), (code, detail));
    }

    private static async Task<(StatusCode, string)> StatusOfAsync(Func<Task> call)
    {
        var e = await Assert.ThrowsAsync<RpcException>(call);
        return (e.StatusCode, e.Status.Detail);
    }

    [Fact]
    public async Task CreateGrant_ForSigningWithAContextConstraint_InvalidArgument_NoGrantStored()
    {
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("grant-sign"));
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.CreateGrantAsync(new CreateGrantRequest
        {
            Parent = key.Name,
            Grant = new KeyGrant { Grantee = "token:developer", Operations = { "SIGN" }, ContextEquals = { ["record"] = "42" } },
        }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("grant.context_equals:", e.Status.Detail, StringComparison.Ordinal);
        Assert.Empty((await Stub.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name })).Grants);
    }

    [Fact]
    public async Task UpdateMask_AHugePathWithANewline_EchoedBounded_ARepeatedPathRefused_NothingChanged()
    {
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", "update-mask-" + Guid.NewGuid().ToString("N")[..8]);
        var huge = await Assert.ThrowsAsync<RpcException>(async () => await fixture.Client.Raw.UpdateKeyAsync(new UpdateKeyRequest
        {
            Key = new Key { Name = key.Name },
            UpdateMask = new Google.Protobuf.WellKnownTypes.FieldMask { Paths = { new string('x', 60_000) + "\nforged mask line" } },
        }));
        Assert.Equal(StatusCode.InvalidArgument, huge.StatusCode);
        Assert.True(huge.Status.Detail.Length < 1024, $"{huge.Status.Detail.Length} characters");
        Assert.DoesNotContain('\n', huge.Status.Detail);
        Assert.DoesNotContain(fixture.Server.Logs.Events, line => line.Contains("forged mask line", StringComparison.Ordinal) || line.Length > 20_000);

        // One field named twice (or 650,000 times, each re-validating the labels) is refused whole.
        var repeated = await Assert.ThrowsAsync<RpcException>(async () => await fixture.Client.Raw.UpdateKeyAsync(new UpdateKeyRequest
        {
            Key = new Key { Name = key.Name, Labels = { ["team"] = "twice" } },
            UpdateMask = new Google.Protobuf.WellKnownTypes.FieldMask { Paths = { "labels", "labels" } },
        }));
        Assert.Equal(StatusCode.InvalidArgument, repeated.StatusCode);
        Assert.StartsWith("update_mask:", repeated.Status.Detail, StringComparison.Ordinal);
        Assert.Empty((await fixture.Client.GetKeyAsync(key.Name)).Labels);
    }

    [Fact]
    public async Task HugeNameWithANewline_EchoedBoundedAndPrintable_InTheStatusAndTheLog()
    {
        // A name of another tenant is refused before any lookup, repeating what was sent: at
        // most 256 characters of it, with no control character to forge a log line with.
        var name = "tenants/elsewhere/keys/" + new string('a', 60_000) + "\nforged line";
        var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.GetKeyAsync(name));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.True(e.Status.Detail.Length < 1024, $"{e.Status.Detail.Length} characters");
        Assert.DoesNotContain('\n', e.Status.Detail);
        Assert.Contains("(60035 characters)", e.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(fixture.Server.Logs.Events, line => line.Contains("forged line", StringComparison.Ordinal) || line.Length > 20_000);
    }

    public static TheoryData<string, string> CreateKeyCases() => new()
    {
        { "parent", "{\"parent\":\"\",\"keyId\":\"a\",\"key\":{\"purpose\":\"KEY_PURPOSE_ENCRYPT_DECRYPT\"}}" },
        { "parent", "{\"parent\":\"tenants/dev/keys\",\"keyId\":\"a\",\"key\":{\"purpose\":\"KEY_PURPOSE_ENCRYPT_DECRYPT\"}}" },
        { "key_id", "{\"parent\":\"tenants/dev\",\"keyId\":\"\",\"key\":{\"purpose\":\"KEY_PURPOSE_ENCRYPT_DECRYPT\"}}" },
        { "key_id", "{\"parent\":\"tenants/dev\",\"keyId\":\"has space\",\"key\":{\"purpose\":\"KEY_PURPOSE_ENCRYPT_DECRYPT\"}}" },
        { "key_id", "{\"parent\":\"tenants/dev\",\"keyId\":\"" + new string('x', 64) + "\",\"key\":{\"purpose\":\"KEY_PURPOSE_ENCRYPT_DECRYPT\"}}" },
        { "key", "{\"parent\":\"tenants/dev\",\"keyId\":\"a\"}" },
        { "key.purpose", "{\"parent\":\"tenants/dev\",\"keyId\":\"a\",\"key\":{}}" },
        { "key.purpose", "{\"parent\":\"tenants/dev\",\"keyId\":\"a\",\"key\":{\"purpose\":99}}" },
        { "key.labels", "{\"parent\":\"tenants/dev\",\"keyId\":\"a\",\"key\":{\"purpose\":\"KEY_PURPOSE_ENCRYPT_DECRYPT\",\"labels\":{\"Bad\":\"x\"}}}" },
        { "request_id", "{\"parent\":\"tenants/dev\",\"keyId\":\"a\",\"key\":{\"purpose\":\"KEY_PURPOSE_ENCRYPT_DECRYPT\"},\"requestId\":\"" + new string('r', 129) + "\"}" },
    };

    [Theory]
    [MemberData(nameof(CreateKeyCases))]
    public async Task CreateKey_Malformed_InvalidArgumentNamingFieldAndNothingCreated(string field, string json)
    {
        var before = await CountKeysAsync();
        var request = JsonParser.Default.Parse<CreateKeyRequest>(json);
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.CreateKeyAsync(request));

        AssertInvalidArgument(e, field);
        Assert.Equal(before, await CountKeysAsync());
    }

    [Theory]
    [InlineData("")]
    [InlineData("orders")]
    [InlineData("tenants/dev/keys/a/versions/1")]
    [InlineData("tenants/DEV/keys/a")]
    public async Task GetKey_MalformedName_InvalidArgument(string name)
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.GetKeyAsync(new GetKeyRequest { Name = name }));
        AssertInvalidArgument(e, "name");
    }

    [Fact]
    public async Task GetKey_Unknown_NotFound()
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.GetKeyAsync(new GetKeyRequest { Name = "tenants/dev/keys/nope" }));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.Equal("tenants/dev/keys/nope not found", e.Status.Detail);
    }

    [Theory]
    [InlineData(-1, "", "page_size")]
    [InlineData(10, "garbage!", "page_token")]
    public async Task ListKeys_BadPaging_InvalidArgument(int pageSize, string token, string field)
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev", PageSize = pageSize, PageToken = token }));
        AssertInvalidArgument(e, field);
    }

    [Fact]
    public async Task Encrypt_EmptyPlaintext_InvalidArgument()
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EncryptAsync(new EncryptRequest { Name = _key.Name }));
        AssertInvalidArgument(e, "plaintext");
    }

    [Fact]
    public async Task Encrypt_OverLimit_InvalidArgumentMentioningDataKeys()
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EncryptAsync(new EncryptRequest
        {
            Name = _key.Name,
            Plaintext = ByteString.CopyFrom(new byte[64 * 1024 + 1]),
        }));
        AssertInvalidArgument(e, "plaintext");
        Assert.Contains("GenerateDataKey", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Encrypt_MessageLargerThanServerAccepts_ResourceExhausted()
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EncryptAsync(new EncryptRequest
        {
            Name = _key.Name,
            Plaintext = ByteString.CopyFrom(new byte[6 * 1024 * 1024]),
        }));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
    }

    [Fact]
    public async Task Encrypt_UnknownKey_NotFound()
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EncryptAsync(new EncryptRequest { Name = "tenants/dev/keys/nope", Plaintext = ByteString.CopyFrom(1) }));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
    }

    [Fact]
    public async Task Encrypt_EmptyContextKey_InvalidArgument()
    {
        var request = new EncryptRequest { Name = _key.Name, Plaintext = ByteString.CopyFrom(1) };
        request.EncryptionContext.Add("", "v");
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EncryptAsync(request));
        AssertInvalidArgument(e, "encryption_context");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1025)]
    public async Task GenerateRandom_OutOfRange_InvalidArgument(int length)
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = length }));
        AssertInvalidArgument(e, "length_bytes");
    }

    [Fact]
    public async Task Decrypt_Empty_InvalidArgumentNamingField()
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.DecryptAsync(new DecryptRequest()));
        AssertInvalidArgument(e, "ciphertext");
    }

    [Fact]
    public async Task Decrypt_EveryKindOfUndecryptableBlob_SameOpaqueAnswer()
    {
        var good = (await fixture.Client.EncryptAsync(_key.Name, new byte[] { 1, 2, 3, 4 }, new Dictionary<string, string> { ["c"] = "1" })).Ciphertext;
        var retargeted = (byte[])good.Clone();
        var otherVersionId = Convert.FromHexString(await VersionIdOfAsync(_otherKey));
        otherVersionId.CopyTo(retargeted, 1);
        var unknownVersion = (byte[])good.Clone();
        RandomNumberGenerator.Fill(unknownVersion.AsSpan(1, 16));
        var flippedTag = (byte[])good.Clone();
        flippedTag[^1] ^= 1;
        var badFormat = (byte[])good.Clone();
        badFormat[0] = 9;

        var cases = new (string Name, byte[] Blob, Dictionary<string, string> Context)[]
        {
            ("truncated", good[..^3], new() { ["c"] = "1" }),
            ("header only", good[..20], new() { ["c"] = "1" }),
            ("random", RandomNumberGenerator.GetBytes(80), new() { ["c"] = "1" }),
            ("unknown format", badFormat, new() { ["c"] = "1" }),
            ("unknown key version", unknownVersion, new() { ["c"] = "1" }),
            ("re-targeted at another key", retargeted, new() { ["c"] = "1" }),
            ("tampered tag", flippedTag, new() { ["c"] = "1" }),
            ("other context", good, new() { ["c"] = "2" }),
            ("no context", good, new()),
        };

        foreach (var (name, blob, context) in cases)
        {
            var request = new DecryptRequest { Ciphertext = ByteString.CopyFrom(blob) };
            request.EncryptionContext.Add(context);
            var call = Stub.DecryptAsync(request);
            var e = await Assert.ThrowsAsync<RpcException>(async () => await call);
            Assert.True(e.StatusCode == StatusCode.InvalidArgument, $"{name}: {e.StatusCode}");
            Assert.True(e.Status.Detail == "decryption failed", $"{name}: {e.Status.Detail}");
            Assert.DoesNotContain(call.GetTrailers(), t => t.Key == "grpc-status-details-bin");
        }

        using var stillWorks = await fixture.Client.DecryptAsync(good, new Dictionary<string, string> { ["c"] = "1" });
        Assert.Equal([1, 2, 3, 4], stillWorks.Plaintext.ToArray());
    }

    [Theory]
    [InlineData("Decrypt")]
    [InlineData("ReEncrypt")]
    [InlineData("BatchDecrypt")]
    [InlineData("BatchReEncrypt")]
    public async Task DecryptingCalls_ForgedBlobNamingAVersionOfAKeyOfAnotherPurpose_TheOpaqueAnswerOfAnUnknownVersion(string call)
    {
        // Only ENCRYPT_DECRYPT keys make blobs: one naming a version of a signing, MAC or RSA key was
        // forged. It got FAILED_PRECONDITION "key ... has purpose SIGN_VERIFY, not ENCRYPT_DECRYPT"
        // (naming the key and its purpose), PERMISSION_DENIED where the key's policy named the
        // caller for another operation, or the state of a disabled one — telling a prober which
        // version ids exist and what they are for.
        var keys = fixture.Server.Services.GetRequiredService<Kms.Core.Ports.IKeyStore>();
        async Task<byte[]> IdOfAsync(Key key) =>
            (await keys.GetVersionAsync(Kms.Core.Names.KeyVersionName.Parse($"{key.Name}/versions/1", "name"), default))!.Id.ToBytes();
        var signing = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("forged-sign"), KeyPurpose.SignVerify);
        var mac = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("forged-mac"), KeyPurpose.Mac);
        var rsa = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("forged-rsa"), KeyPurpose.AsymmetricDecrypt, KeyAlgorithm.RsaDecryptOaep2048Sha1);
        var disabledMac = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("forged-off"), KeyPurpose.Mac);
        await Stub.DisableKeyAsync(new DisableKeyRequest { Name = disabledMac.Name });
        var policed = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("forged-policy"), KeyPurpose.SignVerify);
        await Stub.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = policed.Name, Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "SIGN" } } } });

        var good = (await fixture.Client.EncryptAsync(_key.Name, new byte[] { 1, 2, 3 })).Ciphertext;
        byte[] Naming(byte[] id)
        {
            var forged = (byte[])good.Clone();
            id.CopyTo(forged, 1);
            return forged;
        }

        var cases = new List<(string Name, byte[] Blob)> { ("unknown version", Naming(RandomNumberGenerator.GetBytes(16))) };
        foreach (var (name, key) in new[] { ("SIGN_VERIFY", signing), ("MAC", mac), ("ASYMMETRIC_DECRYPT", rsa), ("disabled MAC", disabledMac), ("SIGN_VERIFY naming the caller for SIGN", policed) })
        {
            cases.Add((name, Naming(await IdOfAsync(key))));
        }

        using var officer = await OfficerAsync();
        var answers = new List<(string Case, StatusCode Code, string Detail, string? Outcome, string? Resource)>();
        foreach (var (name, blob) in cases)
        {
            var requestId = $"forged-{Guid.NewGuid():N}";
            var options = new CallOptions(new Metadata { { "x-request-id", requestId } });
            var ciphertext = ByteString.CopyFrom(blob);
            StatusCode code;
            string detail;
            try
            {
                switch (call)
                {
                    case "Decrypt":
                        await Stub.DecryptAsync(new DecryptRequest { Ciphertext = ciphertext }, options);
                        throw new Xunit.Sdk.XunitException($"{name}: decrypted");
                    case "ReEncrypt":
                        await Stub.ReEncryptAsync(new ReEncryptRequest { Ciphertext = ciphertext, DestinationName = _key.Name }, options);
                        throw new Xunit.Sdk.XunitException($"{name}: re-encrypted");
                    case "BatchDecrypt":
                        var decrypted = (await Stub.BatchDecryptAsync(new BatchDecryptRequest { Requests = { new DecryptRequest { Ciphertext = ciphertext } } }, options)).Results.Single();
                        (code, detail) = ((StatusCode)decrypted.Status.Code, decrypted.Status.Message);
                        break;
                    default:
                        var reEncrypted = (await Stub.BatchReEncryptAsync(new BatchReEncryptRequest { Requests = { new ReEncryptRequest { Ciphertext = ciphertext, DestinationName = _key.Name } } }, options)).Results.Single();
                        (code, detail) = ((StatusCode)reEncrypted.Status.Code, reEncrypted.Status.Message);
                        break;
                }
            }
            catch (RpcException e)
            {
                (code, detail) = (e.StatusCode, e.Status.Detail);
            }

            // The single calls' audit events: the same outcome, and no resource (the blob names none the caller gave).
            string? outcome = null, resource = null;
            if (!call.StartsWith("Batch", StringComparison.Ordinal))
            {
                var events = await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Principal = "token:developer", Operation = $"/kms.v1.KeyManagementService/{call}", PageSize = 1000 });
                var audited = Assert.Single(events.Events, e => e.RequestId == requestId);
                (outcome, resource) = (audited.Outcome, audited.Resource);
            }

            answers.Add((name, code, detail, outcome, resource));
        }

        var unknown = answers[0];
        Assert.Equal((StatusCode.InvalidArgument, "decryption failed"), (unknown.Code, unknown.Detail));
        Assert.All(answers, a => Assert.Equal((a.Case, unknown.Code, unknown.Detail, unknown.Outcome, unknown.Resource), (a.Case, a.Code, a.Detail, a.Outcome, a.Resource)));
    }

    [Theory]
    [InlineData("key disabled")]
    [InlineData("version disabled")]
    public async Task Decrypt_ForgedBlobNamingAVersionOfTheCallersOwnEncryptionKey_TheAnswerItsHonestBlobGets(string state)
    {
        // Documented (docs/ciphertext-format.md, "Decryption", step 3): the caller's own encryption key
        // that is not usable is FAILED_PRECONDITION naming the state. A forged blob naming such a
        // version learns no more than an honest blob of that version is told.
        var target = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("own"));
        var honest = (await fixture.Client.EncryptAsync(target.Name, new byte[] { 7 })).Ciphertext;
        if (state == "key disabled")
        {
            await Stub.DisableKeyAsync(new DisableKeyRequest { Name = target.Name });
        }
        else
        {
            await fixture.Client.RotateKeyAsync(target.Name);
            await Stub.DisableKeyVersionAsync(new DisableKeyVersionRequest { Name = $"{target.Name}/versions/1" });
        }

        var forged = (await fixture.Client.EncryptAsync(_key.Name, new byte[] { 1, 2, 3 })).Ciphertext;
        honest.AsSpan(1, 16).CopyTo(forged.AsSpan(1));

        var honestAnswer = await StatusOfAsync(async () => await Stub.DecryptAsync(new DecryptRequest { Ciphertext = ByteString.CopyFrom(honest) }));
        var forgedAnswer = await StatusOfAsync(async () => await Stub.DecryptAsync(new DecryptRequest { Ciphertext = ByteString.CopyFrom(forged) }));
        Assert.Equal((StatusCode.FailedPrecondition, state == "key disabled" ? $"key {target.Name} is DISABLED" : $"key version {target.Name}/versions/1 is DISABLED"), honestAnswer);
        Assert.Equal(honestAnswer, forgedAnswer);
    }

    [Fact]
    public async Task Decrypt_OverLimit_InvalidArgumentNamingField()
    {
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.DecryptAsync(new DecryptRequest { Ciphertext = ByteString.CopyFrom(new byte[70_000]) }));
        AssertInvalidArgument(e, "ciphertext");
    }

    [Theory]
    [InlineData("ScheduleKeyDeletion", "waiting_period", 40)]
    [InlineData("ScheduleKeyVersionDestruction", "waiting_period", 40)]
    [InlineData("CreateKey", "key.rotation_period", 36_550)]
    [InlineData("UpdateKey", "key.rotation_period", 36_550)]
    [InlineData("CreateApiToken", "lifetime", 1)]
    [InlineData("DeleteTenant", "waiting_period", 40)]
    [InlineData("CreateQuorumRequest", "ttl", 8)]
    public async Task DurationFields_TenThousandYears_RefusedWithTheFieldsOwnRange_NothingChanged(string call, string field, int tooManyDays)
    {
        // The longest Duration (10,000 years) was refused "must be at most 36600 days" — no field's
        // limit (a waiting period's is 30 days), so a caller who took the message at its word was
        // refused again. Before that it said "must be a positive duration". It gets what a
        // duration just past the field's own range gets: that range.
        var longest = new Google.Protobuf.WellKnownTypes.Duration { Seconds = Google.Protobuf.WellKnownTypes.Duration.MaxSeconds, Nanos = 999_999_999 };
        var pastRange = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromDays(tooManyDays));
        using var admin = fixture.Server.CreateClient(await fixture.Server.CreatePrincipalWithTokenAsync(ServerFixture.NewKeyId("dadmin"), null, "deployment-admin"));
        using var officer = await OfficerAsync();
        var keyId = ServerFixture.NewKeyId("dur");
        Task Send(Google.Protobuf.WellKnownTypes.Duration duration) => call switch
        {
            "ScheduleKeyDeletion" => Stub.ScheduleKeyDeletionAsync(new ScheduleKeyDeletionRequest { Name = _key.Name, WaitingPeriod = duration }).ResponseAsync,
            "ScheduleKeyVersionDestruction" => Stub.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest { Name = $"{_key.Name}/versions/1", WaitingPeriod = duration }).ResponseAsync,
            "CreateKey" => Stub.CreateKeyAsync(new CreateKeyRequest { Parent = "tenants/dev", KeyId = keyId, Key = new Key { Purpose = KeyPurpose.EncryptDecrypt, RotationPeriod = duration } }).ResponseAsync,
            "UpdateKey" => Stub.UpdateKeyAsync(new UpdateKeyRequest { Key = new Key { Name = _key.Name, RotationPeriod = duration }, UpdateMask = new Google.Protobuf.WellKnownTypes.FieldMask { Paths = { "rotation_period" } } }).ResponseAsync,
            "CreateApiToken" => admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:developer", Kind = "SESSION", Lifetime = duration }).ResponseAsync,
            "DeleteTenant" => admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/dev", WaitingPeriod = duration }).ResponseAsync,
            _ => officer.Quorum.CreateQuorumRequestAsync(new CreateQuorumRequestRequest
            {
                Parent = "tenants/dev",
                Operation = QuorumOperation.DestroyKeyVersionNow,
                Ttl = duration,
                DestroyKeyVersionNow = new DestroyKeyVersionNowParameters { Name = $"{_otherKey.Name}/versions/1" },
            }).ResponseAsync,
        };

        var atLongest = await Assert.ThrowsAsync<RpcException>(() => Send(longest));
        var pastItsRange = await Assert.ThrowsAsync<RpcException>(() => Send(pastRange));

        AssertInvalidArgument(pastItsRange, field);
        AssertInvalidArgument(atLongest, field);
        Assert.Equal(pastItsRange.Status.Detail, atLongest.Status.Detail);
        Assert.DoesNotContain(" 1 minutes", atLongest.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(" 1 days", atLongest.Status.Detail, StringComparison.Ordinal);
        var key = (await Stub.GetKeyAsync(new GetKeyRequest { Name = _key.Name })).Key;
        Assert.Equal((KeyState.Enabled, KeyState.Enabled, null), (key.State, key.Primary.State, key.RotationPeriod));
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(async () => await Stub.GetKeyAsync(new GetKeyRequest { Name = $"tenants/dev/keys/{keyId}" }))).StatusCode);
        Assert.Null((await admin.Access.GetTenantAsync(new GetTenantRequest { Name = "tenants/dev" })).Tenant.DeleteTime);
    }

    [Fact]
    public async Task AfterAllThat_ServerStillHealthyAndNoStackTraceReachedAClient()
    {
        await Assert.ThrowsAsync<RpcException>(async () => await Stub.DecryptAsync(new DecryptRequest { Ciphertext = ByteString.CopyFrom(RandomNumberGenerator.GetBytes(100)) }));
        Assert.Equal(8, (await fixture.Client.GenerateRandomAsync(8)).Length);
        Assert.DoesNotContain(fixture.Server.Logs.Events, e => e.StartsWith("Error", StringComparison.Ordinal) || e.StartsWith("Fatal", StringComparison.Ordinal));
    }

    private static void AssertInvalidArgument(RpcException e, string field)
    {
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith(field + ":", e.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotMatch(@"\n\s*at \S+\(", e.Status.Detail);
        Assert.DoesNotContain("Exception", e.Status.Detail, StringComparison.Ordinal);
        var status = e.GetRpcStatus();
        Assert.NotNull(status);
        var badRequest = status.GetDetail<BadRequest>();
        Assert.Equal(field, Assert.Single(badRequest.FieldViolations).Field);
    }

    private async Task<int> CountKeysAsync()
    {
        var count = 0;
        await foreach (var _ in fixture.Client.ListKeysAsync("tenants/dev", 1000))
        {
            count++;
        }

        return count;
    }

    // The version id is in every blob's header: take it from a blob of that key.
    private async Task<string> VersionIdOfAsync(Key key) =>
        Convert.ToHexString((await fixture.Client.EncryptAsync(key.Name, new byte[] { 0 })).Ciphertext.AsSpan(1, 16));
}
