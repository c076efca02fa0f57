using System.Text.Json;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Tests.Sharing;

/// <summary>
/// vectors/shamir-gf256.json, written once by an independent Python implementation
/// (vectors/generate_shamir.py: log tables, no Horner) and committed; read here, never regenerated.
/// </summary>
public sealed class ShamirVectorTests
{
    public static TheoryData<string> Descriptions()
    {
        var data = new TheoryData<string>();
        foreach (var vector in Load())
        {
            data.Add(vector.Description);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Descriptions))]
    public void Split_VectorCoefficients_GivesTheVectorsShares(string description)
    {
        var vector = Load().Single(v => v.Description == description);
        var random = new FixedRandom(vector.Coefficients);

        var shares = Shamir.Split(vector.Secret, vector.Threshold, vector.Count, random);

        Assert.Equal(1, random.Calls);
        Assert.Equal(vector.Shares.Select(s => s.Index), shares.Select(s => s.Index));
        Assert.Equal(vector.Shares.Select(s => Convert.ToHexStringLower(s.Value)), shares.Select(s => Convert.ToHexStringLower(s.Value)));
    }

    [Theory]
    [MemberData(nameof(Descriptions))]
    public void Combine_VectorShares_GivesTheVectorsSecret(string description)
    {
        var vector = Load().Single(v => v.Description == description);
        var all = vector.Shares.Select(s => new Share(s.Index, s.Value)).ToList();

        Assert.Equal(vector.Secret, Shamir.Combine(all.Take(vector.Threshold).ToList(), vector.Threshold));
        Assert.Equal(vector.Secret, Shamir.Combine(all.TakeLast(vector.Threshold).Reverse().ToList(), vector.Threshold));
        Assert.Equal(vector.Secret, Shamir.Combine(all, vector.Threshold));
    }

    [Fact]
    public void Vectors_CoverTheEdges()
    {
        var vectors = Load();
        Assert.Contains(vectors, v => v.Count == Shamir.MaxShares);
        Assert.Contains(vectors, v => v.Threshold == Shamir.MaxShares);
        Assert.Contains(vectors, v => v.Secret.Length == Shamir.MaxSecretLength);
        Assert.Contains(vectors, v => v.Secret.Length == 32 && v.Threshold == 3 && v.Count == 5);
        Assert.Contains(vectors, v => v.Threshold == 2 && v.Count == 2);
    }

    private sealed record VectorShare(int Index, byte[] Value);

    private sealed record Vector(string Description, byte[] Secret, int Threshold, int Count, byte[] Coefficients, IReadOnlyList<VectorShare> Shares);

    private static List<Vector> Load()
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "vectors", "shamir-gf256.json")));
        return document.RootElement.GetProperty("vectors").EnumerateArray().Select(v => new Vector(
            v.GetProperty("description").GetString()!,
            Convert.FromHexString(v.GetProperty("secret").GetString()!),
            v.GetProperty("threshold").GetInt32(),
            v.GetProperty("count").GetInt32(),
            Convert.FromHexString(v.GetProperty("coefficients").GetString()!),
            v.GetProperty("shares").EnumerateArray()
                .Select(s => new VectorShare(s.GetProperty("index").GetInt32(), Convert.FromHexString(s.GetProperty("value").GetString()!)))
                .ToList())).ToList();
    }
}
