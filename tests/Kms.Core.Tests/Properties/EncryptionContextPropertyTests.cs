using System.Buffers.Binary;
using System.Text;
using CsCheck;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;

namespace Kms.Core.Tests.Properties;

/// <summary>
/// The canonical encoding of an encryption context (docs/ciphertext-format.md): independent of
/// the order entries are given in, injective on distinct maps, and decodable back to the map.
/// </summary>
public sealed class EncryptionContextPropertyTests
{
    // Pieces that make encodings collide if the length prefixes or the ordering were wrong.
    private static readonly string[] Pieces = ["a", "b", "ab", "=", "\0", "é", "€", "😀", "\u0001", ":", " "];

    internal static readonly Gen<string> Text = Gen.Int[0, Pieces.Length - 1].Array[0, 4].Select(ix => string.Concat(ix.Select(i => Pieces[i])));

    internal static readonly Gen<Dictionary<string, string>> Maps =
        Gen.Select(Text.Where(k => k.Length > 0), Text).Array[0, 6].Select(entries =>
        {
            var map = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (key, value) in entries)
            {
                map[key] = value;
            }

            return map;
        });

    [Fact]
    public void Create_EntriesInAnyOrder_SameEncoding()
    {
        Maps.SelectMany(map => Gen.Shuffle(map.ToArray()).Select(shuffled => (map, shuffled))).Sample((map, shuffled) =>
        {
            Assert.Equal(EncryptionContext.Create(map).Encoded.ToArray(), EncryptionContext.Create(shuffled).Encoded.ToArray());
        }, iter: 500);
    }

    [Fact]
    public void Create_DistinctMaps_DistinctEncodings()
    {
        Gen.Select(Maps, Maps).Sample((a, b) =>
        {
            var same = a.Count == b.Count && a.All(e => b.TryGetValue(e.Key, out var v) && v == e.Value);

            Assert.Equal(same, EncryptionContext.Create(a).Encoded.SequenceEqual(EncryptionContext.Create(b).Encoded));
        }, iter: 2000);
    }

    [Fact]
    public void Create_Encoding_DecodesToTheMap_SortedByKeyBytes()
    {
        Maps.Sample(map =>
        {
            var decoded = Decode(EncryptionContext.Create(map).Encoded);

            Assert.Equal(map.OrderBy(e => e.Key, Utf8Order.Instance).ToList(), decoded);
        }, iter: 500);
    }

    [Fact]
    public void BuildAad_OtherTenantOrContext_OtherAad()
    {
        Gen.Select(Maps, Maps, Gen.Bool).Sample((a, b, sameTenant) =>
        {
            var id = KeyVersionId.FromBytes(new byte[KeyVersionId.Length]);
            var contextA = EncryptionContext.Create(a);
            var contextB = EncryptionContext.Create(b);
            var aadA = CiphertextBlob.BuildAad(id, TenantId.Parse("dev"), contextA);
            var aadB = CiphertextBlob.BuildAad(id, TenantId.Parse(sameTenant ? "dev" : "devs"), contextB);

            Assert.Equal(sameTenant && contextA.Encoded.SequenceEqual(contextB.Encoded), aadA.AsSpan().SequenceEqual(aadB));
        }, iter: 1000);
    }

    /// <summary>An independent reader of the documented layout (u32be count, then u32be-prefixed key and value).</summary>
    private static List<KeyValuePair<string, string>> Decode(ReadOnlySpan<byte> encoded)
    {
        var count = BinaryPrimitives.ReadUInt32BigEndian(encoded);
        var offset = 4;
        var entries = new List<KeyValuePair<string, string>>();
        for (var i = 0; i < count; i++)
        {
            var key = Read(encoded, ref offset);
            entries.Add(KeyValuePair.Create(key, Read(encoded, ref offset)));
        }

        Assert.Equal(encoded.Length, offset);
        return entries;
    }

    private static string Read(ReadOnlySpan<byte> encoded, ref int offset)
    {
        var length = (int)BinaryPrimitives.ReadUInt32BigEndian(encoded[offset..]);
        var text = Encoding.UTF8.GetString(encoded.Slice(offset + 4, length));
        offset += 4 + length;
        return text;
    }

    private sealed class Utf8Order : IComparer<string>
    {
        public static readonly Utf8Order Instance = new();

        public int Compare(string? x, string? y) => Encoding.UTF8.GetBytes(x!).AsSpan().SequenceCompareTo(Encoding.UTF8.GetBytes(y!));
    }
}
