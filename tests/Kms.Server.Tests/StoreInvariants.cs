using System.Data.Common;
using System.Globalization;

namespace Kms.Server.Tests;

/// <summary>
/// What must hold in the database whatever happened to the server (a kill, a fault of the
/// database): read directly, in one snapshot, with SQL both backends run.
/// </summary>
internal static class StoreInvariants
{
    private const string KeysService = "/kms.v1.KeyManagementService/";

    /// <summary>
    /// No key without its primary version, no version without its key, versions numbered 1..n,
    /// wrapped material exactly while a version is not destroyed, a destroyed key's versions all
    /// destroyed, no gap in the audit chain; and in <paramref name="tenant"/> (whose keys and
    /// aliases only its callers create) one OK event per key created, per version a rotation
    /// added and per alias — committed with the write, answered or not.
    /// </summary>
    public static async Task AssertWholeAsync(DbConnection connection, string tenant)
    {
        await ExecuteAsync(connection, "BEGIN");
        try
        {
            Assert.Equal(0L, await ScalarAsync(connection, """
                SELECT count(*) FROM keys k WHERE NOT EXISTS
                  (SELECT 1 FROM key_versions v WHERE v.tenant = k.tenant AND v.key_id = k.key_id AND v.version = k.primary_version)
                """));
            Assert.Equal(0L, await ScalarAsync(connection, """
                SELECT count(*) FROM key_versions v WHERE NOT EXISTS (SELECT 1 FROM keys k WHERE k.tenant = v.tenant AND k.key_id = v.key_id)
                """));
            Assert.Equal(0L, await ScalarAsync(connection, "SELECT count(*) FROM (SELECT max(version) AS n, count(*) AS c FROM key_versions GROUP BY tenant, key_id) AS per_key WHERE n <> c"));
            Assert.Equal(0L, await ScalarAsync(connection, "SELECT count(*) FROM key_versions WHERE (material IS NULL) <> (state = 4)"));
            Assert.Equal(0L, await ScalarAsync(connection, """
                SELECT count(*) FROM keys k WHERE k.state = 4
                  AND EXISTS (SELECT 1 FROM key_versions v WHERE v.tenant = k.tenant AND v.key_id = k.key_id AND v.state <> 4)
                """));
            Assert.Equal(0L, await ScalarAsync(connection, "SELECT count(*) - (coalesce(max(seq), 0) - coalesce(min(seq), 1) + 1) FROM audit_events"));

            Task<long> EventsAsync(string operation) =>
                ScalarAsync(connection, $"SELECT count(*) FROM audit_events WHERE operation = '{KeysService}{operation}' AND outcome = 'OK' AND tenant = '{tenant}'");
            Assert.Equal(await ScalarAsync(connection, $"SELECT count(*) FROM keys WHERE tenant = '{tenant}'"), await EventsAsync("CreateKey"));
            Assert.Equal(await ScalarAsync(connection, $"SELECT count(*) FROM key_versions WHERE tenant = '{tenant}' AND version > 1"), await EventsAsync("RotateKey"));
            Assert.Equal(await ScalarAsync(connection, $"SELECT count(*) FROM aliases WHERE tenant = '{tenant}'"), await EventsAsync("CreateAlias"));
        }
        finally
        {
            await ExecuteAsync(connection, "ROLLBACK");
        }
    }

    public static async Task<long> ScalarAsync(DbConnection connection, string sql)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        return Convert.ToInt64(await command.ExecuteScalarAsync(), CultureInfo.InvariantCulture);
    }

    private static async Task ExecuteAsync(DbConnection connection, string sql)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        await command.ExecuteNonQueryAsync();
    }
}
