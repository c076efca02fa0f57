using System.Security.Cryptography;
using Kms.Cli.Ceremony;

namespace Kms.Cli.Tests;

/// <summary>What opening a deployment (every ceremony step does) writes into the data directory (SoftHSM).</summary>
[Collection(TokenWipeGroup.Name)]
public sealed class DeploymentRecordTests
{
    [Fact]
    public async Task OpenAsync_PublishedAuditKeyExists_ReplacedWholeNeverRewrittenInPlace()
    {
        var production = DomainKeyRotationJobTests.TokenWithDomainKey(RandomNumberGenerator.GetBytes(32));
        var dataDir = Directory.CreateTempSubdirectory("kms-record-").FullName;
        try
        {
            await using (await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), production.UserPin, default))
            {
            }

            var pem = Path.Combine(dataDir, "audit", "signing-key.pem");
            var published = await File.ReadAllBytesAsync(pem);

            // Every later step publishes the key again. A reader holding the previous file (a
            // copy off the host, say) sees it unchanged: the file was renamed over, not truncated
            // and rewritten, which a crash in the middle would leave torn or empty.
            await File.WriteAllTextAsync(pem, "the previous file\n");
            await using var held = new FileStream(pem, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            await using (await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), production.UserPin, default))
            {
            }

            Assert.Equal("the previous file\n", await new StreamReader(held).ReadToEndAsync());
            Assert.Equal(published, await File.ReadAllBytesAsync(pem));
            Assert.Equal(["signing-key.pem"], Directory.GetFileSystemEntries(Path.Combine(dataDir, "audit")).Select(Path.GetFileName));
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }
}
