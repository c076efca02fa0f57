using System.Text.RegularExpressions;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The client SDK sends a unary call refused RESOURCE_EXHAUSTED with a <c>google.rpc.RetryInfo</c> delay
/// again once the delay is over, a once-only one (CreateGrant, CreateApiToken, CreateTenant, …) included
/// (docs/client.md, "What happens to a call", 7). That is safe only while every RetryInfo the server
/// attaches is a refusal made before any of the call ran. Today there are two, both before a unary
/// call's handler: the quota or call rate (<c>AuthorizationInterceptor.RateExceeded</c>, from
/// <c>TakeQuota</c>, which the innermost interceptor runs before it hands the call on) and a client
/// address past its failed authentications (<c>CallerAuthentication.Charge</c>, before a credential is
/// looked up). KmsClientQuotaTests (Kms.Client.Tests) shows it end to end: a CreateApiToken refused for
/// the admin's call rate, sent again, leaves exactly one token.
/// </summary>
public sealed partial class RetryInfoSitesTests
{
    [Fact]
    public void RetryInfo_IsAttachedOnlyByTheRefusalsMadeBeforeAHandlerRuns()
    {
        var src = RepositoryPaths.Of("src");
        var client = Path.Combine(src, "Kms.Client") + Path.DirectorySeparatorChar;
        var sites = Directory.EnumerateFiles(src, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                && !f.StartsWith(client, StringComparison.Ordinal))
            .SelectMany(f => Sites(f))
            .Order(StringComparer.Ordinal)
            .ToList();

        Assert.True(
            sites.SequenceEqual(["AuthorizationInterceptor.RateExceeded", "CallerAuthentication.Charge"], StringComparer.Ordinal),
            "RetryInfo is attached in: " + string.Join(", ", sites) + ". The client SDK sends any unary call refused "
            + "RESOURCE_EXHAUSTED with RetryInfo again, a once-only one included: a new place must refuse before "
            + "any of the call runs (then list it here, in RetrySafety.MayWaitOutRetryInfo and docs/client.md step 7), "
            + "or attach no RetryInfo.");
    }

    // "File.Member" for each code line that names RetryInfo (comments aside), the member being the
    // nearest declaration above it.
    private static IEnumerable<string> Sites(string file)
    {
        var lines = File.ReadAllLines(file);
        for (var i = 0; i < lines.Length; i++)
        {
            var code = lines[i].TrimStart();
            if (code.StartsWith("//", StringComparison.Ordinal) || !RetryInfo().IsMatch(code))
            {
                continue;
            }

            var member = "?";
            for (var j = i; j >= 0; j--)
            {
                if (Declaration().Match(lines[j]) is { Success: true } declared)
                {
                    member = declared.Groups[1].Value;
                    break;
                }
            }

            yield return $"{Path.GetFileNameWithoutExtension(file)}.{member}";
        }
    }

    [GeneratedRegex(@"\bRetryInfo\b")]
    private static partial Regex RetryInfo();

    [GeneratedRegex(@"^\s*(?:(?:private|public|internal|protected|static|async|override|sealed|readonly)\s+)+[\w<>?,\[\]. ]+?\s(\w+)\s*[(<]")]
    private static partial Regex Declaration();
}
