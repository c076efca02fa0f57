using System.Data.Common;
using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Storage.Postgres;
using Kms.Testing;

namespace Kms.Storage.Tests;

/// <summary>The shared contract suite on PostgreSQL (a fresh schema per test).</summary>
public sealed class PostgresKeyStoreTests : QuorumStoreContract, IAsyncLifetime
{
    private readonly List<IAsyncDisposable> _opened = [];
    private PostgresTestDatabase? _database;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var opened in Enumerable.Reverse(_opened))
        {
            await opened.DisposeAsync();
        }
    }

    [Fact]
    public async Task CreateTenant_DisplayNameWithANul_InvalidArgumentNotUnavailable_ValueNotRepeated()
    {
        // PostgreSQL refuses a NUL in a text value (SQLSTATE 22021): bad input, which was
        // answered "the database is unavailable; retry shortly" — and a retry fails alike.
        var store = (IAccessStore)await CreateStoreAsync();
        var id = TenantId.Parse("nul");
        var at = new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);

        var e = await Assert.ThrowsAsync<KmsException>(() => store.CreateTenantAsync(new Tenant(id, "secret\0value", TenantState.Active, at), default));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.DoesNotContain("secret", e.Message, StringComparison.Ordinal);
        Assert.Equal("22021", Assert.IsAssignableFrom<DbException>(e.InnerException).SqlState);
        Assert.Null(await store.GetTenantAsync(id, default));
        await store.CreateTenantAsync(new Tenant(id, "secret value", TenantState.Active, at), default);
    }

    // A trigger, as a disk or constraint fault would: the store's own statement fails inside its transaction.
    protected override async Task<IAsyncDisposable> FailRoleBindingWritesAsync(IKeyStore store)
    {
        await ExecuteAsync("""
            CREATE FUNCTION fail_role_bindings() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected: role binding write refused'; END $$;
            CREATE TRIGGER fail_role_bindings BEFORE INSERT ON role_bindings FOR EACH ROW EXECUTE FUNCTION fail_role_bindings();
            """);
        return new Undo(() => ExecuteAsync("DROP TRIGGER fail_role_bindings ON role_bindings; DROP FUNCTION fail_role_bindings();"));
    }

    private Task ExecuteAsync(string sql) => PostgresTestDatabase.ExecuteAsync(_database!.ConnectionString, sql);

    protected override async Task<IKeyStore> CreateStoreAsync()
    {
        if (_database is null)
        {
            _database = await PostgresTestDatabase.CreateSchemaAsync();
            _opened.Add(_database);
        }

        var store = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = _database.ConnectionString }, default);
        _opened.Add(store);
        return store;
    }
}
