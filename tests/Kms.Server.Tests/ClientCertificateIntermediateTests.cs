using Kms.Core.Services;
using Kms.Server.Security;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// Client certificates of an intermediate CA (root and intermediate both in the bundle): every
/// link of the chain is checked against the CRL of the CA that issued it, so a root's CRL that
/// revokes the intermediate refuses the certificates it issued, and a CA of the chain without a
/// CRL in the file refuses them too.
/// </summary>
public sealed class ClientCertificateIntermediateTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-ica-").FullName;
    private readonly TestPki _root = new("Kms Test Root CA");
    private readonly TestPki _intermediate;

    public ClientCertificateIntermediateTests()
    {
        _intermediate = new TestPki("Kms Test Issuing CA", _root);
        File.WriteAllText(BundlePath, _root.Certificate.ExportCertificatePem() + "\n" + _intermediate.Certificate.ExportCertificatePem() + "\n");
    }

    private string BundlePath => Path.Combine(_dir, "client-ca.crt");

    private string CrlPath => Path.Combine(_dir, "clients.crl");

    public void Dispose()
    {
        _intermediate.Dispose();
        _root.Dispose();
        Directory.Delete(_dir, true);
    }

    [Fact]
    public void IntermediateRevokedByTheRootsCrl_ItsCertificatesRefused()
    {
        using var alice = _intermediate.Issue("alice");
        WriteCrls(_root, _intermediate);
        Assert.NotNull(Validator().Accept(alice));

        _root.Revoke(_intermediate.Certificate);
        WriteCrls(_root, _intermediate);
        Assert.Null(Validator().Accept(alice));
    }

    [Fact]
    public void CrlOfTheIntermediateOnly_TheRootsRevocationsCannotBeSeen_Refused()
    {
        using var alice = _intermediate.Issue("alice");
        WriteCrls(_intermediate);
        Assert.Null(Validator().Accept(alice));
    }

    private ClientCertificateValidator Validator() =>
        new(BundlePath, CrlPath, new TrustedTime(new InMemoryStore(), TimeProvider.System, new LifecycleOptions()), TimeProvider.System,
            NullLogger<ClientCertificateValidator>.Instance);

    private void WriteCrls(params TestPki[] cas)
    {
        var text = "";
        foreach (var ca in cas)
        {
            text += File.ReadAllText(ca.WriteCrl(Path.Combine(_dir, "one.crl")));
        }

        File.WriteAllText(CrlPath, text);
    }
}
