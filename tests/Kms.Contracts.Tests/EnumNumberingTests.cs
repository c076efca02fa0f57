using Google.Protobuf.Reflection;
using Kms.Contracts.V1;
using Kms.Core.Keys;
using CoreImportMethod = Kms.Core.Ports.ImportMethod;

namespace Kms.Contracts.Tests;

/// <summary>
/// Core's purpose, algorithm and import-method enums carry the proto numbers: the server's
/// mapping and the CLI cast between them. Each Core value must be the proto value of the same
/// number and name, and every proto value but UNSPECIFIED must have its Core value.
/// </summary>
public sealed class EnumNumberingTests
{
    [Fact]
    public void KeyAlgorithm_CoreAndProto_SameNumbersAndNames() =>
        AssertSame("KeyAlgorithm", "KEY_ALGORITHM_", KeyAlgorithms.All.ToDictionary(s => (int)s.Algorithm, s => s.Name));

    [Fact]
    public void KeyPurpose_CoreAndProto_SameNumbersAndNames() =>
        AssertSame("KeyPurpose", "KEY_PURPOSE_", Enum.GetValues<Kms.Core.Keys.KeyPurpose>().ToDictionary(p => (int)p, KeyAlgorithms.PurposeName));

    [Fact]
    public void ImportMethod_CoreAndProto_SameNumbersAndNames() =>
        AssertSame("ImportMethod", "IMPORT_METHOD_", Enum.GetValues<CoreImportMethod>().ToDictionary(m => (int)m, Kms.Core.Keys.ImportJob.MethodName));

    private static void AssertSame(string protoEnum, string prefix, Dictionary<int, string> core)
    {
        var proto = ResourcesReflection.Descriptor.EnumTypes.Single(e => e.Name == protoEnum).Values
            .Where(v => v.Number != 0)
            .ToDictionary(v => v.Number, v => v.Name);

        Assert.Equal(proto.OrderBy(p => p.Key), core.ToDictionary(c => c.Key, c => prefix + c.Value).OrderBy(c => c.Key));
    }
}
