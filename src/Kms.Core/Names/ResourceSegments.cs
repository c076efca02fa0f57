using System.Diagnostics.CodeAnalysis;

namespace Kms.Core.Names;

/// <summary>
/// Which kind of resource a name is, by the position of its collection segment
/// (<c>tenants/{t}/keys/…</c>, <c>tenants/{t}/aliases/…</c>, <c>…/keys/{k}/versions/{n}</c>), never by
/// a search for <c>/aliases/</c> or <c>/versions/</c> anywhere in it: a tenant may be named
/// <c>aliases</c> or <c>versions</c>. Allocates nothing (crypto calls ask on every request).
/// </summary>
public static class ResourceSegments
{
    /// <summary>Segment of a tenant-scoped name that names its collection: <c>keys</c> or <c>aliases</c>.</summary>
    public const int Collection = 2;

    /// <summary>Segment of a key-scoped name that names its collection: <c>versions</c>.</summary>
    public const int KeyCollection = 4;

    /// <summary>Whether segment <paramref name="index"/> (0-based, split on <c>/</c>) of <paramref name="name"/> is <paramref name="value"/>.</summary>
    public static bool Is([NotNullWhen(true)] string? name, int index, string value)
    {
        if (name is null)
        {
            return false;
        }

        var rest = name.AsSpan();
        for (var i = 0; i < index; i++)
        {
            var slash = rest.IndexOf('/');
            if (slash < 0)
            {
                return false;
            }

            rest = rest[(slash + 1)..];
        }

        var end = rest.IndexOf('/');
        return (end < 0 ? rest : rest[..end]).SequenceEqual(value);
    }
}
