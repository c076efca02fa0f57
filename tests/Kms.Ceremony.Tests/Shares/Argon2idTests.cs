using System.Diagnostics;
using System.Text;
using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;
using Org.BouncyCastle.Crypto.Generators;
using Org.BouncyCastle.Crypto.Parameters;
using Xunit.Abstractions;

namespace Kms.Ceremony.Tests.Shares;

/// <summary>Runs alone (after the parallel tests): its derivations use 64 MiB each and are timed.</summary>
[CollectionDefinition(nameof(Argon2idTests), DisableParallelization = true)]
public sealed class Argon2idCollection;

[Collection(nameof(Argon2idTests))]
public sealed class Argon2idTests(ITestOutputHelper output)
{
    [Fact]
    public void BouncyCastleArgon2id_Rfc9106Section5_3Vector_Matches()
    {
        // RFC 9106 §5.3: Argon2id v=0x13, m=32 KiB, t=3, p=4, password 32 × 0x01, salt 16 × 0x02,
        // secret 8 × 0x03, associated data 12 × 0x04, 32-byte tag.
        var parameters = new Argon2Parameters.Builder(Argon2Parameters.Argon2id)
            .WithVersion(Argon2Parameters.Version13)
            .WithMemoryAsKB(32)
            .WithIterations(3)
            .WithParallelism(4)
            .WithSalt(Enumerable.Repeat((byte)0x02, 16).ToArray())
            .WithSecret(Enumerable.Repeat((byte)0x03, 8).ToArray())
            .WithAdditional(Enumerable.Repeat((byte)0x04, 12).ToArray())
            .Build();
        var generator = new Argon2BytesGenerator();
        generator.Init(parameters);
        var tag = new byte[32];

        generator.GenerateBytes(Enumerable.Repeat((byte)0x01, 32).ToArray(), tag);

        Assert.Equal("0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659", Convert.ToHexStringLower(tag));
    }

    [Theory]
    // Computed with the Argon2 reference implementation (Debian's argon2 command, not BouncyCastle):
    //   echo -n password | argon2 somesalt -id -t 2 -k 256 -p 1 -l 32 -r
    //   echo -n password | argon2 somesalt -id -t 2 -k 1024 -p 4 -l 32 -r
    // No secret, no associated data: how share files call Argon2id.
    [InlineData(256, 2, 1, "9dfeb910e80bad0311fee20f9c0e2b12c17987b4cac90c2ef54d5b3021c68bfe")]
    [InlineData(1024, 2, 4, "f35d89e88afd697e0f56dc0c42c5b00247253f5ecb1d858f767e7ed665f37c44")]
    public void DeriveKey_ReferenceImplementationVectors_Match(int memoryKib, int iterations, int parallelism, string expected)
    {
        var key = new byte[32];

        ShareFile.DeriveKey(Encoding.ASCII.GetBytes("password"), new Argon2idParameters(memoryKib, iterations, parallelism), Encoding.ASCII.GetBytes("somesalt"), key);

        Assert.Equal(expected, Convert.ToHexStringLower(key));
    }

    [Fact]
    public void Protect_DefaultParameters_RoundTripsAndIsAcceptedByProduction()
    {
        // The one test that pays for the real parameters (two derivations).
        using var share = Shamir.Split(Ceremony.DomainKey, 2, 2)[0];
        var watch = Stopwatch.StartNew();
        var file = ShareFile.Protect(share, Ceremony.Metadata("alice", 2, 2), Ceremony.PassphraseOf("alice"));
        var protectTime = watch.Elapsed;

        var read = ShareFile.Parse(file.ToBytes(), "alice.share.json");
        watch.Restart();
        using var unlocked = read.Unprotect(Ceremony.PassphraseOf("alice"));
        output.WriteLine($"Argon2id m={Argon2idParameters.Default.MemoryKib} KiB t={Argon2idParameters.Default.Iterations} p={Argon2idParameters.Default.Parallelism}: protect {protectTime.TotalMilliseconds:F0} ms, unprotect {watch.Elapsed.TotalMilliseconds:F0} ms");

        Assert.Equal(Argon2idParameters.Default, read.Kdf);
        Assert.Equal(new Argon2idParameters(65536, 3, 4), read.Kdf);
        Assert.Equal(share.Value.ToArray(), unlocked.Value.ToArray());
    }

    [Fact]
    public void Default_IsAtLeastTheProductionFloorAndWithinBounds()
    {
        Assert.Null(Argon2idParameters.Default.Check(KdfPolicy.Production));
        Assert.Null(Argon2idParameters.ProductionFloor.Check(KdfPolicy.Production));
        Assert.NotNull(new Argon2idParameters(65536, 2, 4).Check(KdfPolicy.Production));
        Assert.Null(new Argon2idParameters(65536, 2, 4).Check(KdfPolicy.AllowWeakParametersForTests));
    }
}
