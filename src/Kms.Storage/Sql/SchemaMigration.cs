namespace Kms.Storage;

/// <summary>One forward-only schema migration. A migration is never edited once released: add a new one.</summary>
/// <param name="Version">Its number, from 1, without gaps.</param>
/// <param name="Sql">The statements, run in one transaction with the record that it was applied.</param>
/// <param name="CompatibleFrom">
/// The oldest server schema version that still works on the database after this migration
/// (an additive change — a new nullable column or table no older statement touches — keeps
/// the previous servers working during a rolling upgrade). Null: only servers that know this
/// migration (<paramref name="Version"/>) may serve the database afterwards.
/// </param>
public sealed record SchemaMigration(int Version, string Sql, int? CompatibleFrom = null);
