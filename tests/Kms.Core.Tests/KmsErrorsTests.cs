using System.Text;
using Kms.Core.Errors;

namespace Kms.Core.Tests;

/// <summary>Names a caller sent, as error messages repeat them.</summary>
public sealed class KmsErrorsTests
{
    [Theory]
    [InlineData("tenants/dev/keys/orders", "tenants/dev/keys/orders")]
    [InlineData("tenants/dev/keys/a\r\nforged line", "tenants/dev/keys/a??forged line")]
    [InlineData("tenants/dev/keys/a\0b", "tenants/dev/keys/a?b")]
    [InlineData("tenants/dev/keys/\u202Esredro", "tenants/dev/keys/\\u202Esredro")] // right-to-left override
    [InlineData("tenants/dev/keys/a\u202Db\u202A\u202B\u202Cc", "tenants/dev/keys/a\\u202Db\\u202A\\u202B\\u202Cc")]
    [InlineData("tenants/dev/keys/\u2066a\u2067b\u2068c\u2069", "tenants/dev/keys/\\u2066a\\u2067b\\u2068c\\u2069")] // isolates
    [InlineData("tenants/dev/keys/a\u200Eb\u200Fc\u061Cd", "tenants/dev/keys/a\\u200Eb\\u200Fc\\u061Cd")] // marks
    [InlineData("tenants/dev/keys/or\u200Bders\u2060x\uFEFF", "tenants/dev/keys/or\\u200Bders\\u2060x\\uFEFF")] // zero-width
    [InlineData("tenants/dev/keys/a\u2028not found\u2029b", "tenants/dev/keys/a\\u2028not found\\u2029b")] // separators
    [InlineData("tenants/dev/keys/می\u200Cخواهم\u200D", "tenants/dev/keys/می\u200Cخواهم\u200D")] // ZWNJ, ZWJ kept
    [InlineData("tenants/dev/keys/caf\u00e9-\U0001F600", "tenants/dev/keys/caf\u00e9-\U0001F600")]
    [InlineData("cn:ops\U000E0041\U000E0042", "cn:ops\\U000E0041\\U000E0042")] // tag characters: invisible text beyond the BMP
    [InlineData("", "")]
    public void Printable_ControlAndTextHidingCharacters_Escaped(string name, string shown)
    {
        Assert.Equal(shown, KmsErrors.Printable(name));
        Assert.Equal($"{shown} not found", KmsErrors.NotFound(name).Message);
    }

    [Fact]
    public void Printable_LongName_CutAtTheLimitThenEscaped_LengthSaid()
    {
        var name = new string('\u202E', 300);
        var shown = KmsErrors.Printable(name);
        Assert.Equal(string.Concat(Enumerable.Repeat("\\u202E", KmsErrors.MaxEchoedName)) + "… (300 characters)", shown);
        Assert.Equal("", KmsErrors.Printable(null));
    }

    [Theory]
    [InlineData("")] // a pair ends exactly at the limit
    [InlineData("a")] // a pair straddles the limit
    [InlineData("ab")]
    public void Printable_LongNameOfEmoji_CutBeforeAPairTheLimitWouldSplit(string prefix)
    {
        var name = prefix + string.Concat(Enumerable.Repeat("\U0001F600", 200));

        var shown = KmsErrors.Printable(name);

        var kept = prefix + string.Concat(Enumerable.Repeat("\U0001F600", (KmsErrors.MaxEchoedName - prefix.Length) / 2));
        Assert.Equal($"{kept}… ({name.Length} characters)", shown);
        Assert.True(shown.EnumerateRunes().All(r => r != Rune.ReplacementChar), "a lone surrogate");
    }
}
