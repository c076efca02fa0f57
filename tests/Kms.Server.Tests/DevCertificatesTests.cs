using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Kms.Server.Tls;
using Kms.Testing;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// Dev mode's TLS files after a crash: each is replaced whole (never rewritten in place), and a
/// start after a crash between two of them (a key written, its certificate not yet) or on a file
/// an older server left torn issues a pair that belongs together instead of serving a broken one.
/// </summary>
public sealed class DevCertificatesTests
{
    private readonly string _directory = Scratch.NewPath("kms-devtls-");
    private readonly FakeTimeProvider _time = new(DateTimeOffset.UtcNow);

    private string CaCertificate => Path.Combine(_directory, "ca.crt");

    private string CaKey => Path.Combine(_directory, "ca.key");

    private string Certificate => Path.Combine(_directory, "server.crt");

    private string Key => Path.Combine(_directory, "server.key");

    [Fact]
    public void Ensure_ServerCertificateNearExpiry_ReplacedWholeNeverRewrittenInPlace()
    {
        DevCertificates.Ensure(_directory, _time);
        var previous = File.ReadAllText(Certificate);
        using var held = new FileStream(Certificate, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        _time.Advance(TimeSpan.FromDays(395));

        DevCertificates.Ensure(_directory, _time);

        // A reader of the previous file (a crash in the middle of rewriting it in place would
        // have left it torn or empty) still sees it whole; the name has the new one.
        Assert.Equal(previous, new StreamReader(held).ReadToEnd());
        Assert.NotEqual(previous, File.ReadAllText(Certificate));
        AssertServes();
        Assert.DoesNotContain(Directory.GetFiles(_directory), f => Path.GetFileName(f).StartsWith('.'));
    }

    [Fact]
    public void Ensure_CrashBetweenTheNewKeyAndItsCertificate_PairIssuedAgain()
    {
        DevCertificates.Ensure(_directory, _time);
        // What a crash leaves after the re-issue wrote server.key and before it wrote server.crt.
        using (var other = ECDsa.Create(ECCurve.NamedCurves.nistP256))
        {
            File.WriteAllText(Key, other.ExportPkcs8PrivateKeyPem());
        }

        DevCertificates.Ensure(_directory, _time);

        AssertServes();
    }

    [Theory]
    [InlineData("server.crt", 0)]
    [InlineData("server.crt", 200)]
    [InlineData("ca.crt", 0)]
    [InlineData("ca.crt", 200)]
    public void Ensure_ACertificateAnOlderServerLeftTorn_IssuedAgain(string file, int keep)
    {
        DevCertificates.Ensure(_directory, _time);
        var path = Path.Combine(_directory, file);
        File.WriteAllText(path, File.ReadAllText(path)[..keep]);

        DevCertificates.Ensure(_directory, _time);

        AssertServes();
    }

    [Fact]
    public void Ensure_CrashBetweenTheNewCaKeyAndItsCertificate_CaAndServerPairIssuedAgain()
    {
        DevCertificates.Ensure(_directory, _time);
        using (var other = ECDsa.Create(ECCurve.NamedCurves.nistP256))
        {
            File.WriteAllText(CaKey, other.ExportPkcs8PrivateKeyPem());
        }

        DevCertificates.Ensure(_directory, _time);

        AssertServes();
        using var ca = X509Certificate2.CreateFromPemFile(CaCertificate, CaKey);
        Assert.True(ca.HasPrivateKey);
    }

    /// <summary>The server's pair loads together, and its certificate chains to ca.crt (what a client is given).</summary>
    private void AssertServes()
    {
        using var server = X509Certificate2.CreateFromPemFile(Certificate, Key);
        Assert.True(server.HasPrivateKey);
        using var ca = X509Certificate2.CreateFromPem(File.ReadAllText(CaCertificate));
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationTime = _time.GetUtcNow().UtcDateTime;
        Assert.True(chain.Build(server), string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation)));
    }
}
