using System.Text;
using System.Text.RegularExpressions;
using Kms.Testing;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Kms.Client.Tests;

/// <summary>
/// The C# snippets of the README and docs/client.md compile against Kms.Client as it is: every
/// type, member, parameter name and signature they use exists. A rename or a changed signature
/// fails here, naming the snippet and the compiler's error, until the docs follow.
/// </summary>
public sealed partial class SnippetDocTests
{
    /// <summary>What the snippets use without declaring it: the reader's own variables.</summary>
    private const string Prelude = """
        using System;
        using System.Collections.Generic;
        using System.IO;
        using System.Security.Cryptography.X509Certificates;
        using System.Threading;
        using System.Threading.Tasks;
        using Kms.Client;
        using Kms.Client.Caching;
        using Kms.Client.Envelope;
        using Kms.Client.Rewrap;
        using Microsoft.Extensions.Configuration;
        using Microsoft.Extensions.DependencyInjection;

        internal sealed partial class Snippets
        {
            private readonly IServiceCollection services = null!;
            private readonly IConfiguration configuration = null!;
            private readonly Uri siteA = null!, siteB = null!;
            private readonly string tokenFile = "";
            private readonly X509Certificate2 certificate = null!;
            private readonly byte[] card = [], rowId = [];
            private readonly IAsyncEnumerable<StoredBlob> blobsInIdOrder = null!;
            private readonly Func<StoredBlob, byte[], CancellationToken, Task> saveNewCiphertext = null!;
        }

        """;

    [Fact]
    public void ReadmeAndClientMd_CSharpSnippets_Compile()
    {
        var snippets = Snippets("README.md").Concat(Snippets("docs/client.md"))
            // Kms.Client.DataProtection's snippet needs ASP.NET Core's host; its tests build it for real.
            .Where(s => !s.Code.Contains("AddDataProtection()", StringComparison.Ordinal))
            .ToList();
        Assert.True(snippets.Count >= 4, $"only {snippets.Count} C# snippets found");

        var source = new StringBuilder(Prelude);
        for (var i = 0; i < snippets.Count; i++)
        {
            source.Append(System.Globalization.CultureInfo.InvariantCulture, $"internal sealed partial class Snippets\n{{\n    private async Task Snippet{i}()\n    {{\n#line {snippets[i].Line} \"{snippets[i].File}\"\n{snippets[i].Code}\n#line default\n    }}\n}}\n");
        }

        var compilation = CSharpCompilation.Create(
            "Snippets",
            [CSharpSyntaxTree.ParseText(source.ToString(), new CSharpParseOptions(LanguageVersion.Latest))],
            References(),
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));
        var errors = compilation.GetDiagnostics()
            .Where(d => d.Severity == DiagnosticSeverity.Error)
            .Select(d => $"{d.Location.GetMappedLineSpan().Path}:{d.Location.GetMappedLineSpan().StartLinePosition.Line + 1}: {d.Id} {d.GetMessage(System.Globalization.CultureInfo.InvariantCulture)}")
            .ToList();
        Assert.True(errors.Count == 0, "C# snippets of the docs do not compile against Kms.Client:\n" + string.Join("\n", errors));
    }

    /// <summary>Each <c>csharp</c> block of a file, with the line its code starts on.</summary>
    private static IEnumerable<(string File, int Line, string Code)> Snippets(string relative)
    {
        var text = File.ReadAllText(RepositoryPaths.Of(relative.Split('/')));
        foreach (Match block in CSharpBlock().Matches(text))
        {
            var line = text[..block.Index].Count(c => c == '\n') + 2;
            yield return (relative, line, block.Groups[1].Value);
        }
    }

    /// <summary>The framework and every assembly beside the tests (Kms.Client and its dependencies).</summary>
    private static IEnumerable<MetadataReference> References()
    {
        var platform = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator);
        var beside = Directory.EnumerateFiles(AppContext.BaseDirectory, "*.dll");
        return platform.Concat(beside)
            .GroupBy(Path.GetFileName, StringComparer.Ordinal)
            .Select(g => g.First())
            .Where(IsManaged)
            .Select(p => MetadataReference.CreateFromFile(p));
    }

    private static bool IsManaged(string path)
    {
        try
        {
            System.Reflection.AssemblyName.GetAssemblyName(path);
            return true;
        }
        catch (BadImageFormatException)
        {
            return false;
        }
    }

    [GeneratedRegex(@"```csharp\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();
}
