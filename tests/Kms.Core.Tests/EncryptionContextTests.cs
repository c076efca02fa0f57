using Kms.Core.Crypto;
using Kms.Core.Errors;

namespace Kms.Core.Tests;

public sealed class EncryptionContextTests
{
    [Fact]
    public void Create_SameEntriesInAnyOrder_EncodesIdentically()
    {
        var a = EncryptionContext.Create(new Dictionary<string, string> { ["x"] = "1", ["y"] = "2" });
        var b = EncryptionContext.Create([new("y", "2"), new("x", "1")]);
        Assert.Equal(a.Encoded.ToArray(), b.Encoded.ToArray());
    }

    [Fact]
    public void Create_SplitBetweenKeyAndValueMoved_EncodesDifferently()
    {
        // Length prefixes keep {"a":"bc"} and {"ab":"c"} apart, which plain concatenation would not.
        var a = EncryptionContext.Create(new Dictionary<string, string> { ["a"] = "bc" });
        var b = EncryptionContext.Create(new Dictionary<string, string> { ["ab"] = "c" });
        Assert.NotEqual(a.Encoded.ToArray(), b.Encoded.ToArray());
    }

    [Fact]
    public void Create_Null_IsEmptyContext()
    {
        Assert.Equal(new byte[] { 0, 0, 0, 0 }, EncryptionContext.Create(null).Encoded.ToArray());
    }

    [Fact]
    public void Create_EmptyKey_InvalidArgumentNamingField()
    {
        var e = Assert.Throws<KmsException>(() => EncryptionContext.Create(new Dictionary<string, string> { [""] = "v" }));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Equal("encryption_context", e.Field);
    }

    [Fact]
    public void Create_KeyAtTheLimit_AcceptedAndOneByteMore_InvalidArgumentNamingField()
    {
        var longest = new string('k', Limits.MaxContextKeyBytes);
        Assert.Equal(1, EncryptionContext.Create(new Dictionary<string, string> { [longest] = "v" }).Count);

        var e = Assert.Throws<KmsException>(() => EncryptionContext.Create(new Dictionary<string, string> { [longest + "k"] = "v" }));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Equal("encryption_context", e.Field);
    }

    [Fact]
    public void Create_KeyLimitCountsUtf8BytesNotCharacters()
    {
        // 128 × "é" is 128 characters but 256 bytes of UTF-8: exactly the limit.
        var longest = new string('\u00e9', Limits.MaxContextKeyBytes / 2);
        Assert.Equal(Limits.MaxContextKeyBytes, System.Text.Encoding.UTF8.GetByteCount(longest));
        Assert.Equal(longest, Assert.Single(EncryptionContext.Create(new Dictionary<string, string> { [longest] = "v" }).Entries).Key);

        // One byte more is 129 characters, far under 256 characters, and refused.
        var e = Assert.Throws<KmsException>(() => EncryptionContext.Create(new Dictionary<string, string> { [longest + "k"] = "v" }));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Equal("encryption_context", e.Field);
    }

    [Fact]
    public void Create_ValueAtTheLimit_Accepted()
    {
        var longest = new string('v', Limits.MaxContextValueBytes);
        var context = EncryptionContext.Create(new Dictionary<string, string> { ["k"] = longest });
        Assert.Equal(longest, context.Entries["k"]);
    }

    [Fact]
    public void Create_SameKeyTwice_InvalidArgumentNamingField()
    {
        // A map cannot hold a key twice, but a list of pairs can: two entries under one key
        // would be an encoding the reader refuses (and which value is meant?), so Create refuses it.
        var e = Assert.Throws<KmsException>(() => EncryptionContext.Create([new("k", "1"), new("k", "2")]));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Equal("encryption_context", e.Field);
    }

    [Fact]
    public void Create_TooManyEntries_InvalidArgument()
    {
        var entries = Enumerable.Range(0, Limits.MaxContextEntries + 1).ToDictionary(i => $"k{i}", i => "v");
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => EncryptionContext.Create(entries)).Code);
    }

    [Fact]
    public void Create_MaxEntries_Accepted()
    {
        var entries = Enumerable.Range(0, Limits.MaxContextEntries).ToDictionary(i => $"k{i}", i => "v");
        Assert.Equal(Limits.MaxContextEntries, EncryptionContext.Create(entries).Count);
    }

    [Fact]
    public void Create_OversizedValue_InvalidArgumentWithoutEchoingTheValue()
    {
        var value = new string('s', Limits.MaxContextValueBytes + 1);
        var e = Assert.Throws<KmsException>(() => EncryptionContext.Create(new Dictionary<string, string> { ["k"] = value }));
        Assert.DoesNotContain(value, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Create_LoneSurrogate_InvalidArgument()
    {
        var e = Assert.Throws<KmsException>(() => EncryptionContext.Create(new Dictionary<string, string> { ["k"] = "\ud800" }));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
    }

    [Fact]
    public void ToString_NeverShowsValues()
    {
        var context = EncryptionContext.Create(new Dictionary<string, string> { ["patient"] = "jane-doe-1234" });
        Assert.DoesNotContain("jane", context.ToString(), StringComparison.Ordinal);
    }
}
