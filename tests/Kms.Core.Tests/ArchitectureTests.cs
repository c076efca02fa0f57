using System.Xml.Linq;
using Kms.Testing;

namespace Kms.Core.Tests;

/// <summary>Dependencies point down (DESIGN.md): guarded here rather than by review.</summary>
public sealed class ArchitectureTests
{
    private static readonly string[] ForbiddenInCore =
    [
        "Grpc", "Google.Protobuf", "Pkcs11Interop", "Microsoft.Data.Sqlite", "SQLitePCL", "Npgsql",
        "Microsoft.AspNetCore", "System.Data.SqlClient", "Microsoft.Data.SqlClient", "BouncyCastle",
    ];

    [Fact]
    public void KmsCore_ReferencesNoTransportPkcs11OrSqlAssembly()
    {
        var references = typeof(Services.KeyService).Assembly.GetReferencedAssemblies().Select(a => a.Name!).ToList();
        var offending = references.Where(r => ForbiddenInCore.Any(f => r.StartsWith(f, StringComparison.OrdinalIgnoreCase))).ToList();
        Assert.Empty(offending);
        Assert.All(references, r => Assert.True(r.StartsWith("System", StringComparison.Ordinal) || r == "netstandard", $"Kms.Core references {r}"));
    }

    [Fact]
    public void KmsCore_HasNoPackageOrProjectReferences()
    {
        var project = XDocument.Load(RepositoryPaths.Of("src", "Kms.Core", "Kms.Core.csproj"));
        Assert.Empty(project.Descendants("PackageReference"));
        Assert.Empty(project.Descendants("ProjectReference"));
        Assert.Empty(project.Descendants("FrameworkReference"));
    }

    [Fact]
    public void OnlyKmsHsm_ReferencesPkcs11Interop()
    {
        var referencing = Directory.GetFiles(RepositoryPaths.Of("src"), "*.csproj", SearchOption.AllDirectories)
            .Where(path => XDocument.Load(path).Descendants("PackageReference").Any(p => (string?)p.Attribute("Include") == "Pkcs11Interop"))
            .Select(Path.GetFileNameWithoutExtension)
            .ToList();
        Assert.Equal(["Kms.Hsm"], referencing);
    }

    [Fact]
    public void NoSourceOutsideKmsHsm_UsesPkcs11InteropNamespaces()
    {
        var offending = Directory.GetFiles(RepositoryPaths.Of("src"), "*.cs", SearchOption.AllDirectories)
            .Where(path => !path.Contains($"{Path.DirectorySeparatorChar}Kms.Hsm{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .Where(path => !path.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .Where(path => File.ReadAllText(path).Contains("Net.Pkcs11Interop", StringComparison.Ordinal))
            .ToList();
        Assert.Empty(offending);
    }

    [Fact]
    public void DirectoriesForDurableState_CreatedOnlyThroughDurableFile_SyncedIntoTheirParents()
    {
        // A directory's name is its parent's: created without syncing the parent, it and every
        // file synced into it can vanish at a power loss (the audit directory did, with the
        // checkpoints and the published key). DurableFile.CreateDirectory syncs the parent of each
        // one it creates; DurableDirectory's staging directory is renamed whole and its parent
        // synced at the commit.
        string[] allowed = [Path.Combine("Kms.Core", "Files", "DurableFile.cs"), Path.Combine("Kms.Core", "Files", "DurableDirectory.cs")];
        var src = RepositoryPaths.Of("src");
        var offending = Directory.GetFiles(src, "*.cs", SearchOption.AllDirectories)
            .Select(path => Path.GetRelativePath(src, path))
            .Where(path => !path.Split(Path.DirectorySeparatorChar).Any(part => part is "obj" or "bin"))
            .Where(path => !allowed.Any(a => path.EndsWith(a, StringComparison.Ordinal)))
            .Where(path => File.ReadAllText(Path.Combine(src, path)).Contains("Directory.CreateDirectory(", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .ToList();
        Assert.Empty(offending);
    }
}
