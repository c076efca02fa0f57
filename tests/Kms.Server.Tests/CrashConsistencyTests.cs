using System.Data.Common;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Kms.Client;
using Kms.Client.Audit;
using Kms.Contracts.V1;
using Kms.Hsm;
using Kms.Testing;
using Microsoft.Data.Sqlite;
using Npgsql;
using Xunit.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// The real server process on a production token and its SQLite file, killed with SIGKILL at a
/// random moment while creates, rotations, encryptions, aliases and scheduled destructions are in
/// flight, then restarted on the same data directory and token, many times over. After each kill:
/// every acknowledged key, version, alias and ciphertext is there and decrypts; no alias the server
/// refused (onto a key scheduled for deletion) is there, nor one committed after its key's
/// scheduling; nothing is partial
/// (<see cref="StoreInvariants"/>: no key without its version, no version without material unless
/// destroyed, no write without its audit event; no HSM token object left behind); the audit chain
/// verifies offline.
/// </summary>
/// <remarks>
/// Rounds: <c>KMS_CRASH_ROUNDS</c> (default 6, for CI; the long run is 50, docs/reliability.md);
/// the kill comes 20 ms to <c>KMS_CRASH_MAX_KILL_MS</c> (default 400) into each round's load.
/// The seed is printed; <c>KMS_CRASH_SEED</c> repeats its choices (the interleaving of concurrent
/// calls and the kill's exact moment still vary). A call that got no answer may or may not have
/// taken effect: only acknowledged writes must be present, but whatever is present must be whole.
/// </remarks>
public sealed class CrashConsistencyTests(ITestOutputHelper output)
{
    private const string DomainKeyId = "dk-crash-test";
    private const string Tenant = "dev";
    private const string Parent = "tenants/" + Tenant;
    private const string KeysService = "/kms.v1.KeyManagementService/";
    private const int Workers = 4;

    // A scheduled destruction whose waiting period ends within the test, and a lifecycle pass every second to carry it out.
    private static readonly string[] ServerArgs = ["--Lifecycle:MinWaitingPeriod=00:00:01", "--Lifecycle:JobInterval=00:00:01"];
    private static readonly TimeSpan Waiting = TimeSpan.FromSeconds(1);

    [Theory]
    [InlineData("sqlite")]
    [InlineData("postgres")]
    public async Task KilledUnderLoad_EveryAcknowledgedWriteSurvives_NothingPartial_AuditChainVerifies(string storage)
    {
        var rounds = int.TryParse(Environment.GetEnvironmentVariable("KMS_CRASH_ROUNDS"), CultureInfo.InvariantCulture, out var r) && r > 0 ? r : 6;
        var seed = int.TryParse(Environment.GetEnvironmentVariable("KMS_CRASH_SEED"), CultureInfo.InvariantCulture, out var s) ? s : Random.Shared.Next();
        // How long the load may run before the kill: 20–400 ms by default (CI); a long run raises it
        // to acknowledge more writes per round (on a slow database few are acknowledged in 400 ms).
        var maxKillMs = int.TryParse(Environment.GetEnvironmentVariable("KMS_CRASH_MAX_KILL_MS"), CultureInfo.InvariantCulture, out var m) && m > 20 ? m : 400;
        output.WriteLine($"{storage}: seed {seed} (KMS_CRASH_SEED), {rounds} rounds (KMS_CRASH_ROUNDS), kill 20–{maxKillMs} ms into the load (KMS_CRASH_MAX_KILL_MS)");

        // PostgreSQL (a database of the run's cluster; KMS_TEST_POSTGRES, else the test fails):
        // the kill cuts the server's connections mid-transaction, and the database must roll
        // back whatever was not committed, as SQLite's journal does for the file.
        await using var postgres = storage == "postgres" ? await PostgresTestDatabase.CreateAsync() : null;
        string[] serverArgs = postgres is null
            ? ServerArgs
            : [.. ServerArgs, "--Storage:Provider=postgres", $"--Storage:Postgres:ConnectionString={postgres.ConnectionString}"];
        var random = new Random(seed);

        var token = SoftHsm.CreateToken();
        var domainKey = RandomNumberGenerator.GetBytes(32);
        using (var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin)))
        {
            session.ImportDomainKey(domainKey, "kms-domain-key", DomainKeyId);
        }

        CryptographicOperations.ZeroMemory(domainKey);
        var tokenObjects = TokenObjectCount(token.Label);
        var dataDir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "kms-crash-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)))).FullName;
        var watch = Stopwatch.StartNew();
        var server = await StartAsync(dataDir, token, serverArgs);
        try
        {
            var (developer, officer) = await server.BootstrapAsync(Tenant);
            byte[] auditKey;
            using (var client = server.CreateClient(developer))
            {
                auditKey = (await client.GetAuditSigningKeyAsync()).PublicKeyDer.ToByteArray();
            }

            var model = new Model();
            var summary = new List<string>();
            for (var round = 1; round <= rounds; round++)
            {
                var killAfter = TimeSpan.FromMilliseconds(random.Next(20, maxKillMs + 1));
                var (acknowledged, unanswered) = await DriveAndKillAsync(server, developer, model, new Random(random.Next()), round, killAfter);
                var snapshot = await CheckDatabaseAsync(postgres?.ConnectionString, Path.Combine(dataDir, "kms.db"));
                Assert.Equal(tokenObjects, TokenObjectCount(token.Label));

                server = await StartAsync(dataDir, token, serverArgs);
                var committed = await CheckServerAsync(server, developer, officer, auditKey, model, snapshot);
                summary.Add(string.Create(CultureInfo.InvariantCulture,
                    $"{round}: kill at {killAfter.TotalMilliseconds} ms, {acknowledged} writes acknowledged, {unanswered} calls unanswered, {committed} unanswered creates/rotations found committed (whole)"));
            }

            output.WriteLine(string.Join("\n", summary));
            output.WriteLine($"{model.Keys.Count} keys, {model.Keys.Values.Sum(k => k.Versions.Count)} versions, {model.Aliases.Count} aliases ({model.RefusedAliases.Count} refused onto keys scheduled for deletion), "
                + $"{model.Ciphertexts.Count} ciphertexts acknowledged; {rounds} kills in {watch.Elapsed.TotalSeconds:0.0} s");
        }
        catch
        {
            output.WriteLine(server.Output);
            throw;
        }
        finally
        {
            await server.DisposeAsync();
            Directory.Delete(dataDir, recursive: true);
        }
    }

    private static Task<ServerProcess> StartAsync(string dataDir, TestToken token, string[] serverArgs) =>
        ServerProcess.StartAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, serverArgs);

    private static KmsClient Client(ServerProcess server, string token) => new(new KmsClientOptions
    {
        Endpoint = server.Address,
        CaCertificatePath = server.CaCertificatePath,
        ApiToken = token,
        CallTimeout = TimeSpan.FromSeconds(20),
        Retry = new KmsRetryOptions { MaxAttempts = 1 }, // an answer is an answer: no retry hides a lost one
    });

    // Workers run a random mix of calls; the process is killed killAfter into the load. Calls
    // answered before the kill are recorded in the model; every failure before it fails the test.
    private static async Task<(int Acknowledged, int Unanswered)> DriveAndKillAsync(ServerProcess server, string developer, Model model, Random random, int round, TimeSpan killAfter)
    {
        using var client = Client(server, developer);
        await client.ListKeysAsync(Parent, 1).ToListAsync(); // connected and warm before the clock starts
        var killed = 0;
        var acknowledged = 0;
        var unanswered = 0;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var seeds = Enumerable.Range(0, Workers).Select(_ => random.Next()).ToList();
        var workers = Enumerable.Range(0, Workers).Select(worker => Task.Run(async () =>
        {
            var choose = new Random(seeds[worker]);
            // Calls keep going until one fails after the kill: some are in flight when it lands.
            for (var i = 0; ; i++)
            {
                try
                {
                    if (await RunOneAsync(client, model, choose, $"r{round}-w{worker}-{i}", () => Volatile.Read(ref killed) == 1))
                    {
                        Interlocked.Increment(ref acknowledged);
                    }
                }
                catch (RpcException e) when (Volatile.Read(ref killed) == 1)
                {
                    _ = e;
                    Interlocked.Increment(ref unanswered);
                    return;
                }
                catch (RpcException e) when (e.StatusCode is StatusCode.FailedPrecondition or StatusCode.NotFound or StatusCode.AlreadyExists)
                {
                    // A refusal the model allows (a key another worker scheduled for deletion meanwhile, a version become primary).
                }
                catch (RpcException e)
                {
                    failures.Enqueue($"{e.StatusCode}: {e.Status.Detail}");
                    return;
                }
            }
        })).ToList();

        await Task.Delay(killAfter);
        Volatile.Write(ref killed, 1);
        server.Kill();
        await Task.WhenAll(workers);
        await server.DisposeAsync();
        Assert.True(failures.IsEmpty, "calls failed before the kill: " + string.Join("; ", failures));
        return (acknowledged, unanswered);
    }

    // One call; true when it was a write the server acknowledged (and the model now holds).
    private static async Task<bool> RunOneAsync(KmsClient client, Model model, Random choose, string id, Func<bool> killed)
    {
        var roll = choose.Next(100);
        if (roll < 20 || model.Keys.IsEmpty)
        {
            var key = await client.CreateKeyAsync(Parent, "k-" + id);
            model.Keys[key.Name] = new KeyModel([1]);
            return true;
        }

        var name = model.PickKey(choose);
        if (name is null)
        {
            return false;
        }

        if (roll < 35)
        {
            var key = await client.RotateKeyAsync(name);
            model.Keys[name].AddVersion(VersionOf(key.Primary.Name));
            return true;
        }

        if (roll < 65)
        {
            var plaintext = RandomNumberGenerator.GetBytes(1 + choose.Next(64));
            var sealedData = await client.EncryptAsync(name, plaintext);
            model.Ciphertexts.Enqueue(new Sealed(name, VersionOf(sealedData.KeyVersion), sealedData.Ciphertext, plaintext));
            return true;
        }

        if (roll < 75)
        {
            if (model.Ciphertexts.ToArray() is { Length: > 0 } all && all[choose.Next(all.Length)] is var one && model.Keys[one.Key].Decryptable(one.Version))
            {
                try
                {
                    using var opened = await client.DecryptAsync(one.Ciphertext);
                    Assert.Equal(one.Plaintext, opened.Plaintext.ToArray());
                }
                catch (RpcException e) when (e.StatusCode is StatusCode.InvalidArgument or StatusCode.FailedPrecondition)
                {
                    // Refused only if another worker's scheduling committed first: its answer arrives shortly,
                    // or the kill came. Waited for, not a fixed moment: on a loaded machine the answer (and the
                    // model's update after it) can take longer than any pause chosen here.
                    var waited = Stopwatch.StartNew();
                    while (model.Keys[one.Key].Decryptable(one.Version) && !killed() && waited.Elapsed < TimeSpan.FromSeconds(30))
                    {
                        await Task.Delay(20);
                    }

                    if (model.Keys[one.Key].Decryptable(one.Version))
                    {
                        throw new RpcException(new Status(StatusCode.Internal, $"an acknowledged ciphertext of {one.Key} version {one.Version} did not decrypt: {e.Status}"));
                    }
                }
            }

            return false;
        }

        if (roll < 86)
        {
            // Half of them, when the model knows a key scheduled for deletion (acknowledged, or
            // found committed after a restart), onto that key: refused, nothing written.
            var aliasName = $"{Parent}/aliases/a-{id}";
            if (choose.Next(2) == 0 && model.PickScheduledKey(choose) is { } going)
            {
                try
                {
                    await client.CreateAliasAsync(Parent, "a-" + id, going);
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.FailedPrecondition)
                {
                    model.RefusedAliases[aliasName] = going;
                    return false;
                }

                throw new RpcException(new Status(StatusCode.Internal, $"an alias was created onto {going}, scheduled for deletion (acknowledged)"));
            }

            try
            {
                var alias = await client.CreateAliasAsync(Parent, "a-" + id, name);
                model.Aliases[alias.Name] = name;
                return true;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.FailedPrecondition)
            {
                // Refused only if another worker's scheduling of the key committed first: its answer
                // arrives shortly, or the kill came (waited for, as for a refused decryption above).
                var waited = Stopwatch.StartNew();
                while (!model.Keys[name].Scheduled && !killed() && waited.Elapsed < TimeSpan.FromSeconds(30))
                {
                    await Task.Delay(20);
                }

                if (!model.Keys[name].Scheduled)
                {
                    throw new RpcException(new Status(StatusCode.Internal, $"an alias onto {name}, not scheduled for deletion, was refused: {e.Status}"));
                }

                model.RefusedAliases[aliasName] = name;
                return false;
            }
        }

        if (roll < 95)
        {
            // Not the primary the model knows of (the server refuses the primary: FAILED_PRECONDITION).
            var key = model.Keys[name];
            if (key.OlderVersion(choose) is not { } older)
            {
                return false;
            }

            await client.ScheduleKeyVersionDestructionAsync($"{name}/versions/{older}", Waiting);
            key.ScheduleVersion(older);
            return true;
        }

        await client.ScheduleKeyDeletionAsync(name, Waiting);
        model.Keys[name].Scheduled = true;
        return true;
    }

    // With the server dead: the database as the kill left it is whole, read directly (the
    // SQLite file, or PostgreSQL once it has rolled back the dead connections' transactions).
    private static async Task<Snapshot> CheckDatabaseAsync(string? postgres, string sqlitePath)
    {
        await using DbConnection connection = postgres is null
            ? new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = sqlitePath, Pooling = false }.ToString())
            : new NpgsqlConnection(new NpgsqlConnectionStringBuilder(postgres) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        if (postgres is null)
        {
            Assert.Equal("ok", Scalar(connection, "PRAGMA integrity_check"));
            Assert.Null(Scalar(connection, "PRAGMA foreign_key_check"));
        }

        await StoreInvariants.AssertWholeAsync(connection, Tenant);

        var events = new List<(long Seq, string Operation, string? Resource)>();
        using (var command = connection.CreateCommand())
        {
            command.CommandText = "SELECT seq, operation, resource FROM audit_events WHERE outcome = 'OK'";
            using var reader = command.ExecuteReader();
            while (reader.Read())
            {
                events.Add((reader.GetInt64(0), reader.GetString(1), reader.IsDBNull(2) ? null : reader.GetString(2)));
            }
        }

        // No alias committed onto a key already scheduled for deletion: each alias on a scheduled
        // key was created (its event, in the same transaction, in commit order) before the scheduling
        // committed — whatever the kill left, answered or not.
        using (var command = connection.CreateCommand())
        {
            command.CommandText = $"SELECT a.alias_id, a.key_id FROM aliases a JOIN keys k ON k.tenant = a.tenant AND k.key_id = a.key_id WHERE a.tenant = '{Tenant}' AND k.state IN (3, 4)";
            using var reader = command.ExecuteReader();
            while (reader.Read())
            {
                var (alias, key) = ($"{Parent}/aliases/{reader.GetString(0)}", $"{Parent}/keys/{reader.GetString(1)}");
                var created = events.Where(e => e.Operation == KeysService + "CreateAlias" && e.Resource == alias).Select(e => e.Seq).DefaultIfEmpty(long.MaxValue).Max();
                var scheduled = events.Where(e => e.Operation == KeysService + "ScheduleKeyDeletion" && e.Resource == key).Select(e => e.Seq).DefaultIfEmpty(long.MinValue).Min();
                Assert.True(created < scheduled, $"{alias} (audit event {created}) was created onto {key} after its deletion was scheduled (event {scheduled})");
            }
        }

        // A key is scheduled for deletion only by a call whose event committed with it.
        Assert.Equal(Convert.ToInt64(Scalar(connection, $"SELECT count(*) FROM keys WHERE tenant = '{Tenant}' AND state IN (3, 4)"), CultureInfo.InvariantCulture),
            events.Count(e => e.Operation == KeysService + "ScheduleKeyDeletion"));
        return new Snapshot(
            events.Where(e => e.Operation is KeysService + "ScheduleKeyDeletion" or KeysService + "ScheduleKeyVersionDestruction").Select(e => e.Resource!).ToHashSet(),
            Convert.ToInt64(Scalar(connection, "SELECT count(*) FROM audit_events"), CultureInfo.InvariantCulture));
    }

    // After the restart: every acknowledged write is served as acknowledged.
    // Returns how many writes that got no answer turned out committed (keys and versions); they join the model.
    private static async Task<int> CheckServerAsync(ServerProcess server, string developer, string officer, byte[] auditKey, Model model, Snapshot snapshot)
    {
        using var client = Client(server, developer);
        var keys = (await client.ListKeysAsync(Parent).ToListAsync()).ToDictionary(k => k.Name);
        var committedUnanswered = 0;
        foreach (var name in keys.Keys.Where(name => !model.Keys.ContainsKey(name)))
        {
            model.Keys[name] = new KeyModel([1]);
            committedUnanswered++;
        }

        var versionsBefore = model.Keys.Values.Sum(k => k.Versions.Count);
        foreach (var (name, expected) in model.Keys)
        {
            Assert.True(keys.TryGetValue(name, out var key), $"acknowledged key {name} is gone");
            if (key.State is KeyState.DestroyScheduled or KeyState.Destroyed)
            {
                // Acknowledged, or unanswered but committed with its event.
                Assert.True(expected.Scheduled || snapshot.Scheduled.Contains(name), $"{name} is {key.State} without a scheduled deletion");
            }
            else
            {
                Assert.False(expected.Scheduled, $"{name} was scheduled for deletion (acknowledged) and is {key.State}");
                Assert.Equal(KeyState.Enabled, key.State);
            }

            var versions = (await client.ListKeyVersionsAsync(name).ToListAsync()).ToDictionary(v => VersionOf(v.Name));
            Assert.Equal(Enumerable.Range(1, versions.Count), versions.Keys.Order());
            foreach (var number in expected.Versions)
            {
                Assert.True(versions.TryGetValue(number, out var version), $"acknowledged version {number} of {name} is gone");
                var destroying = version.State is KeyState.DestroyScheduled or KeyState.Destroyed;
                Assert.True(!destroying || key.State != KeyState.Enabled || expected.IsScheduled(number) || snapshot.Scheduled.Contains(version.Name),
                    $"{version.Name} is {version.State} without a scheduled destruction");
                Assert.True(destroying || !expected.IsScheduled(number), $"{version.Name} was scheduled for destruction (acknowledged) and is {version.State}");
            }

            expected.Observe(key.State, versions.Values);
        }

        committedUnanswered += model.Keys.Values.Sum(k => k.Versions.Count) - versionsBefore;
        foreach (var (alias, key) in model.Aliases)
        {
            Assert.Equal(key, (await client.GetAliasAsync(alias)).Key);
        }

        // A refused alias was not written.
        foreach (var (alias, key) in model.RefusedAliases)
        {
            Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(() => client.GetAliasAsync(alias))).StatusCode);
        }

        // Every acknowledged ciphertext decrypts, unless its key or version is (legitimately) on its way out.
        foreach (var sealedData in model.Ciphertexts)
        {
            if (model.Keys[sealedData.Key].Usable(sealedData.Version))
            {
                using var opened = await client.DecryptAsync(sealedData.Ciphertext);
                Assert.Equal(sealedData.Plaintext, opened.Plaintext.ToArray());
            }
        }

        // The chain, across every kill, verifies offline against the key published at the first start.
        Assert.Equal(auditKey, (await client.GetAuditSigningKeyAsync()).PublicKeyDer.ToByteArray());
        using var auditor = Client(server, officer);
        var export = new StringWriter();
        await auditor.ExportAuditAsync(export);
        var verification = AuditVerifier.Verify(new StringReader(export.ToString()), auditKey);
        Assert.True(verification.Valid, verification.Problem);
        Assert.True(verification.Events >= snapshot.Events, $"{verification.Events} events exported, {snapshot.Events} in the file after the kill");
        return committedUnanswered;
    }

    private static int VersionOf(string versionName) =>
        int.Parse(versionName[(versionName.LastIndexOf('/') + 1)..], CultureInfo.InvariantCulture);

    private static object? Scalar(DbConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        return command.ExecuteScalar();
    }

    // Objects on the token (SoftHSM's file store: one file each): the domain key, and nothing a
    // key version left behind — versions live only wrapped in the database.
    private static int TokenObjectCount(string label)
    {
        var tokens = Path.Combine(Path.GetDirectoryName(SoftHsm.ConfigPath)!, "tokens");
        var labelBytes = Encoding.UTF8.GetBytes(label);
        var directory = Directory.GetDirectories(tokens)
            .Single(d => File.Exists(Path.Combine(d, "token.object")) && File.ReadAllBytes(Path.Combine(d, "token.object")).AsSpan().IndexOf(labelBytes) >= 0);
        return Directory.GetFiles(directory, "*.object").Count(f => Path.GetFileName(f) != "token.object");
    }

    private sealed record Sealed(string Key, int Version, byte[] Ciphertext, byte[] Plaintext);

    private sealed record Snapshot(HashSet<string> Scheduled, long Events);

    // What the server acknowledged, plus what a restart showed of unanswered calls (so later rounds expect it).
    private sealed class Model
    {
        public System.Collections.Concurrent.ConcurrentDictionary<string, KeyModel> Keys { get; } = new();

        public System.Collections.Concurrent.ConcurrentDictionary<string, string> Aliases { get; } = new();

        // Aliases the server refused (onto a key scheduled for deletion), with that key.
        public System.Collections.Concurrent.ConcurrentDictionary<string, string> RefusedAliases { get; } = new();

        public System.Collections.Concurrent.ConcurrentQueue<Sealed> Ciphertexts { get; } = new();

        public string? PickKey(Random choose) => Pick(choose, scheduled: false);

        public string? PickScheduledKey(Random choose) => Pick(choose, scheduled: true);

        private string? Pick(Random choose, bool scheduled)
        {
            var keys = Keys.Where(k => k.Value.Scheduled == scheduled).Select(k => k.Key).Order(StringComparer.Ordinal).ToList();
            return keys.Count == 0 ? null : keys[choose.Next(keys.Count)];
        }
    }

    private sealed class KeyModel(IEnumerable<int> versions)
    {
        private readonly Lock _lock = new();
        private readonly HashSet<int> _scheduledVersions = [];
        private readonly HashSet<int> _versions = [.. versions];

        public bool Scheduled { get; set; }

        public IReadOnlyCollection<int> Versions
        {
            get
            {
                lock (_lock)
                {
                    return [.. _versions];
                }
            }
        }

        public void AddVersion(int version)
        {
            lock (_lock)
            {
                _versions.Add(version);
            }
        }

        public void ScheduleVersion(int version)
        {
            lock (_lock)
            {
                _scheduledVersions.Add(version);
            }
        }

        public bool IsScheduled(int version)
        {
            lock (_lock)
            {
                return _scheduledVersions.Contains(version);
            }
        }

        // A version other than the newest known, not already scheduled.
        public int? OlderVersion(Random choose)
        {
            lock (_lock)
            {
                var newest = _versions.Max();
                var older = _versions.Where(v => v != newest && !_scheduledVersions.Contains(v)).Order().ToList();
                return older.Count == 0 ? null : older[choose.Next(older.Count)];
            }
        }

        public bool Decryptable(int version) => !Scheduled && !IsScheduled(version);

        public bool Usable(int version) => Decryptable(version);

        // What the restart showed: unanswered rotations and schedulings that committed are facts now.
        public void Observe(KeyState keyState, IEnumerable<KeyVersion> versions)
        {
            lock (_lock)
            {
                Scheduled |= keyState is KeyState.DestroyScheduled or KeyState.Destroyed;
                foreach (var version in versions)
                {
                    var number = VersionOf(version.Name);
                    _versions.Add(number);
                    if (version.State is KeyState.DestroyScheduled or KeyState.Destroyed)
                    {
                        _scheduledVersions.Add(number);
                    }
                }
            }
        }
    }
}
