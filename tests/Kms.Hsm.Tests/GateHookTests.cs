using System.Reflection;
using System.Text.RegularExpressions;
using Kms.Testing;

namespace Kms.Hsm.Tests;

/// <summary>
/// The test hooks that hold the module gate beyond one native call run only in collections that
/// run alone. An injected hang holds a read of the gate until it is cleared; an exclusive hold
/// waits for every read in flight, and while it waits every new read queues behind it. From two
/// parallel tests that deadlocks the process. CI's Kms.Hsm.Tests hung so: SessionPoolAbuseTests
/// hung one call, PinCanaryTests' CloseAllSessionsForFaultInjection waited for it, and the second
/// call SessionPoolAbuseTests waited for queued behind that — every other call of the process with
/// it, until the run was killed.
/// </summary>
public sealed partial class GateHookTests
{
    // What holds the gate (an injected hang, or a fault that sends the adapter to re-initialise
    // the module) or takes it exclusively.
    private static readonly string[] Hooks =
    [
        "Faults.Hang",
        "Faults.Fail",
        "CloseAllSessionsForFaultInjection",
        "FinalizeForFaultInjection",
        "Module.Exclusive",
        "Module.Reinitialize",
    ];

    [Fact]
    public void EveryTestClassThatHoldsTheModuleGate_IsInACollectionThatRunsAlone()
    {
        var assembly = typeof(GateHookTests).Assembly;
        var alone = assembly.GetTypes()
            .Where(t => t.GetCustomAttribute<CollectionDefinitionAttribute>() is { DisableParallelization: true })
            .Select(t => CollectionName(t, typeof(CollectionDefinitionAttribute)))
            .ToHashSet(StringComparer.Ordinal);
        var checkedClasses = new List<string>();
        var offenders = new List<string>();
        foreach (var file in Directory.EnumerateFiles(RepositoryPaths.Of("tests", "Kms.Hsm.Tests"), "*.cs"))
        {
            if (Path.GetFileName(file) == nameof(GateHookTests) + ".cs")
            {
                continue;
            }

            // Each class's text: from its declaration to the next one's.
            var text = File.ReadAllText(file);
            var declarations = ClassDeclaration().Matches(text);
            for (var i = 0; i < declarations.Count; i++)
            {
                var end = i + 1 < declarations.Count ? declarations[i + 1].Index : text.Length;
                var body = text[declarations[i].Index..end];
                var hook = Hooks.FirstOrDefault(h => body.Contains(h, StringComparison.Ordinal));
                var type = assembly.GetType("Kms.Hsm.Tests." + declarations[i].Groups[1].Value);
                if (hook is null || type is null || !HasTests(type))
                {
                    continue;
                }

                checkedClasses.Add(type.Name);
                if (CollectionName(type, typeof(CollectionAttribute)) is not { } collection || !alone.Contains(collection))
                {
                    offenders.Add($"{type.Name} ({hook}) runs in parallel with other tests");
                }
            }
        }

        Assert.Contains(nameof(RecoveryTests), checkedClasses); // the scan found the hooks
        Assert.True(offenders.Count == 0, string.Join("; ", offenders));
    }

    private static bool HasTests(Type type) =>
        type.GetMethods().Any(m => m.GetCustomAttribute<FactAttribute>() is not null);

    // The name a [Collection] or [CollectionDefinition] gives (its constructor's argument).
    private static string? CollectionName(Type type, Type attribute) =>
        type.GetCustomAttributesData().FirstOrDefault(a => a.AttributeType == attribute)?.ConstructorArguments[0].Value as string;

    [GeneratedRegex(@"^(?:public|internal) (?:sealed |static )*(?:partial )?class (\w+)", RegexOptions.Multiline)]
    private static partial Regex ClassDeclaration();
}
