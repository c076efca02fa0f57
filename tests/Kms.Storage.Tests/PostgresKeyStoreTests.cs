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
