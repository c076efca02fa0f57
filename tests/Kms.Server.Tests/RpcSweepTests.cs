using System.Collections;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Google.Protobuf.Reflection;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Data.Sqlite;
using Xunit.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// Every unary RPC of every kms.v1 service, sent well-formed but hostile requests generated from
/// its message descriptor (docs/fuzzing.md, "RPC sweep"): each answer a clear status (never
/// UNKNOWN or INTERNAL, a detail that says something and does not echo a long input back), no
/// Error logged, nothing in the database changed by a refused call, and the server still serving.
/// </summary>
/// <remarks>
/// Seeded: <c>KMS_SWEEP_SEED</c> runs another seed (and <c>KMS_SWEEP_REQUESTS</c> more requests per method); a failure prints the seed, the method, the
/// request's index, its fields and its bytes (hex), and <see cref="ReplayAsync"/> sends such bytes again.
/// </remarks>
public sealed class RpcSweepTests(ServerFixture fixture, ITestOutputHelper output) : IClassFixture<ServerFixture>
{
    /// <summary>Requests generated per unary method in CI: with four callers, three each (<c>KMS_SWEEP_REQUESTS</c> for a longer run).</summary>
    private const int DefaultRequestsPerMethod = 12;

    /// <summary>Longest run of a generated input a status detail may repeat: the server's own bound on an echoed name.</summary>
    private const int MaxEcho = Kms.Core.Errors.KmsErrors.MaxEchoedName;

    private const int DefaultSeed = 20261205;

    private static readonly Marshaller<byte[]> Raw = Marshallers.Create<byte[]>(b => b, b => b);

    // Written only by the audit trail of every call, refused or not: not part of "nothing changed".
    private static readonly HashSet<string> UnsnapshottedTables = new(StringComparer.Ordinal) { "audit_events", "audit_checkpoints", "schema_migrations", "usage_flushes" };

    // Written in the background whatever the calls: usage counters (flushed in batches, each
    // recorded in usage_flushes; encryptions reserved ahead, a deliberate upper bound) and the
    // lifecycle's record of the time seen.
    private static readonly HashSet<string> UnsnapshottedColumns = new(StringComparer.Ordinal)
    {
        "key_versions.encrypt_count", "key_versions.decrypt_count", "key_versions.last_encrypt_time", "key_versions.last_decrypt_time",
    };

    public static TheoryData<string> Services() => new(
        KeyManagementService.Descriptor.FullName,
        AccessManagementService.Descriptor.FullName,
        AuditService.Descriptor.FullName,
        QuorumService.Descriptor.FullName);

    private static ServiceDescriptor ServiceByName(string name) => name switch
    {
        _ when name == KeyManagementService.Descriptor.FullName => KeyManagementService.Descriptor,
        _ when name == AccessManagementService.Descriptor.FullName => AccessManagementService.Descriptor,
        _ when name == AuditService.Descriptor.FullName => AuditService.Descriptor,
        _ => QuorumService.Descriptor,
    };

    private static int RequestsPerMethod => int.TryParse(Environment.GetEnvironmentVariable("KMS_SWEEP_REQUESTS"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var count) && count > 0 ? count : DefaultRequestsPerMethod;

    private static int Seed => int.TryParse(Environment.GetEnvironmentVariable("KMS_SWEEP_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var seed) ? seed : DefaultSeed;

    [Theory]
    [MemberData(nameof(Services))]
    public async Task EveryMethod_HostileWellFormedRequests_ClearStatus_NothingChanged_StillServing(string serviceName)
    {
        var service = ServiceByName(serviceName);
        var world = await SweepWorld.CreateAsync(fixture.Server, fixture.Client);
        using var channel = fixture.Server.CreateChannel();
        var invoker = channel.CreateCallInvoker();
        var failures = new List<string>();
        var calls = 0;
        var statuses = new List<(string Method, StatusCode Code)>();
        foreach (var method in service.Methods)
        {
            var seed = Seed ^ StableHash(method.FullName);
            var random = new Random(seed);
            var generator = new RequestGenerator(random, world);
            // A stream is sent one request per caller: its request is checked as a unary one's, and an export can be long.
            var requests = method.IsServerStreaming || method.IsClientStreaming ? world.Callers.Count : RequestsPerMethod;
            for (var i = 0; i < requests; i++)
            {
                var caller = world.Callers[i % world.Callers.Count];
                var (request, fields) = generator.Generate(method.InputType);
                var body = request.ToByteArray();
                var (code, failure) = await CallAndCheckAsync(invoker, method, caller, body, generator.LongValues, world);
                statuses.Add((method.Name, code));
                calls++;
                if (failure is not null)
                {
                    failures.Add($"{method.FullName} as {caller.Name}, seed {seed} (KMS_SWEEP_SEED={Seed}), request {i}: {failure}\n  fields: {fields}\n  request (hex{(body.Length > 2048 ? $", first 2048 of {body.Length} bytes" : "")}): {Convert.ToHexString(body.AsSpan(0, Math.Min(body.Length, 2048)))}");
                }
            }
        }

        // What the requests reached (a sweep answered only PERMISSION_DENIED would test little).
        foreach (var method in statuses.GroupBy(s => s.Method))
        {
            output.WriteLine($"{method.Key}: {string.Join(", ", method.GroupBy(s => s.Code).Select(c => $"{c.Key} {c.Count()}"))}");
        }

        Assert.True(calls > 0);
        Assert.True(failures.Count == 0, $"{failures.Count} of {calls} calls broke a property:\n" + string.Join("\n", failures.Take(20)));
    }

    [Fact]
    public async Task DeleteAlias_OfAnAliasAlreadyDeleted_NotFound_WritesNoChangeFeedRow()
    {
        // Found by the sweep (KMS_SWEEP_SEED=77 KMS_SWEEP_REQUESTS=200, DeleteAlias request 109, as
        // the developer): the store's no-op delete was announced in the change feed, so a refused
        // call wrote a row and made every node drop its cached metadata. The request as generated.
        const string Request = "0A4074656E616E74732F6465762F616C69617365732F73776565702D616C6961732D3561633561333666666161303463626239346165343866386161623631356632";
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("sweep-regression"));
        await fixture.Client.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = "sweep-alias-5ac5a36ffaa04cbb94ae48f8aab615f2", Alias = new Alias { Key = key.Name } });
        Assert.Null(await ReplayAsync(fixture.Server, "/kms.v1.KeyManagementService/DeleteAlias", fixture.Server.DeveloperToken, Request));
        var changes = await ChangeRowsAsync();

        var e = await ReplayAsync(fixture.Server, "/kms.v1.KeyManagementService/DeleteAlias", fixture.Server.DeveloperToken, Request);

        Assert.Equal((StatusCode.NotFound, "tenants/dev/aliases/sweep-alias-5ac5a36ffaa04cbb94ae48f8aab615f2 not found"), (e?.StatusCode, e?.Status.Detail));
        Assert.Equal(changes, await ChangeRowsAsync());
    }

    [Fact]
    public async Task UpdateAliasRevokeApiTokenDeleteRoleBinding_OfNothing_WriteNoChangeFeedRow()
    {
        // The same no-op writes as DeleteAlias's, beside it in the store: each announced a change it
        // did not make. A missing alias or token is NOT_FOUND; a binding the principal does not have
        // is removed as if it had been (OK), and changes nothing either.
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("sweep-regression"));
        using var admin = fixture.Server.DeploymentAdmin();
        var principal = $"token:{ServerFixture.NewKeyId("sweep-regression")}";
        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = principal, Tenant = "tenants/dev" });
        var calls = new (string Name, StatusCode Expected, Func<Task> Call)[]
        {
            ("UpdateAlias", StatusCode.NotFound, async () => await fixture.Client.Raw.UpdateAliasAsync(new UpdateAliasRequest { Name = $"tenants/dev/aliases/{ServerFixture.NewKeyId("missing")}", Key = key.Name })),
            ("RevokeApiToken", StatusCode.NotFound, async () => await admin.Access.RevokeApiTokenAsync(new RevokeApiTokenRequest { Id = "0123456789abcdef" })),
            ("DeleteRoleBinding", StatusCode.OK, async () => await admin.Access.DeleteRoleBindingAsync(new DeleteRoleBindingRequest { Principal = principal, Role = "auditor", Tenant = "tenants/dev" })),
        };
        foreach (var (name, expected, call) in calls)
        {
            var changes = await ChangeRowsAsync();
            var code = StatusCode.OK;
            try
            {
                await call();
            }
            catch (RpcException e)
            {
                code = e.StatusCode;
            }

            Assert.Equal((name, expected, changes), (name, code, await ChangeRowsAsync()));
        }
    }

    private async Task<long> ChangeRowsAsync()
    {
        await using var connection = new SqliteConnection($"Data Source={fixture.Server.DatabasePath};Mode=ReadOnly;Pooling=False");
        await connection.OpenAsync();
        return await StoreInvariants.ScalarAsync(connection, "SELECT count(*) FROM changes");
    }

    /// <summary>One call and every property: its status, and what broke (null: nothing).</summary>
    private async Task<(StatusCode Code, string? Failure)> CallAndCheckAsync(CallInvoker invoker, MethodDescriptor method, SweepCaller caller, byte[] body, IReadOnlyList<string> longValues, SweepWorld world)
    {
        var errorsBefore = ErrorCount();
        var before = await world.SnapshotAsync();
        var options = new CallOptions(KmsTestServer.Bearer(caller.Token), DateTime.UtcNow.AddSeconds(30));
        StatusCode code;
        string detail;
        Metadata trailers;
        if (method.IsServerStreaming || method.IsClientStreaming)
        {
            (code, detail, trailers) = await StreamAsync(invoker, method, options, body);
        }
        else
        {
            try
            {
                await invoker.AsyncUnaryCall(new Method<byte[], byte[]>(MethodType.Unary, method.Service.FullName, method.Name, Raw, Raw), null, options, body).ResponseAsync;
                (code, detail, trailers) = (StatusCode.OK, "", []);
            }
            catch (RpcException e)
            {
                (code, detail, trailers) = (e.StatusCode, e.Status.Detail, e.Trailers);
            }
        }

        var problems = new List<string>();
        if (code is StatusCode.Unknown or StatusCode.Internal or StatusCode.DeadlineExceeded or StatusCode.Cancelled)
        {
            problems.Add($"status {code}");
        }

        if (code != StatusCode.OK && string.IsNullOrWhiteSpace(detail))
        {
            problems.Add($"status {code} with an empty detail");
        }

        foreach (var text in DetailTexts(detail, trailers))
        {
            if (Echo(text, longValues) is { } echoed)
            {
                problems.Add($"status {code}: the detail repeats {echoed} characters of the input ({text.Length} characters: {Shorten(text)})");
            }
        }

        var errors = fixture.Server.Logs.Events.Where(e => e.StartsWith("Error", StringComparison.Ordinal)).Skip(errorsBefore).ToList();
        if (errors.Count > 0)
        {
            problems.Add($"logged at Error: {Shorten(errors[0], 600)}");
        }

        if (code != StatusCode.OK && SweepWorld.Diff(before, await world.SnapshotAsync()) is { } changed)
        {
            problems.Add($"refused ({code}: {Shorten(detail)}) but changed the database: {changed}");
        }

        try
        {
            await world.Developer.GetKeyAsync(new GetKeyRequest { Name = world.KnownGoodKey }, deadline: DateTime.UtcNow.AddSeconds(30));
        }
        catch (RpcException e)
        {
            problems.Add($"a known-good GetKey failed afterwards: {e.Status}");
        }

        return (code, problems.Count == 0 ? null : $"{code} \"{Shorten(detail)}\": " + string.Join("; ", problems));
    }

    private static async Task<(StatusCode Code, string Detail, Metadata Trailers)> StreamAsync(CallInvoker invoker, MethodDescriptor method, CallOptions options, byte[] body)
    {
        try
        {
            using var call = invoker.AsyncServerStreamingCall(new Method<byte[], byte[]>(MethodType.ServerStreaming, method.Service.FullName, method.Name, Raw, Raw), null, options, body);
            while (await call.ResponseStream.MoveNext())
            {
            }

            return (StatusCode.OK, "", call.GetTrailers());
        }
        catch (RpcException e)
        {
            return (e.StatusCode, e.Status.Detail, e.Trailers);
        }
    }

    // The detail, and the messages and field violations of a google.rpc.Status in the trailers.
    private static IEnumerable<string> DetailTexts(string detail, Metadata trailers)
    {
        yield return detail;
        var rich = trailers.GetValueBytes("grpc-status-details-bin");
        if (rich is null)
        {
            yield break;
        }

        var status = Google.Rpc.Status.Parser.ParseFrom(rich);
        yield return status.Message;
        foreach (var any in status.Details)
        {
            if (any.TryUnpack<Google.Rpc.BadRequest>(out var bad))
            {
                foreach (var violation in bad.FieldViolations)
                {
                    yield return violation.Field;
                    yield return violation.Description;
                }
            }
        }
    }

    /// <summary>The length of the longest run of a long input the text repeats, when over <see cref="MaxEcho"/>; else null.</summary>
    private static int? Echo(string text, IReadOnlyList<string> longValues)
    {
        if (text.Length <= MaxEcho)
        {
            return null;
        }

        if (text.Length > 4 * 1024)
        {
            return text.Length; // no status needs this much; it is an input echoed (or a dump)
        }

        var window = MaxEcho + 1;
        for (var start = 0; start + window <= text.Length; start++)
        {
            var piece = text.AsSpan(start, window);
            foreach (var value in longValues)
            {
                if (value.AsSpan().IndexOf(piece, StringComparison.Ordinal) >= 0)
                {
                    return window;
                }
            }
        }

        return null;
    }

    private int ErrorCount() => fixture.Server.Logs.Events.Count(e => e.StartsWith("Error", StringComparison.Ordinal));

    private static string Shorten(string text, int length = 160) =>
        text.Length <= length ? text : string.Concat(text.AsSpan(0, length), $"… ({text.Length} characters)");

    private static int StableHash(string text)
    {
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(text));
        return BitConverter.ToInt32(hash, 0) & int.MaxValue;
    }

    /// <summary>A caller of the sweep and its bearer token.</summary>
    private sealed record SweepCaller(string Name, string Token);

    /// <summary>
    /// What the sweep runs against: its callers, real resource names generated requests may name
    /// (so that handlers are reached past their name checks), a key no request names, and the
    /// database to snapshot.
    /// </summary>
    private sealed class SweepWorld
    {
        private readonly string _databasePath;

        private SweepWorld(string databasePath, KeyManagementService.KeyManagementServiceClient developer, string knownGoodKey, IReadOnlyList<SweepCaller> callers, IReadOnlyList<string> realNames, byte[] ciphertext)
        {
            _databasePath = databasePath;
            Developer = developer;
            KnownGoodKey = knownGoodKey;
            Callers = callers;
            RealNames = realNames;
            Ciphertext = ciphertext;
        }

        public KeyManagementService.KeyManagementServiceClient Developer { get; }

        /// <summary>A key no generated request names: GetKey on it must keep working.</summary>
        public string KnownGoodKey { get; }

        /// <summary>The deployment admin, the developer (every tenant role in dev), a key-user of dev and a security officer.</summary>
        public IReadOnlyList<SweepCaller> Callers { get; }

        public IReadOnlyList<string> RealNames { get; }

        /// <summary>A real ciphertext of one of <see cref="RealNames"/>' keys.</summary>
        public byte[] Ciphertext { get; }

        public static async Task<SweepWorld> CreateAsync(KmsTestServer server, Kms.Client.KmsClient client)
        {
            var developer = client.Raw;
            var good = await client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("sweep-good"));
            var victim = await client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("sweep"));
            var alias = ServerFixture.NewKeyId("sweep-alias");
            await developer.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = alias, Alias = new Alias { Key = victim.Name } });
            var ciphertext = (await developer.EncryptAsync(new EncryptRequest { Name = victim.Name, Plaintext = ByteString.CopyFromUtf8("sweep") })).Ciphertext.ToByteArray();
            var tenant = ServerFixture.NewKeyId("sweep");
            await server.EnsureTenantAsync(tenant);
            var principal = $"token:{ServerFixture.NewKeyId("sweep-victim")}";
            using (var admin = server.DeploymentAdmin())
            {
                await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = principal, Tenant = "tenants/dev" });
            }

            SweepCaller[] callers =
            [
                new("deployment-admin", server.DeploymentAdminToken),
                new("developer", server.DeveloperToken),
                new("key-user", server.KeyUserToken),
                new("security-officer", await server.CreatePrincipalWithTokenAsync(ServerFixture.NewKeyId("sweep-officer"), null, "security-officer")),
            ];
            // Never the sweep's own callers or the dev tenant itself as a name: DeletePrincipal or
            // DeleteTenant on them would (rightly) succeed and end the sweep. "tenants/dev" is
            // offered as a parent only (RequestGenerator.String).
            string[] names =
            [
                victim.Name,
                victim.Name + "/versions/1",
                $"tenants/dev/aliases/{alias}",
                $"tenants/{tenant}",
                principal,
            ];
            return new SweepWorld(server.DatabasePath, developer, good.Name, callers, names, ciphertext);
        }

        /// <summary>Per table (but the audit trail's): its row count and a digest of every row.</summary>
        public async Task<Dictionary<string, (long Rows, string Digest)>> SnapshotAsync()
        {
            await using var connection = new SqliteConnection($"Data Source={_databasePath};Mode=ReadOnly;Pooling=False");
            await connection.OpenAsync();
            await using var begin = connection.CreateCommand();
            begin.CommandText = "BEGIN";
            await begin.ExecuteNonQueryAsync();
            var tables = new List<string>();
            await using (var list = connection.CreateCommand())
            {
                list.CommandText = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name";
                await using var reader = await list.ExecuteReaderAsync();
                while (await reader.ReadAsync())
                {
                    tables.Add(reader.GetString(0));
                }
            }

            var snapshot = new Dictionary<string, (long, string)>(StringComparer.Ordinal);
            foreach (var table in tables.Where(t => !UnsnapshottedTables.Contains(t) && !t.StartsWith("sqlite_", StringComparison.Ordinal)))
            {
                await using var select = connection.CreateCommand();
                select.CommandText = table == "settings"
                    ? $"SELECT * FROM settings WHERE name <> '{Kms.Core.Services.LifecycleClock.Setting}' ORDER BY rowid"
                    : $"SELECT * FROM \"{table}\" ORDER BY rowid";
                await using var reader = await select.ExecuteReaderAsync();
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                long rows = 0;
                while (await reader.ReadAsync())
                {
                    rows++;
                    for (var column = 0; column < reader.FieldCount; column++)
                    {
                        if (UnsnapshottedColumns.Contains($"{table}.{reader.GetName(column)}"))
                        {
                            continue;
                        }

                        var value = reader.IsDBNull(column) ? "\u0001null" : reader.GetValue(column) is byte[] bytes ? Convert.ToHexString(bytes) : Convert.ToString(reader.GetValue(column), CultureInfo.InvariantCulture);
                        hash.AppendData(Encoding.UTF8.GetBytes(value + "\u0000"));
                    }
                }

                snapshot[table] = (rows, Convert.ToHexString(hash.GetHashAndReset()));
            }

            return snapshot;
        }

        public static string? Diff(Dictionary<string, (long Rows, string Digest)> before, Dictionary<string, (long Rows, string Digest)> after)
        {
            var changed = before.Keys.Union(after.Keys)
                .Where(t => !before.TryGetValue(t, out var b) || !after.TryGetValue(t, out var a) || b != a)
                .Select(t => $"{t} ({(before.TryGetValue(t, out var b) ? b.Rows : 0)} -> {(after.TryGetValue(t, out var a) ? a.Rows : 0)} rows)")
                .ToList();
            return changed.Count == 0 ? null : string.Join(", ", changed);
        }
    }

    /// <summary>Requests built by reflection over a message descriptor, each field a hostile value of its type.</summary>
    private sealed class RequestGenerator(Random random, SweepWorld world)
    {
        private const int MaxDepth = 3;
        private const int OneMiB = 1024 * 1024;
        private const int LongLength = 64 * 1024;

        private readonly List<string> _longValues = [];
        private readonly StringBuilder _fields = new();
        private int _largeBudget;
        private int _mute;

        /// <summary>The generated strings (and map values) of the last request longer than <see cref="MaxEcho"/>.</summary>
        public IReadOnlyList<string> LongValues => _longValues;

        public (IMessage Request, string Fields) Generate(MessageDescriptor descriptor)
        {
            _longValues.Clear();
            _fields.Clear();
            _largeBudget = 2;
            _mute = 0; // 1 MiB values per request: the server's request limit is a few MiB
            var message = Message(descriptor, 0, "", small: false);
            return (message, _fields.ToString());
        }

        private IMessage Message(MessageDescriptor descriptor, int depth, string path, bool small)
        {
            var message = (IMessage)Activator.CreateInstance(descriptor.ClrType)!;
            foreach (var field in descriptor.Fields.InFieldNumberOrder())
            {
                if (random.Next(5) == 0)
                {
                    continue; // some fields unset
                }

                var name = path + field.Name;
                if (field.IsMap)
                {
                    var map = (IDictionary)field.Accessor.GetValue(message);
                    var keyField = field.MessageType.FindFieldByNumber(1);
                    var valueField = field.MessageType.FindFieldByNumber(2);
                    switch (small ? random.Next(2) : random.Next(4))
                    {
                        case 0:
                            Note(name, "{}");
                            break;
                        case 1:
                            map[Scalar(keyField, name, small: true, forceEmpty: true)] = Value(valueField, depth, name + "[\"\"]", small: true);
                            break;
                        case 2 when valueField.FieldType == FieldType.String:
                            map[Scalar(keyField, name, small: true)] = LongString("v", name + "[…]");
                            break;
                        default:
                            _mute++;
                            for (var i = 0; i < 1000; i++)
                            {
                                map[Key(keyField, i)] = Value(valueField, depth, name, small: true);
                            }

                            _mute--;
                            Note(name, "1000 entries");
                            break;
                    }

                    continue;
                }

                if (field.IsRepeated)
                {
                    var list = (IList)field.Accessor.GetValue(message);
                    var count = (small ? random.Next(2) : random.Next(3)) switch { 0 => 0, 1 => 1, _ => 1000 };
                    Note(name, $"{count} items");
                    _mute += count > 1 ? 1 : 0;
                    for (var i = 0; i < count; i++)
                    {
                        list.Add(Value(field, depth, $"{name}[{i}]", small: small || count > 1));
                    }

                    _mute -= count > 1 ? 1 : 0;
                    continue;
                }

                field.Accessor.SetValue(message, Value(field, depth, name, small));
            }

            return message;
        }

        private object Value(FieldDescriptor field, int depth, string name, bool small) =>
            field.FieldType == FieldType.Message
                ? depth >= MaxDepth ? Activator.CreateInstance(field.MessageType.ClrType)! : Message(field.MessageType, depth + 1, name + ".", small)
                : Scalar(field, name, small);

        private static object Key(FieldDescriptor keyField, int i) => keyField.FieldType switch
        {
            FieldType.String => $"k{i}",
            FieldType.Bool => i % 2 == 0,
            FieldType.Int64 or FieldType.SInt64 or FieldType.SFixed64 => (long)i,
            FieldType.UInt64 or FieldType.Fixed64 => (ulong)i,
            FieldType.UInt32 or FieldType.Fixed32 => (uint)i,
            _ => i,
        };

        private object Scalar(FieldDescriptor field, string name, bool small, bool forceEmpty = false)
        {
            object value = field.FieldType switch
            {
                FieldType.String => forceEmpty ? "" : String(field, name, small),
                FieldType.Bytes => Bytes(field, name, small),
                FieldType.Bool => random.Next(2) == 0,
                FieldType.Int32 or FieldType.SInt32 or FieldType.SFixed32 => Pick(0, -1, 1, 32, int.MinValue, int.MaxValue),
                FieldType.Int64 or FieldType.SInt64 or FieldType.SFixed64 => Pick(0L, -1L, 1L, 1000L, long.MinValue, long.MaxValue, int.MaxValue + 1L),
                FieldType.UInt32 or FieldType.Fixed32 => Pick(0u, 1u, 32u, uint.MaxValue),
                FieldType.UInt64 or FieldType.Fixed64 => Pick(0ul, 1ul, ulong.MaxValue),
                FieldType.Double => Pick(0d, -1d, double.NaN, double.PositiveInfinity, double.MaxValue),
                FieldType.Float => Pick(0f, -1f, float.NaN, float.NegativeInfinity),
                FieldType.Enum => Enum.ToObject(field.EnumType.ClrType, EnumNumber(field.EnumType)),
                _ => throw new InvalidOperationException($"{field.FullName}: {field.FieldType}"),
            };
            if (field.FieldType is not (FieldType.String or FieldType.Bytes))
            {
                Note(name, Convert.ToString(value, CultureInfo.InvariantCulture)!);
            }

            return value;
        }

        // 0, numbers no enum defines, and a defined value — never an RSA one: an RSA-4096 key
        // (CreateKey, CreateImportJob) takes seconds of SoftHSM's time, and the sweep would make dozens.
        private int EnumNumber(EnumDescriptor type)
        {
            var defined = type.Values.Where(v => v.Number != 0 && !v.Name.Contains("RSA", StringComparison.Ordinal)).Select(v => v.Number).ToList();
            return random.Next(5) switch
            {
                0 => 0,
                1 => -1,
                2 => int.MaxValue,
                3 => type.Values.Max(v => v.Number) + 1 + random.Next(1000),
                _ => defined.Count == 0 ? 0 : defined[random.Next(defined.Count)],
            };
        }

        private string String(FieldDescriptor field, string name, bool small)
        {
            var real = field.Name is "parent" or "tenant" && random.Next(2) == 0 ? "tenants/dev" : world.RealNames[random.Next(world.RealNames.Count)];
            var choice = random.Next(small ? 9 : 12);
            var (label, value) = choice switch
            {
                0 => ("empty", ""),
                1 => ("1 char", "a"),
                2 => ("another tenant's key", "tenants/other/keys/k"),
                3 => ("dot-dot path", "tenants/dev/keys/../../other/keys/k"),
                4 => ("slashes", "//tenants///dev/keys//"),
                5 => ("control characters and NUL", "tenants/dev/keys/a\u0000b\u0001\r\n\u001b[31m\u007f"),
                6 => ("non-BMP and RTL", "tenants/dev/keys/\U0001F511\u202Egnp.exe\u200F\U00010348"),
                7 => ("trailing slash", "tenants/dev/keys/k/"),
                8 => ("a real name", real),
                9 => ("a real name, trailing slash", real + "/"),
                10 => ("a real name in another tenant", real.Replace("tenants/dev", "tenants/other", StringComparison.Ordinal)),
                _ => ("64 KiB", null),
            };
            if (value is null)
            {
                return LongString(real, name);
            }

            // Name-like fields get a real name half the time, so that handlers past the name check are reached.
            if (!small && IsNameLike(field) && random.Next(2) == 0)
            {
                (label, value) = ("a real name", real);
            }

            Note(name, $"{label} {Quote(value)}");
            return value;
        }

        private static bool IsNameLike(FieldDescriptor field) =>
            field.Name is "name" or "parent" or "key_name" or "destination_key_name" or "tenant" or "principal" or "grantee" or "key";

        private string LongString(string prefix, string name)
        {
            var value = prefix + "/" + new string('x', LongLength);
            _longValues.Add(value);
            Note(name, $"64 KiB after {Quote(prefix)}");
            return value;
        }

        private ByteString Bytes(FieldDescriptor field, string name, bool small)
        {
            var choice = random.Next(small ? 3 : 6);
            if (choice == 5 && _largeBudget == 0)
            {
                choice = 4;
            }

            byte[] value = choice switch
            {
                0 => [],
                1 => [(byte)random.Next(256)],
                2 => RandomBytes(random.Next(2, 64)),
                3 => field.Name.Contains("ciphertext", StringComparison.Ordinal) || random.Next(2) == 0 ? world.Ciphertext : RandomBytes(16),
                4 => world.Ciphertext.Length > 8 ? Flip(world.Ciphertext) : RandomBytes(32),
                _ => RandomBytes(OneMiB),
            };
            if (choice == 5)
            {
                _largeBudget--;
            }

            Note(name, $"{value.Length} bytes");
            return ByteString.CopyFrom(value);
        }

        private byte[] Flip(byte[] bytes)
        {
            var copy = (byte[])bytes.Clone();
            copy[random.Next(copy.Length)] ^= (byte)(1 << random.Next(8));
            return copy;
        }

        private byte[] RandomBytes(int length)
        {
            var bytes = new byte[length];
            random.NextBytes(bytes);
            return bytes;
        }

        private T Pick<T>(params T[] values) => values[random.Next(values.Length)];

        private void Note(string name, string value)
        {
            if (_mute == 0)
            {
                _fields.Append(name).Append('=').Append(value).Append("; ");
            }
        }

        private static string Quote(string value) =>
            "\"" + string.Concat(value.Select(c => char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString())) + "\"";
    }

    /// <summary>
    /// Sends the bytes a sweep failure printed again (paste them into a regression test):
    /// the status, detail and trailers of one unary call as <paramref name="token"/>.
    /// </summary>
    internal static async Task<RpcException?> ReplayAsync(KmsTestServer server, string method, string token, string hex)
    {
        using var channel = server.CreateChannel();
        var slash = method.LastIndexOf('/');
        try
        {
            await channel.CreateCallInvoker().AsyncUnaryCall(
                new Method<byte[], byte[]>(MethodType.Unary, method[1..slash], method[(slash + 1)..], Raw, Raw), null, new CallOptions(KmsTestServer.Bearer(token)), Convert.FromHexString(hex)).ResponseAsync;
            return null;
        }
        catch (RpcException e)
        {
            return e;
        }
    }
}
