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
    private static readonly FileDescriptor[] Files = [KmsReflection.Descriptor, ResourcesReflection.Descriptor, AccessReflection.Descriptor, QuorumReflection.Descriptor];

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
