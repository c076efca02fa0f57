using System.Security.Cryptography;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Quorum;

namespace Kms.Client.Tests;

public sealed class QuorumApproverTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-officer-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void Generate_EncryptedOwnerOnlyKeyAndPublicKey_LoadOnlyWithThePassphrase_NeverOverwritten()
    {
        var path = Path.Combine(_directory, "alice.key");
        var files = OfficerKeys.Generate(path, "correct horse");

        Assert.Contains("BEGIN ENCRYPTED PRIVATE KEY", File.ReadAllText(path), StringComparison.Ordinal);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        var officer = OfficerKeys.ReadOfficer("alice", files.PublicKeyPath);
        Assert.Equal(files.Fingerprint, officer.Fingerprint);

        using (var approver = QuorumApprover.Load(path, "correct horse"))
        {
            Assert.Equal(files.Fingerprint, approver.Fingerprint);
            var signature = approver.Sign("kms quorum approval v1\n");
            Assert.True(officer.Verifies("kms quorum approval v1\n"u8, signature));
        }

        Assert.ThrowsAny<CryptographicException>(() => QuorumApprover.Load(path, "wrong"));
        Assert.Throws<IOException>(() => OfficerKeys.Generate(path, "again"));
    }

    [Fact]
    public void Generate_PublicKeyCannotBeWritten_NoPrivateKeyLeft()
    {
        // Both files or neither: a private key without its public half is one nobody can register.
        var path = Path.Combine(_directory, "alice.key");
        Directory.CreateDirectory(path + ".pub");

        var e = Record.Exception(() => OfficerKeys.Generate(path, "correct horse"));

        Assert.Equal([path + ".pub"], Directory.GetFileSystemEntries(_directory));
        Assert.Equal($"{path}.pub exists already; officer keys are never overwritten", Assert.IsType<IOException>(e).Message);
    }

    [Fact]
    public void Render_FromTheStructuredFields_MatchesKmsCore_AndRefusesWhatCannotBeRendered()
    {
        var info = new QuorumRequestInfo
        {
            Name = "tenants/dev/quorumRequests/0123456789abcdef0123456789abcdef",
            Id = "0123456789abcdef0123456789abcdef",
            Operation = Kms.Contracts.V1.QuorumOperation.DestroyKeyVersionNow,
            Tenant = "dev",
            DomainKcv = "5a0c7e",
            OfficerSetHash = new string('a', 64),
            RequestedBy = "token:developer",
            CreateTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero)),
            ExpireTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(new DateTimeOffset(2026, 11, 30, 12, 0, 0, TimeSpan.Zero)),
            Parameters = { new QuorumParameter { Key = "name", Value = "tenants/dev/keys/orders/versions/2" } },
        };
        var rendering = QuorumApprover.Render(info);
        Assert.Equal(QuorumRendering.Render(QuorumApprover.ToQuorumRequest(info)), rendering);
        Assert.EndsWith("param name: tenants/dev/keys/orders/versions/2\n", rendering, StringComparison.Ordinal);

        var unsorted = info.Clone();
        unsorted.Parameters.Insert(0, new QuorumParameter { Key = "zzz", Value = "1" });
        Assert.Throws<FormatException>(() => QuorumApprover.Render(unsorted));
        var badTenant = info.Clone();
        badTenant.Tenant = "Dev\n";
        Assert.Throws<FormatException>(() => QuorumApprover.Render(badTenant));
    }
}
