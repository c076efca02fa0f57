using Google.Protobuf.Reflection;
using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Contracts.Tests;

/// <summary>
/// The wire contract of kms.v1, pinned: every field, enum value and method recorded in
/// kms.v1.wire.txt must still exist with the same number and type. Additions are fine
/// (append them to the file); renumbering, retyping or removing breaks deployed clients.
/// </summary>
public sealed class WireContractTests
{
    // Every kms.v1 file the contracts assembly was generated from, found in it rather than named
    // here: a hand-kept list left audit.proto out (AuditEventInfo's fields 17 and 18 were added
    // unpinned, and any of its fields could have been renumbered without a test failing).
    private static readonly FileDescriptor[] Files = typeof(KmsReflection).Assembly.GetTypes()
        .Where(t => t.Namespace == typeof(KmsReflection).Namespace && t.Name.EndsWith("Reflection", StringComparison.Ordinal))
        .Select(t => t.GetProperty("Descriptor")?.GetValue(null))
        .OfType<FileDescriptor>()
        .Where(f => f.Package == "kms.v1")
        .OrderBy(f => f.Name, StringComparer.Ordinal)
        .ToArray();

    /// <summary>Every proto/kms/v1 file is among those described, so none is outside the pin.</summary>
    [Fact]
    public void WireContract_CoversEveryProtoFile()
    {
        var protos = Directory.GetFiles(RepositoryPaths.Of("proto", "kms", "v1"), "*.proto")
            .Select(path => "kms/v1/" + Path.GetFileName(path))
            .Order(StringComparer.Ordinal);
        Assert.Equal(protos, Files.Select(f => f.Name));
        Assert.Contains("kms/v1/audit.proto", Files.Select(f => f.Name));
    }

    [Fact]
    public void WireContract_EveryPinnedElementUnchanged()
    {
        var current = Describe().ToHashSet(StringComparer.Ordinal);
        var pinned = File.ReadAllLines(Path.Combine(AppContext.BaseDirectory, "kms.v1.wire.txt"))
            .Where(line => line.Length > 0 && !line.StartsWith('#'))
            .ToList();

        Assert.NotEmpty(pinned);
        var broken = pinned.Where(line => !current.Contains(line)).ToList();
        Assert.True(broken.Count == 0, "wire-incompatible change to kms.v1:\n" + string.Join('\n', broken));
    }

    /// <summary>New elements must be pinned too: KMS_PIN_WIRE_CONTRACT=1 appends them to the file.</summary>
    [Fact]
    public void WireContract_EveryCurrentElementPinned()
    {
        var source = RepositoryPaths.Of("tests", "Kms.Contracts.Tests", "kms.v1.wire.txt");
        var pinned = File.ReadAllLines(source).ToHashSet(StringComparer.Ordinal);
        var unpinned = Describe().Where(line => !pinned.Contains(line)).ToList();
        if (unpinned.Count > 0 && Environment.GetEnvironmentVariable("KMS_PIN_WIRE_CONTRACT") == "1")
        {
            File.AppendAllLines(source, unpinned);
            return;
        }

        Assert.True(unpinned.Count == 0, "not pinned yet (run the tests once with KMS_PIN_WIRE_CONTRACT=1):\n" + string.Join('\n', unpinned));
    }

    [Fact]
    public void Enums_ZeroIsUnspecified()
    {
        foreach (var enumType in Files.SelectMany(f => f.EnumTypes))
        {
            Assert.EndsWith("_UNSPECIFIED", enumType.FindValueByNumber(0).Name, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Service_EveryRpcHasItsOwnRequestAndResponse()
    {
        foreach (var method in Files.SelectMany(f => f.Services).SelectMany(s => s.Methods))
        {
            Assert.Equal(method.Name + "Request", method.InputType.Name);
            Assert.Equal(method.Name + "Response", method.OutputType.Name);
        }
    }

    private static IEnumerable<string> Describe()
    {
        foreach (var file in Files)
        {
            foreach (var message in file.MessageTypes)
            {
                foreach (var field in message.Fields.InFieldNumberOrder())
                {
                    var type = field.FieldType switch
                    {
                        FieldType.Message => field.IsMap ? "map" : field.MessageType.FullName,
                        FieldType.Enum => field.EnumType.FullName,
                        _ => field.FieldType.ToString().ToLowerInvariant(),
                    };
                    yield return $"field {message.FullName}.{field.Name} = {field.FieldNumber} {(field.IsRepeated && !field.IsMap ? "repeated " : "")}{type}";
                }
            }

            foreach (var enumType in file.EnumTypes)
            {
                foreach (var value in enumType.Values)
                {
                    yield return $"enum {enumType.FullName}.{value.Name} = {value.Number}";
                }
            }

            foreach (var service in file.Services)
            {
                foreach (var method in service.Methods)
                {
                    yield return $"rpc {service.FullName}.{method.Name}({method.InputType.FullName}) returns ({method.OutputType.FullName})";
                }
            }
        }
    }
}
